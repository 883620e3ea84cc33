-- Revocation epochs: a credential whose row id is at or below its system's
-- (or its workload's) epoch is inactive. Raising an epoch is one write, however
-- many credentials it covers; background jobs then mark the rows.
ALTER TABLE systems ADD COLUMN revoked_through INTEGER NOT NULL DEFAULT 0;

CREATE TABLE workload_revocations (
    issuer          TEXT NOT NULL,
    subject         TEXT NOT NULL,
    revoked_through INTEGER NOT NULL,
    PRIMARY KEY (issuer, subject)
) STRICT, WITHOUT ROWID;

CREATE INDEX credentials_by_workload ON credentials (issuer, subject);

-- Durable work that must survive restarts: marking revoked rows, destroying
-- downstream secrets, delivering notices. Retried with backoff until done.
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,              -- JSON
    state           TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;
CREATE INDEX jobs_due ON jobs (state, next_attempt_at);

-- Lifecycle notices (pilot ending, attestation expiring, owner lapsed), each
-- recorded once per subject and deadline.
CREATE TABLE notices (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    due_at     INTEGER NOT NULL,
    message    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (kind, subject_id, due_at)
) STRICT;
