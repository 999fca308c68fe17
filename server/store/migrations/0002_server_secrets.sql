-- Server-side secrets shared by every instance (for example the key that derives refresh-token
-- successors), sealed under the key-encryption key like private signing keys, the name as
-- associated data. `tessera keys rewrap` re-seals them with the signing keys.
CREATE TABLE server_secrets (
    name        text PRIMARY KEY,
    sealed      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
