-- Refresh-token families (RFC 9700 section 4.14.2): ONE ROW PER LOGIN, one UPDATE per rotation.
--
-- No row is written per spent token: the table grows with live sessions, not with rotations
-- (Hydra's token table reached 11M rows / 24 GB, hydra#3079). A token names its family and
-- generation; successors are derived from their predecessor with a server-side HMAC key, so the
-- row needs only the SHA-256 of the current token to tell the current token, a retry of the one
-- before it, an older (spent) token and a forgery apart. Nothing stored recomputes a token.
--
-- Every refresh touches exactly one row, found by its primary key, so the table can be
-- hash-partitioned or sharded by family_id. For the same reason current_hash carries no index:
-- a unique index on it would have to include the partition key, and any index on a column that
-- changes at every rotation rules out HOT updates (fillfactor leaves room for them on the page).
CREATE TABLE refresh_families (
    family_id        uuid PRIMARY KEY,
    client_id        text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    user_id          uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    scopes           text[] NOT NULL,
    audience         text NOT NULL,
    auth_time        timestamptz NOT NULL,       -- the login; kept across refreshes
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,       -- absolute: created_at + TESSERA_SESSION_TTL, never extended
    generation       integer NOT NULL CHECK (generation >= 0),
    current_hash     bytea NOT NULL CHECK (length(current_hash) = 32),
    last_rotated_at  timestamptz NOT NULL,       -- when the current token was issued
    idle_expires_at  timestamptz NOT NULL,       -- last_rotated_at + TESSERA_REFRESH_TOKEN_TTL
    revoked_at       timestamptz,
    revoked_reason   text,
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
) WITH (fillfactor = 80);

-- For `tessera sessions revoke --user/--client`, for revoking on disable / password change, and
-- for the cascades; neither column changes when a token rotates, so rotations stay HOT.
CREATE INDEX refresh_families_user_id ON refresh_families (user_id);
CREATE INDEX refresh_families_client_id ON refresh_families (client_id);

-- What an operator reviews after an attack: reuse of a spent refresh token, or a genuine token
-- presented by another client. No foreign keys: the record outlives the client, user or family.
CREATE TABLE security_events (
    event_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text NOT NULL,
    family_id     uuid,
    client_id     text,                          -- the client the family belongs to
    presented_by  text,                          -- the client that presented the token
    user_id       uuid,
    remote        text,                          -- the request's remote address
    occurred_at   timestamptz NOT NULL
);
CREATE INDEX security_events_occurred_at ON security_events (occurred_at);
