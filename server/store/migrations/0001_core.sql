-- Core schema: clients, users and signing keys.

CREATE TABLE clients (
    client_id      text PRIMARY KEY CHECK (client_id ~ '^[A-Za-z0-9._~:@-]{1,128}$'),
    -- argon2id PHC string; NULL for a public client, which authenticates with its id alone.
    secret_hash    text,
    is_public      boolean NOT NULL DEFAULT false,
    grant_types    text[] NOT NULL,
    scopes         text[] NOT NULL DEFAULT '{}',
    audiences      text[] NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    secret_changed_at timestamptz,
    CHECK (is_public = (secret_hash IS NULL)),
    CHECK (grant_types <@ ARRAY['client_credentials', 'password', 'refresh_token']),
    -- RFC 6749 section 4.4: client_credentials is only for confidential clients.
    CHECK (NOT (is_public AND 'client_credentials' = ANY (grant_types))),
    CHECK (cardinality(audiences) >= 1)
);

CREATE TABLE users (
    user_id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username       text NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 256),
    password_hash  text NOT NULL,
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    password_changed_at timestamptz NOT NULL DEFAULT now()
);

-- Signing keys. States: next (published, not signing) -> active (signing) -> retired (published
-- until its tokens have expired) -> deleted; revoked leaves the key set at once.
CREATE TABLE signing_keys (
    kid            text PRIMARY KEY,       -- RFC 7638 thumbprint of the public key
    alg            text NOT NULL CHECK (alg IN ('ES256', 'ES384', 'EdDSA', 'RS256', 'PS256')),
    state          text NOT NULL CHECK (state IN ('next', 'active', 'retired', 'revoked')),
    public_jwk     jsonb NOT NULL,
    -- The private JWK, AES-256-GCM under the key-encryption key, the kid as associated data.
    private_sealed bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    activated_at   timestamptz,
    retired_at     timestamptz,
    revoked_at     timestamptz,
    -- For a retired key: when the last token it signed expires (plus leeway); then it may go.
    expires_at     timestamptz
);

-- Never two active keys, never two next keys: the database refuses it whatever the code does.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((true)) WHERE state = 'active';
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys ((true)) WHERE state = 'next';
