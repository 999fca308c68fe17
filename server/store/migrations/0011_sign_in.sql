-- Sign-in for people (CONTRACT.md, "Sign-in for browser, mobile and desktop apps"): clients that
-- redirect, the sign-in sessions of the login page, remembered consents and authorization codes.

ALTER TABLE clients
    -- RFC 6749 section 3.1.2: registered redirection endpoints, compared as strings (RFC 9700
    -- section 4.1.3); post_logout_redirect_uri must be one of them too.
    ADD COLUMN redirect_uris text[] NOT NULL DEFAULT '{}',
    -- The operator's own apps: the consent page is skipped.
    ADD COLUMN first_party boolean NOT NULL DEFAULT false,
    DROP CONSTRAINT clients_grant_types_check,
    ADD CONSTRAINT clients_grant_types_check CHECK (grant_types <@ ARRAY[
        'client_credentials', 'password', 'refresh_token', 'authorization_code',
        'urn:ietf:params:oauth:grant-type:token-exchange']),
    ADD CONSTRAINT clients_redirect_uris_for_codes CHECK (
        NOT ('authorization_code' = ANY (grant_types)) OR cardinality(redirect_uris) >= 1);

-- A person signed in at the login page; the browser holds the cookie __Host-tessera_session,
-- this table only its SHA-256. Families made from a sign-in remember it, so /logout ends them.
CREATE TABLE login_sessions (
    session_id   uuid PRIMARY KEY,
    cookie_hash  bytea NOT NULL UNIQUE CHECK (length(cookie_hash) = 32),
    user_id      uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    auth_time    timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    ended_at     timestamptz
);
CREATE INDEX login_sessions_user_id ON login_sessions (user_id);
CREATE INDEX login_sessions_expires_at ON login_sessions (expires_at);

-- What a person allowed a client: a later request for these scopes, or fewer, asks no more.
CREATE TABLE consents (
    user_id     uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    client_id   text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    scopes      text[] NOT NULL,
    granted_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

-- RFC 6749 section 4.1.2: short-lived, single-use, bound to everything the request said. Only the
-- SHA-256 of a code is kept. family_id: the refresh-token family its redemption made, revoked if
-- the code is presented again (RFC 6749 section 4.1.2, RFC 9700 section 4.1.1 and 4.5).
CREATE TABLE authorization_codes (
    code_hash       bytea PRIMARY KEY CHECK (length(code_hash) = 32),
    client_id       text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    session_id      uuid NOT NULL,
    redirect_uri    text,                  -- as sent in the request; NULL when it was left out
    code_challenge  text NOT NULL,         -- S256 only (RFC 7636 section 4.2)
    scopes          text[] NOT NULL,
    audience        text NOT NULL,
    nonce           text,
    auth_time       timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    redeemed_at     timestamptz,
    family_id       uuid
);
CREATE INDEX authorization_codes_expires_at ON authorization_codes (expires_at);

ALTER TABLE refresh_families ADD COLUMN login_session_id uuid;
CREATE INDEX refresh_families_login_session_id ON refresh_families (login_session_id)
    WHERE login_session_id IS NOT NULL;
