-- Keeps every replica's in-memory views current.
--
-- `changes.revision` is bumped by every statement that changes what the
-- catalog view holds (systems, owners, grants, workload revocations, admin
-- tokens), and the same statement notifies `halflife_changes` with
-- `catalog`. Each revoked credential notifies `jti <jti>`. Notifications
-- are delivered when the transaction commits; replicas also poll the
-- revision, in case a notification was lost.
CREATE TABLE changes (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO changes (id, revision) VALUES (1, 0);

CREATE FUNCTION halflife_catalog_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE changes SET revision = revision + 1 WHERE id = 1;
    PERFORM pg_notify('halflife_changes', 'catalog');
    RETURN NULL;
END;
$$;

CREATE TRIGGER systems_changes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON systems
    FOR EACH STATEMENT EXECUTE FUNCTION halflife_catalog_changed();
CREATE TRIGGER owners_changes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON owners
    FOR EACH STATEMENT EXECUTE FUNCTION halflife_catalog_changed();
CREATE TRIGGER grants_changes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON grants
    FOR EACH STATEMENT EXECUTE FUNCTION halflife_catalog_changed();
CREATE TRIGGER workload_revocations_changes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON workload_revocations
    FOR EACH STATEMENT EXECUTE FUNCTION halflife_catalog_changed();
CREATE TRIGGER admin_tokens_changes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON admin_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION halflife_catalog_changed();

CREATE FUNCTION halflife_credential_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('halflife_changes', 'jti ' || NEW.jti);
    RETURN NULL;
END;
$$;

CREATE TRIGGER credentials_revoked AFTER UPDATE OF revoked_at ON credentials
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION halflife_credential_revoked();
