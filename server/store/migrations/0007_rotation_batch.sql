-- Group commit of refresh-token rotations (server/store/rotation_batch.py, docs/performance.md).
--
-- The rotations an instance has in flight together go to the database as one call of this
-- function: one statement, one commit, one WAL flush. Each row keeps every condition of the
-- single-row rotation (server/store/families.py, ROTATE_SQL), so of several requests with one
-- token exactly one matches, in one instance or many.
--
-- One row must not hold up the others: a family that another transaction has locked (a concurrent
-- rotation of it, a revocation) would make the whole batch wait. Past lock_timeout the call fails,
-- nothing of it is kept, and the server sends that batch's rotations one by one.
CREATE FUNCTION tessera_rotate_families(
    p_family_id uuid[], p_generation integer[], p_current_hash bytea[], p_client_id text[],
    p_successor_hash bytea[], p_now timestamptz[], p_idle_expires_at timestamptz[],
    p_scopes text[], p_audience text[]  -- p_scopes: space-separated scope, or NULL for any
) RETURNS TABLE (
    family_id uuid, user_id uuid, scopes text[], audience text, auth_time timestamptz,
    created_at timestamptz, expires_at timestamptz
) LANGUAGE plpgsql SET lock_timeout = '100ms' AS $$
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
       AND f.revoked_at IS NULL AND f.expires_at > r.now AND f.idle_expires_at > r.now
       AND (r.scopes IS NULL OR f.scopes @> string_to_array(r.scopes, ' '))
       AND (r.audience IS NULL OR f.audience = r.audience)
    RETURNING f.family_id, f.user_id, f.scopes, f.audience, f.auth_time, f.created_at, f.expires_at;
END $$;
