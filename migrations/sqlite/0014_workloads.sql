-- Each workload identity (trusted issuer, subject) is stored once, and a
-- credential names it by id. A workload fetches a credential every few
-- minutes, so its identity, repeated in every credential row and in the
-- index that revocation by workload walks, was about a tenth of the storage
-- per issuance. Workload rows are never deleted: a credential's workload id
-- stays valid for as long as the credential row exists.
CREATE TABLE workloads (
    id      INTEGER PRIMARY KEY,
    issuer  TEXT NOT NULL,                        -- trusted issuer name from config
    subject TEXT NOT NULL,
    UNIQUE (issuer, subject)
) STRICT;

INSERT INTO workloads (issuer, subject)
SELECT DISTINCT issuer, subject FROM credentials ORDER BY issuer, subject;

CREATE TABLE credentials_by_workload_id (
    id             INTEGER PRIMARY KEY,
    jti            TEXT NOT NULL UNIQUE,
    kind           TEXT NOT NULL,
    system_id      TEXT NOT NULL,
    grant_id       TEXT NOT NULL,
    workload_id    INTEGER NOT NULL REFERENCES workloads (id),
    audience       TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    iat            INTEGER NOT NULL,
    exp            INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT,
    secret_hash    TEXT,
    db_role        TEXT,
    role_state     TEXT CHECK (role_state IS NULL OR role_state IN ('live', 'dropping', 'dropped'))
) STRICT;

INSERT INTO credentials_by_workload_id (id, jti, kind, system_id, grant_id, workload_id, audience, scopes, iat, exp,
    revoked_at, revoked_reason, secret_hash, db_role, role_state)
SELECT c.id, c.jti, c.kind, c.system_id, c.grant_id, w.id, c.audience, c.scopes, c.iat, c.exp,
    c.revoked_at, c.revoked_reason, c.secret_hash, c.db_role, c.role_state
FROM credentials c JOIN workloads w ON w.issuer = c.issuer AND w.subject = c.subject
ORDER BY c.id;

DROP TABLE credentials;
ALTER TABLE credentials_by_workload_id RENAME TO credentials;

CREATE INDEX credentials_by_system ON credentials (system_id, exp);
CREATE INDEX credentials_by_system_id ON credentials (system_id, id);
CREATE INDEX credentials_by_workload ON credentials (workload_id);
CREATE UNIQUE INDEX credentials_by_secret_hash ON credentials (secret_hash) WHERE secret_hash IS NOT NULL;
CREATE INDEX credentials_live_roles ON credentials (role_state) WHERE role_state IN ('live', 'dropping');
