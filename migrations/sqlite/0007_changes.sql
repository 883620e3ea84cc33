-- A revision number bumped by every change to what the in-memory catalog
-- view holds (systems, owners, grants, workload revocations, admin tokens),
-- whichever process makes it. Each broker polls it and reloads its view
-- when it moves: this is how a `halflife apply` run against a live
-- database reaches the running broker.
CREATE TABLE changes (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO changes (id, revision) VALUES (1, 0);
CREATE TRIGGER systems_insert_changes AFTER INSERT ON systems BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER systems_update_changes AFTER UPDATE ON systems BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER systems_delete_changes AFTER DELETE ON systems BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER owners_insert_changes AFTER INSERT ON owners BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER owners_update_changes AFTER UPDATE ON owners BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER owners_delete_changes AFTER DELETE ON owners BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER grants_insert_changes AFTER INSERT ON grants BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER grants_update_changes AFTER UPDATE ON grants BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER grants_delete_changes AFTER DELETE ON grants BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER workload_revocations_insert_changes AFTER INSERT ON workload_revocations BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER workload_revocations_update_changes AFTER UPDATE ON workload_revocations BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER workload_revocations_delete_changes AFTER DELETE ON workload_revocations BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER admin_tokens_insert_changes AFTER INSERT ON admin_tokens BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER admin_tokens_update_changes AFTER UPDATE ON admin_tokens BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER admin_tokens_delete_changes AFTER DELETE ON admin_tokens BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
