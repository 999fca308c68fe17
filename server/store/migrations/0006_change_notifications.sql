-- Change notifications for the per-process caches (docs/performance.md).
--
-- Every instance keeps the client rows it authenticates against in memory and learns of changes
-- through LISTEN. The triggers send the notification inside the transaction that makes the change,
-- so it is delivered if and only if the change commits, whoever made it (a server, the CLI, SQL).

-- A changed or deleted client: the payload is its id; an empty payload (TRUNCATE) means "all".
CREATE FUNCTION tessera_notify_client_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('tessera_clients', '');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tessera_clients', OLD.client_id);
    ELSE
        PERFORM pg_notify('tessera_clients', NEW.client_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER clients_changed AFTER INSERT OR UPDATE OR DELETE ON clients
    FOR EACH ROW EXECUTE FUNCTION tessera_notify_client_changed();
CREATE TRIGGER clients_truncated AFTER TRUNCATE ON clients
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_notify_client_changed();

-- A failed-login counter that holds failures: hex(counter) and its window start (epoch seconds).
-- Instances mark the counter "recently failed" until its window ends, and read it from the
-- database on every authentication until then (server.client_auth).
CREATE FUNCTION tessera_notify_login_failure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tessera_login_failures',
                      encode(NEW.counter, 'hex') || ' ' || extract(epoch FROM NEW.window_start)::text);
    RETURN NULL;
END $$;

CREATE TRIGGER login_failures_charged AFTER INSERT OR UPDATE ON login_failures
    FOR EACH ROW WHEN (NEW.failures > 0) EXECUTE FUNCTION tessera_notify_login_failure();
