-- The strings that repeat from event to event (who acted, for which
-- owners, from where, with which attestation issuer and subject, for which
-- audience and scopes) are stored once, in `audit_names`, and an event
-- names each by id. A workload's issuances repeat them all, and they were
-- about a third of an event's row and most of the index of events by
-- subject. An event's detail is stored the same way once the writer has
-- seen it before (`detail_id`); older events keep theirs inline.
-- The chain hashes are computed over the strings, so every hash, and every
-- signed checkpoint, stays as it was. Names are never changed or removed,
-- as events are not.
DROP TRIGGER audit_events_no_update;
DROP TRIGGER audit_events_no_delete;

CREATE TABLE audit_names (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
) STRICT;

INSERT INTO audit_names (name)
SELECT name FROM (
    SELECT actor AS name FROM audit_events
    UNION SELECT owners FROM audit_events
    UNION SELECT source FROM audit_events
    UNION SELECT attestation_issuer FROM audit_events
    UNION SELECT subject FROM audit_events
    UNION SELECT audience FROM audit_events
    UNION SELECT scopes FROM audit_events
) AS names
WHERE name IS NOT NULL
ORDER BY name;

-- Rebuilt rather than altered in place, as in 0013.
CREATE TABLE audit_events_named (
    seq                   INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms               INTEGER NOT NULL,
    kind                  TEXT NOT NULL,
    outcome               TEXT NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    reason                TEXT,
    actor_id              INTEGER,              -- audit_names (id), as are all *_id columns
    system_id             TEXT,
    owners_id             INTEGER,
    grant_id              TEXT,
    jti                   TEXT,
    request_id            TEXT,
    source_id             INTEGER,
    attestation_issuer_id INTEGER,
    subject_id            INTEGER,
    attestation_id        TEXT,
    audience_id           INTEGER,
    scopes_id             INTEGER,
    iat                   INTEGER,
    exp                   INTEGER,
    detail                TEXT,                 -- JSON object, or
    detail_id             INTEGER,              -- the same, stored once
    hash                  BLOB                  -- SHA-256 chain hash, 32 bytes
) STRICT;

INSERT INTO audit_events_named (seq, time_ms, kind, outcome, reason, actor_id, system_id, owners_id, grant_id, jti,
    request_id, source_id, attestation_issuer_id, subject_id, attestation_id, audience_id, scopes_id, iat, exp, detail,
    hash)
SELECT e.seq, e.time_ms, e.kind, e.outcome, e.reason, actor.id, e.system_id, owners.id, e.grant_id, e.jti,
    e.request_id, source.id, issuer.id, subject.id, e.attestation_id, audience.id, scopes.id, e.iat, e.exp, e.detail,
    e.hash
FROM audit_events e
LEFT JOIN audit_names actor ON actor.name = e.actor
LEFT JOIN audit_names owners ON owners.name = e.owners
LEFT JOIN audit_names source ON source.name = e.source
LEFT JOIN audit_names issuer ON issuer.name = e.attestation_issuer
LEFT JOIN audit_names subject ON subject.name = e.subject
LEFT JOIN audit_names audience ON audience.name = e.audience
LEFT JOIN audit_names scopes ON scopes.name = e.scopes
ORDER BY e.seq;

DROP TABLE audit_events;
ALTER TABLE audit_events_named RENAME TO audit_events;

CREATE INDEX audit_by_system ON audit_events (system_id, seq);
CREATE INDEX audit_by_jti ON audit_events (jti);
CREATE INDEX audit_by_time ON audit_events (time_ms);
CREATE INDEX audit_by_subject ON audit_events (subject_id, seq);
CREATE INDEX audit_by_kind ON audit_events (kind, seq) WHERE kind <> 'credential.issued';

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
WHEN OLD.hash IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_names_no_update BEFORE UPDATE ON audit_names
BEGIN
    SELECT RAISE(ABORT, 'audit names are append-only');
END;

CREATE TRIGGER audit_names_no_delete BEFORE DELETE ON audit_names
BEGIN
    SELECT RAISE(ABORT, 'audit names are append-only');
END;
