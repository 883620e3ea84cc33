-- Chain hashes are stored as their 32 bytes instead of 64 hex characters,
-- and an event's prev_hash is no longer stored: it is its predecessor's
-- hash, and is read from there. 96 bytes less per event; the hashes, and
-- so every signed checkpoint, stay as they were. A value that is not a
-- hash (altered by hand) becomes NULL, which verification reports.
--
-- The table is rebuilt rather than altered in place: adding the new
-- column to every row first would split pages that dropping the old ones
-- leaves half empty, and the file would grow instead of shrink.
DROP TRIGGER audit_events_no_update;
DROP TRIGGER audit_events_no_delete;

CREATE TABLE audit_events_compact (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms            INTEGER NOT NULL,
    kind               TEXT NOT NULL,
    outcome            TEXT NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    reason             TEXT,
    actor              TEXT,
    system_id          TEXT,
    grant_id           TEXT,
    jti                TEXT,
    request_id         TEXT,
    source             TEXT,
    attestation_issuer TEXT,
    subject            TEXT,
    attestation_id     TEXT,
    audience           TEXT,
    scopes             TEXT,
    iat                INTEGER,
    exp                INTEGER,
    detail             TEXT,                    -- JSON object
    owners             TEXT,
    hash               BLOB                     -- SHA-256 chain hash, 32 bytes
) STRICT;

INSERT INTO audit_events_compact (seq, time_ms, kind, outcome, reason, actor, system_id, grant_id, jti, request_id,
    source, attestation_issuer, subject, attestation_id, audience, scopes, iat, exp, detail, owners, hash)
SELECT seq, time_ms, kind, outcome, reason, actor, system_id, grant_id, jti, request_id,
    source, attestation_issuer, subject, attestation_id, audience, scopes, iat, exp, detail, owners,
    CASE WHEN length(hash) = 64 THEN unhex(hash) END
FROM audit_events ORDER BY seq;

DROP TABLE audit_events;
ALTER TABLE audit_events_compact RENAME TO audit_events;

CREATE INDEX audit_by_system ON audit_events (system_id, seq);
CREATE INDEX audit_by_jti ON audit_events (jti);
CREATE INDEX audit_by_time ON audit_events (time_ms);
CREATE INDEX audit_by_subject ON audit_events (subject, seq);
CREATE INDEX audit_by_kind ON audit_events (kind, seq);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
WHEN OLD.hash IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
