-- A request's writes never commit after the server has given up on the request (CONTRACT.md,
-- "Robustness": a request answered with an error has changed nothing and never will).
--
-- The server answers 503 when a request's time is up, but a statement it sent may still be queued
-- at a frozen backend, or waiting for a lock, and would otherwise commit later: a refresh answered
-- 503 would have spent the token its client still holds. So every write a request makes carries a
-- deadline: the moment, in THIS database's clock, from which the server may have answered already
-- (server/store/db.py, DatabaseClock, converts the server's moment with an offset measured on each
-- connection). The statement checks it as its last step, after its rows are written, and raises if
-- the moment has passed, so the transaction rolls back; the commit follows the check at once.
-- A NULL deadline means no request waits for the statement (the CLI, background tasks).
CREATE FUNCTION tessera_before_deadline(deadline timestamptz) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF clock_timestamp() >= deadline THEN
        -- 57014, like a statement timeout: the server answers 503 and nothing was kept. The
        -- constraint name tells the server which cancellation this was.
        RAISE EXCEPTION 'canceling statement: the request it belongs to has been answered already'
            USING ERRCODE = 'query_canceled', CONSTRAINT = 'tessera_request_deadline',
                  DETAIL = format('deadline %s, database clock %s', deadline, clock_timestamp());
    END IF;
    RETURN true;
END $$;

-- The rotations of migration 0009, each row with the deadline of its request. The rule of which
-- token may rotate stays there; these only refuse to finish late. A batch is refused whole if any
-- of its rows is late, and the server then sends its rows one by one (server/store/rotation_batch.py),
-- so a late row refuses only itself.
CREATE FUNCTION tessera_rotate_families_before(
    p_family_id uuid[], p_generation integer[], p_current_hash bytea[], p_client_id text[],
    p_successor_hash bytea[], p_now timestamptz[], p_idle_expires_at timestamptz[],
    p_scopes text[], p_audience text[], p_deadline timestamptz[]
) RETURNS TABLE (
    family_id uuid, user_id uuid, scopes text[], audience text, auth_time timestamptz,
    created_at timestamptz, expires_at timestamptz
) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM tessera_rotate_families(
        p_family_id, p_generation, p_current_hash, p_client_id, p_successor_hash, p_now,
        p_idle_expires_at, p_scopes, p_audience);
    PERFORM tessera_before_deadline(min(deadline)) FROM unnest(p_deadline) AS deadline;
END $$;

CREATE FUNCTION tessera_rotate_families_waiting_before(
    p_family_id uuid[], p_generation integer[], p_current_hash bytea[], p_client_id text[],
    p_successor_hash bytea[], p_now timestamptz[], p_idle_expires_at timestamptz[],
    p_scopes text[], p_audience text[], p_deadline timestamptz[]
) RETURNS TABLE (
    family_id uuid, user_id uuid, scopes text[], audience text, auth_time timestamptz,
    created_at timestamptz, expires_at timestamptz
) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM tessera_rotate_families_waiting(
        p_family_id, p_generation, p_current_hash, p_client_id, p_successor_hash, p_now,
        p_idle_expires_at, p_scopes, p_audience);
    PERFORM tessera_before_deadline(min(deadline)) FROM unnest(p_deadline) AS deadline;
END $$;
