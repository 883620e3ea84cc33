-- Credential ids (jti), request ids and attestation ids are UUIDs almost
-- always: 36 characters as text, 16 bytes as a blob. Each issuance stored
-- its jti four times (the credential row, its unique index, the event row
-- and the index of events by jti) and a request id and an attestation id
-- once, about a fifth of the storage per issuance. A UUID in canonical
-- form (lower-case, hyphenated: the only form that reads back as the same
-- text) is now stored as its 16 bytes; any other id stays text, so the
-- columns take either (ANY). The store reads both back as the text they
-- were given, so every chain hash, and every signed checkpoint, stays as
-- it was. Looking an id up by hand: `WHERE jti = x'0190…'` (the UUID's hex
-- digits without hyphens) or, for ids that are not UUIDs, `WHERE jti = '…'`.
-- A credential's grant, audience, scopes and iat repeat its issuance
-- event's: they may now be NULL, meaning "as in the `credential.issued`
-- event with this jti", and the broker stores them only where they differ.
-- Existing rows keep theirs.
DROP TRIGGER audit_events_no_update;
DROP TRIGGER audit_events_no_delete;

CREATE TABLE credentials_compact (
    id             INTEGER PRIMARY KEY,
    jti            ANY NOT NULL UNIQUE,           -- 16-byte UUID, or text
    kind           TEXT NOT NULL,
    system_id      TEXT NOT NULL,
    grant_id       TEXT,                          -- NULL: as in the issuance event, as are
    workload_id    INTEGER NOT NULL REFERENCES workloads (id),
    audience       TEXT,                          -- audience,
    scopes         TEXT,                          -- scopes
    iat            INTEGER,                       -- and iat
    exp            INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT,
    secret_hash    TEXT,
    db_role        TEXT,
    role_state     TEXT CHECK (role_state IS NULL OR role_state IN ('live', 'dropping', 'dropped'))
) STRICT;

INSERT INTO credentials_compact (id, jti, kind, system_id, grant_id, workload_id, audience, scopes, iat, exp,
    revoked_at, revoked_reason, secret_hash, db_role, role_state)
SELECT id, CASE WHEN jti GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
        THEN unhex(replace(jti, '-', '')) ELSE jti END,
    kind, system_id, grant_id, workload_id, audience, scopes, iat, exp,
    revoked_at, revoked_reason, secret_hash, db_role, role_state
FROM credentials
ORDER BY id;

DROP TABLE credentials;
ALTER TABLE credentials_compact RENAME TO credentials;

CREATE INDEX credentials_by_system ON credentials (system_id, exp);
CREATE INDEX credentials_by_system_id ON credentials (system_id, id);
CREATE INDEX credentials_by_workload ON credentials (workload_id);
CREATE UNIQUE INDEX credentials_by_secret_hash ON credentials (secret_hash) WHERE secret_hash IS NOT NULL;
CREATE INDEX credentials_live_roles ON credentials (role_state) WHERE role_state IN ('live', 'dropping');

-- Rebuilt rather than altered in place, as in 0013.
CREATE TABLE audit_events_compact (
    seq                   INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms               INTEGER NOT NULL,
    kind                  TEXT NOT NULL,
    outcome               TEXT NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    reason                TEXT,
    actor_id              INTEGER,              -- audit_names (id), as are all *_id columns
    system_id             TEXT,
    owners_id             INTEGER,
    grant_id              TEXT,
    jti                   ANY,                  -- 16-byte UUID, or text, as are
    request_id            ANY,                  -- request and
    source_id             INTEGER,
    attestation_issuer_id INTEGER,
    subject_id            INTEGER,
    attestation_id        ANY,                  -- attestation ids
    audience_id           INTEGER,
    scopes_id             INTEGER,
    iat                   INTEGER,
    exp                   INTEGER,
    detail                TEXT,                 -- JSON object, or
    detail_id             INTEGER,              -- the same, stored once
    hash                  BLOB                  -- SHA-256 chain hash, 32 bytes
) STRICT;

INSERT INTO audit_events_compact (seq, time_ms, kind, outcome, reason, actor_id, system_id, owners_id, grant_id, jti,
    request_id, source_id, attestation_issuer_id, subject_id, attestation_id, audience_id, scopes_id, iat, exp, detail,
    detail_id, hash)
SELECT seq, time_ms, kind, outcome, reason, actor_id, system_id, owners_id, grant_id,
    CASE WHEN jti GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
        THEN unhex(replace(jti, '-', '')) ELSE jti END,
    CASE WHEN request_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
        THEN unhex(replace(request_id, '-', '')) ELSE request_id END,
    source_id, attestation_issuer_id, subject_id,
    CASE WHEN attestation_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
        THEN unhex(replace(attestation_id, '-', '')) ELSE attestation_id END,
    audience_id, scopes_id, iat, exp, detail, detail_id, hash
FROM audit_events
ORDER BY seq;

DROP TABLE audit_events;
ALTER TABLE audit_events_compact RENAME TO audit_events;

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
