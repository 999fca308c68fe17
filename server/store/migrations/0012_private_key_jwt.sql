-- Clients that authenticate with their own key pair (CONTRACT.md, "Service to service"):
-- private_key_jwt (RFC 7523 section 2.2, OpenID Connect Core section 9), and the register of
-- client assertions already used, so that each is accepted once only, by every instance.

-- How a client authenticates at /token, /revoke and /introspect (OpenID Connect Dynamic Client
-- Registration's token_endpoint_auth_method). A client with a secret may send it either way
-- (client_secret_basic or client_secret_post); private_key_jwt clients have keys and no secret;
-- `none` is a public client. The keys: an inline JWK Set (public keys only, checked when it is
-- registered: tessera.server.oauth.client_assertions.registered_jwks) or a URL to fetch it from.
ALTER TABLE clients
    ADD COLUMN token_endpoint_auth_method text,
    ADD COLUMN jwks jsonb,
    ADD COLUMN jwks_uri text;

UPDATE clients SET token_endpoint_auth_method = CASE WHEN is_public THEN 'none' ELSE 'client_secret_basic' END;

ALTER TABLE clients
    ALTER COLUMN token_endpoint_auth_method SET NOT NULL,
    -- 0001's "is_public = (secret_hash IS NULL)": a private_key_jwt client is confidential without a secret.
    DROP CONSTRAINT clients_check,
    ADD CONSTRAINT clients_token_endpoint_auth_method_check CHECK (token_endpoint_auth_method IN (
        'client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none')),
    -- Each method has exactly the credentials it uses, and nothing else.
    ADD CONSTRAINT clients_credentials_fit_the_method CHECK (CASE token_endpoint_auth_method
        WHEN 'none' THEN is_public AND secret_hash IS NULL AND jwks IS NULL AND jwks_uri IS NULL
        WHEN 'private_key_jwt' THEN NOT is_public AND secret_hash IS NULL AND (jwks IS NULL) <> (jwks_uri IS NULL)
        ELSE NOT is_public AND secret_hash IS NOT NULL AND jwks IS NULL AND jwks_uri IS NULL END),
    ADD CONSTRAINT clients_jwks_is_a_key_set CHECK (
        jwks IS NULL OR (jsonb_typeof(jwks -> 'keys') = 'array' AND octet_length(jwks::text) <= 65536)),
    ADD CONSTRAINT clients_jwks_uri_is_http CHECK (
        jwks_uri IS NULL OR (jwks_uri ~ '^https?://' AND length(jwks_uri) <= 2048));

-- RFC 7523 section 3, item 7: a client assertion's jti, kept until the assertion could no longer
-- be accepted (its exp plus the leeway), so a copy presented again, to this instance or any
-- other, is refused (a replay is invalid_client). One row per accepted assertion; the jti is
-- bounded in length; the janitor deletes rows past expires_at. Logged like everything but the
-- throttle's counters: a crash or a failover must not make a captured assertion usable again.
-- No foreign key to clients: a row is written only after the assertion's signature verified,
-- and it must outlive a client deleted and registered again with the same keys.
CREATE TABLE client_assertion_jtis (
    client_id   text NOT NULL CHECK (length(client_id) BETWEEN 1 AND 128),
    jti         text NOT NULL CHECK (length(jti) BETWEEN 1 AND 256),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX client_assertion_jtis_expires_at ON client_assertion_jtis (expires_at);

-- The one rule of the register, for one assertion or many sent together (group commit,
-- tessera.server.store.assertions): each (client_id, jti) is recorded unless it is there and has
-- not expired at p_now; the rows recorded are returned, and a row not returned is a replay. As in
-- migration 0010, the statement refuses to finish past the earliest deadline of its requests, so a
-- jti is never spent by a request that was already answered 503. Rows are taken in key order, so
-- two instances' batches never wait for each other in a cycle.
CREATE FUNCTION tessera_spend_client_assertions(
    p_client_id text[], p_jti text[], p_expires_at timestamptz[], p_now timestamptz, p_deadline timestamptz
) RETURNS TABLE (client_id text, jti text) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        WITH spent AS (
            INSERT INTO client_assertion_jtis AS j (client_id, jti, expires_at)
            SELECT a.client_id, a.jti, a.expires_at
              FROM unnest(p_client_id, p_jti, p_expires_at) AS a(client_id, jti, expires_at)
             ORDER BY a.client_id, a.jti
            ON CONFLICT (client_id, jti) DO UPDATE SET expires_at = EXCLUDED.expires_at
                WHERE j.expires_at <= p_now
            RETURNING j.client_id, j.jti)
        SELECT spent.client_id, spent.jti FROM spent;
    PERFORM tessera_before_deadline(p_deadline);
END $$;
