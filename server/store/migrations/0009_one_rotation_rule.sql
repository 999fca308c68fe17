-- Which refresh token may rotate, said once (CONTRACT.md, "Refresh tokens").
--
-- Three small functions hold the rule; every statement that decides or explains a rotation uses
-- them: the rotation itself (one family or a batch, tessera_rotate_families*), and the read that
-- says why a rotation matched nothing or whether a token is live (server/store/families.py, get).
-- They are plain SQL and IMMUTABLE, so the planner inlines them: the rotation's plan is the one
-- it would be with the conditions written out.
CREATE FUNCTION tessera_family_live(revoked_at timestamptz, expires_at timestamptz,
                                    idle_expires_at timestamptz, at timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    -- Not revoked, and inside both its absolute and its idle lifetime.
    SELECT revoked_at IS NULL AND expires_at > at AND idle_expires_at > at
$$;

CREATE FUNCTION tessera_scope_within(granted text[], asked text)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    -- RFC 6749 section 6: a refresh may narrow the scope, never widen it. ``asked`` is the scope
    -- parameter as sent (space-separated, RFC 6749 section 3.3), NULL when it was left out.
    SELECT asked IS NULL OR granted @> string_to_array(asked, ' ')
$$;

CREATE FUNCTION tessera_audience_kept(bound text, asked text)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    -- A family's tokens are for the audience it was issued for (RFC 8707 section 2.2).
    SELECT asked IS NULL OR bound = asked
$$;

DROP FUNCTION tessera_rotate_families(uuid[], integer[], bytea[], text[], bytea[], timestamptz[],
                                      timestamptz[], text[], text[]);

-- The rotation of one or many families: the presented token must be its family's current one
-- (generation and hash), of the authenticated client, in a live family, asking no wider scope
-- and no other audience. Under READ COMMITTED a row that a concurrent transaction changed first
-- is re-checked against its new version, so of several requests with one token exactly one
-- matches. This one waits for a locked row as long as the statement may run.
CREATE FUNCTION tessera_rotate_families_waiting(
    p_family_id uuid[], p_generation integer[], p_current_hash bytea[], p_client_id text[],
    p_successor_hash bytea[], p_now timestamptz[], p_idle_expires_at timestamptz[],
    p_scopes text[], p_audience text[]
) RETURNS TABLE (
    family_id uuid, user_id uuid, scopes text[], audience text, auth_time timestamptz,
    created_at timestamptz, expires_at timestamptz
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    UPDATE refresh_families AS f
       SET generation = f.generation + 1, current_hash = r.successor_hash, last_rotated_at = r.now,
           idle_expires_at = r.idle_expires_at
      FROM unnest(p_family_id, p_generation, p_current_hash, p_client_id, p_successor_hash, p_now,
                  p_idle_expires_at, p_scopes, p_audience)
           AS r(family_id, generation, current_hash, client_id, successor_hash, now, idle_expires_at, scopes, audience)
     WHERE f.family_id = r.family_id AND f.generation = r.generation AND f.current_hash = r.current_hash
       AND f.client_id = r.client_id
       AND tessera_family_live(f.revoked_at, f.expires_at, f.idle_expires_at, r.now)
       AND tessera_scope_within(f.scopes, r.scopes)
       AND tessera_audience_kept(f.audience, r.audience)
    RETURNING f.family_id, f.user_id, f.scopes, f.audience, f.auth_time, f.created_at, f.expires_at;
END $$;

-- The same for a batch sent together (server/store/rotation_batch.py): one row must not hold up
-- the others, so past lock_timeout the call fails whole, nothing of it is kept, and the server
-- sends that batch's rotations one by one through the waiting function.
CREATE FUNCTION tessera_rotate_families(
    p_family_id uuid[], p_generation integer[], p_current_hash bytea[], p_client_id text[],
    p_successor_hash bytea[], p_now timestamptz[], p_idle_expires_at timestamptz[],
    p_scopes text[], p_audience text[]
) RETURNS TABLE (
    family_id uuid, user_id uuid, scopes text[], audience text, auth_time timestamptz,
    created_at timestamptz, expires_at timestamptz
) LANGUAGE plpgsql SET lock_timeout = '100ms' AS $$
BEGIN
    RETURN QUERY SELECT * FROM tessera_rotate_families_waiting(
        p_family_id, p_generation, p_current_hash, p_client_id, p_successor_hash, p_now,
        p_idle_expires_at, p_scopes, p_audience);
END $$;
