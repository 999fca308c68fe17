-- Key lifecycle: when a key was published, how long it must stay published before it may sign,
-- and the invariants the rotation code relies on, held by the database itself.

-- published_at: when the key entered the key set (as next). A next key may become active only
-- once it has been published for publish_seconds: the longest TESSERA_JWKS_MAX_AGE plus reload
-- interval that any instance serving it declared (each instance raises it when it sees the key).
ALTER TABLE signing_keys ADD COLUMN published_at timestamptz;
UPDATE signing_keys SET published_at = created_at;
ALTER TABLE signing_keys ALTER COLUMN published_at SET NOT NULL, ALTER COLUMN published_at SET DEFAULT now();
ALTER TABLE signing_keys ADD COLUMN publish_seconds integer NOT NULL DEFAULT 0 CHECK (publish_seconds >= 0);

-- Each state carries the dates that define it.
ALTER TABLE signing_keys
    ADD CONSTRAINT signing_keys_active_has_activated_at CHECK (state <> 'active' OR activated_at IS NOT NULL),
    ADD CONSTRAINT signing_keys_retired_has_dates
        CHECK (state <> 'retired' OR (activated_at IS NOT NULL AND retired_at IS NOT NULL AND expires_at IS NOT NULL)),
    ADD CONSTRAINT signing_keys_revoked_has_revoked_at CHECK (state <> 'revoked' OR revoked_at IS NOT NULL);

-- Never zero active keys. The unique index of 0001 already refuses two; "at least one" cannot be
-- an index, and must hold only at commit (a rotation retires the old key before it activates the
-- new one), so it is a deferred constraint trigger: any transaction, whoever runs it (the server,
-- a CLI, psql), that would leave keys but no active one fails at COMMIT. An empty table is the
-- state before the first start.
CREATE FUNCTION signing_keys_exactly_one_active() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM signing_keys)
       AND (SELECT count(*) FROM signing_keys WHERE state = 'active') <> 1 THEN
        RAISE EXCEPTION 'signing_keys must hold exactly one active key'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER signing_keys_exactly_one_active
    AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION signing_keys_exactly_one_active();
