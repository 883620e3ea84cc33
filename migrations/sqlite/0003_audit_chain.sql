-- Tamper evidence: every event carries the SHA-256 chain hash of its
-- canonical form and its predecessor's hash (see src/audit/mod.rs).
-- Events written before this migration are sealed into the chain at start.
ALTER TABLE audit_events ADD COLUMN owners TEXT;
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_events ADD COLUMN hash TEXT;

CREATE INDEX audit_by_time ON audit_events (time_ms);
CREATE INDEX audit_by_subject ON audit_events (subject, seq);
CREATE INDEX audit_by_kind ON audit_events (kind, seq);

-- Signed statements of the chain head, so a truncated tail is detectable.
CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    hash      TEXT NOT NULL,
    time      TEXT NOT NULL,
    signature TEXT NOT NULL
) STRICT;
