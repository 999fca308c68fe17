-- Group commit for authorization codes (server/store/sign_in.py, server/store/batching.py): the
-- codes redeemed at the same moment are spent, and their refresh-token families started, in one
-- statement and one commit, as refresh rotations are (migrations 0009, 0010).
--
-- The rule is the one the single statement it replaces had, per row: a code is spent only if it is
-- the presenting client's, was asked for with this redirect URI and this PKCE challenge, has not
-- expired nor been spent, its user is enabled and its sign-in has not ended; its family (when the
-- client gets refresh tokens, p_family_id not NULL) is made in the same statement, so both or
-- neither. Under READ COMMITTED a code row that a concurrent transaction spent first is re-checked
-- against its new version (redeemed_at is then set), so of several requests with one code, on one
-- instance or many, exactly one matches. The rows answered are the codes spent; a code not
-- answered was refused, with nothing changed, and the server reads it to say why.
--
-- This one waits for a locked code as long as the statement may run (a row sent alone).
CREATE FUNCTION tessera_redeem_codes_waiting(
    p_code_hash bytea[], p_now timestamptz[], p_client_id text[], p_redirect_uri text[], p_code_challenge text[],
    p_family_id uuid[], p_family_expires_at timestamptz[], p_current_hash bytea[], p_idle_expires_at timestamptz[]
) RETURNS TABLE (
    code_hash bytea, user_id uuid, session_id uuid, scopes text[], audience text, nonce text, auth_time timestamptz
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH spent AS (
        UPDATE authorization_codes AS c SET redeemed_at = r.now, family_id = r.family_id
          FROM unnest(p_code_hash, p_now, p_client_id, p_redirect_uri, p_code_challenge, p_family_id,
                      p_family_expires_at, p_current_hash, p_idle_expires_at)
               AS r(code_hash, now, client_id, redirect_uri, code_challenge, family_id, family_expires_at,
                    current_hash, idle_expires_at),
               users AS u
         WHERE c.code_hash = r.code_hash AND c.redeemed_at IS NULL AND c.expires_at > r.now
           AND c.client_id = r.client_id AND c.redirect_uri IS NOT DISTINCT FROM r.redirect_uri
           AND c.code_challenge = r.code_challenge
           AND u.user_id = c.user_id AND NOT u.disabled
           AND EXISTS (SELECT 1 FROM login_sessions AS s WHERE s.session_id = c.session_id AND s.ended_at IS NULL)
        RETURNING c.code_hash, c.client_id, c.user_id, c.session_id, c.scopes, c.audience, c.nonce, c.auth_time,
                  r.now, r.family_id, r.family_expires_at, r.current_hash, r.idle_expires_at),
    started AS (
        -- Executed whole whether or not the query below reads it (a data-modifying WITH).
        INSERT INTO refresh_families (family_id, client_id, user_id, scopes, audience, auth_time, created_at,
                                      expires_at, generation, current_hash, last_rotated_at, idle_expires_at,
                                      login_session_id)
        SELECT spent.family_id, spent.client_id, spent.user_id, spent.scopes, spent.audience, spent.auth_time,
               spent.now, spent.family_expires_at, 0, spent.current_hash, spent.now, spent.idle_expires_at,
               spent.session_id
          FROM spent WHERE spent.family_id IS NOT NULL
        RETURNING 1)
    SELECT spent.code_hash, spent.user_id, spent.session_id, spent.scopes, spent.audience, spent.nonce,
           spent.auth_time
      FROM spent;
END $$;

-- The same for a batch sent together: one code must not hold up the others, so past lock_timeout
-- the call fails whole, nothing of it is kept, and the server sends that batch's codes one by one
-- through the waiting function (server/store/batching.py).
CREATE FUNCTION tessera_redeem_codes(
    p_code_hash bytea[], p_now timestamptz[], p_client_id text[], p_redirect_uri text[], p_code_challenge text[],
    p_family_id uuid[], p_family_expires_at timestamptz[], p_current_hash bytea[], p_idle_expires_at timestamptz[]
) RETURNS TABLE (
    code_hash bytea, user_id uuid, session_id uuid, scopes text[], audience text, nonce text, auth_time timestamptz
) LANGUAGE plpgsql SET lock_timeout = '100ms' AS $$
BEGIN
    RETURN QUERY SELECT * FROM tessera_redeem_codes_waiting(
        p_code_hash, p_now, p_client_id, p_redirect_uri, p_code_challenge, p_family_id, p_family_expires_at,
        p_current_hash, p_idle_expires_at);
END $$;

-- Both with their rows' deadlines (migration 0010), as the server calls them: the statement refuses
-- to commit once the server may have answered any of its rows' requests; a batch refused that way
-- is sent again row by row.
CREATE FUNCTION tessera_redeem_codes_before(
    p_code_hash bytea[], p_now timestamptz[], p_client_id text[], p_redirect_uri text[], p_code_challenge text[],
    p_family_id uuid[], p_family_expires_at timestamptz[], p_current_hash bytea[], p_idle_expires_at timestamptz[],
    p_deadline timestamptz[]
) RETURNS TABLE (
    code_hash bytea, user_id uuid, session_id uuid, scopes text[], audience text, nonce text, auth_time timestamptz
) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM tessera_redeem_codes(
        p_code_hash, p_now, p_client_id, p_redirect_uri, p_code_challenge, p_family_id, p_family_expires_at,
        p_current_hash, p_idle_expires_at);
    PERFORM tessera_before_deadline(min(deadline)) FROM unnest(p_deadline) AS deadline;
END $$;

CREATE FUNCTION tessera_redeem_codes_waiting_before(
    p_code_hash bytea[], p_now timestamptz[], p_client_id text[], p_redirect_uri text[], p_code_challenge text[],
    p_family_id uuid[], p_family_expires_at timestamptz[], p_current_hash bytea[], p_idle_expires_at timestamptz[],
    p_deadline timestamptz[]
) RETURNS TABLE (
    code_hash bytea, user_id uuid, session_id uuid, scopes text[], audience text, nonce text, auth_time timestamptz
) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM tessera_redeem_codes_waiting(
        p_code_hash, p_now, p_client_id, p_redirect_uri, p_code_challenge, p_family_id, p_family_expires_at,
        p_current_hash, p_idle_expires_at);
    PERFORM tessera_before_deadline(min(deadline)) FROM unnest(p_deadline) AS deadline;
END $$;
