-- Access requests: an exchange under a grant that needs a person's
-- approval waits for one (src/broker/approvals.rs). One row per request;
-- its state moves pending → approved | denied | expired, and approved →
-- revoked. `request_key` names what was asked (workload, grant, targets,
-- scopes, kind), so asking again while a request is open finds it.
CREATE TABLE access_requests (
    id               TEXT PRIMARY KEY,
    request_key      TEXT NOT NULL,
    system_id        TEXT NOT NULL,
    grant_id         TEXT NOT NULL,
    issuer           TEXT NOT NULL,
    subject          TEXT NOT NULL,
    principal        TEXT,                       -- on whose behalf (delegation), issuer and subject
    asked            TEXT NOT NULL,              -- JSON: audiences, scopes, kind
    state            TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'revoked')),
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,           -- a pending request lapses then
    decided_at       BIGINT,
    decided_by       TEXT,                       -- the deciding person, as events name actors
    reason           TEXT,
    approved_until   BIGINT,
    break_glass      BOOLEAN NOT NULL DEFAULT false,
    reviewed_at      BIGINT,
    reviewed_by      TEXT
);
CREATE INDEX access_requests_by_key ON access_requests (request_key, created_at);
CREATE INDEX access_requests_open ON access_requests (state) WHERE state IN ('pending', 'approved');
CREATE INDEX access_requests_unreviewed ON access_requests (created_at) WHERE break_glass AND reviewed_at IS NULL;

-- Credentials issued under an approval, so that revoking the approval
-- revokes them. Written in the issuance's own transaction.
CREATE TABLE approval_credentials (
    approval_id TEXT NOT NULL REFERENCES access_requests (id),
    jti         TEXT NOT NULL,
    PRIMARY KEY (approval_id, jti)
);

-- A grant's approval rule (JSON: approvers, max_duration, allow_owner_approval);
-- NULL: no approval needed.
ALTER TABLE grants ADD COLUMN approval TEXT;

-- A person's groups at sign-in (a JSON list), for grants whose approvers
-- are groups.
ALTER TABLE sessions ADD COLUMN groups TEXT NOT NULL DEFAULT '[]';
