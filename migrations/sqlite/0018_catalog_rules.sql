-- The catalog's continuous rules (src/domain/catalog.rs).
--
-- When a system entered its tier: a sandbox or pilot lasts at most
-- lifecycle.max_pilot from then, however often its end date moves.
-- Systems created before are taken to have entered it when they were
-- created (the earliest it can have been).
ALTER TABLE systems ADD COLUMN tier_started_at INTEGER NOT NULL DEFAULT 0;
UPDATE systems SET tier_started_at = created_at;

-- Bumped by every change of a grant: an issuance decided on an older
-- version is refused when it commits, so nothing a removed or narrowed
-- grant allowed can be issued after the change.
ALTER TABLE grants ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

-- Most targets (audiences, resources) one token issued under the grant may
-- name; 1 keeps least privilege the default.
ALTER TABLE grants ADD COLUMN max_audiences INTEGER NOT NULL DEFAULT 1 CHECK (max_audiences >= 1);

-- Whom a grant's workload may act for (delegation, RFC 8693): a JSON list
-- of {issuer, subjects, claims}; empty, no one.
ALTER TABLE grants ADD COLUMN on_behalf_of TEXT NOT NULL DEFAULT '[]';

-- On whose behalf a delegated credential acts: the workload identity (a
-- person, or the first workload of a chain) that the subject token named.
-- Revoking it (`/v1/revoke` with its issuer and subject) revokes the
-- credentials issued on its behalf, in every system.
ALTER TABLE credentials ADD COLUMN principal_id INTEGER REFERENCES workloads (id);
CREATE INDEX credentials_by_principal ON credentials (principal_id) WHERE principal_id IS NOT NULL;

-- A removed or narrowed grant revokes what was issued under it: for each
-- workload identity it covered, the credentials of that workload in the
-- grant's system with an id at or below `revoked_through`.
CREATE TABLE grant_revocations (
    system_id       TEXT NOT NULL,
    workload_id     INTEGER NOT NULL REFERENCES workloads (id),
    revoked_through INTEGER NOT NULL,
    grant_id        TEXT NOT NULL,               -- the last grant whose change raised it
    PRIMARY KEY (system_id, workload_id)
) STRICT, WITHOUT ROWID;
CREATE TRIGGER grant_revocations_insert_changes AFTER INSERT ON grant_revocations BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER grant_revocations_update_changes AFTER UPDATE ON grant_revocations BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER grant_revocations_delete_changes AFTER DELETE ON grant_revocations BEGIN UPDATE changes SET revision = revision + 1 WHERE id = 1; END;
