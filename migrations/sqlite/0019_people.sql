-- People sign in with the organisation's identity provider and hold a
-- short-lived session (src/broker/people.rs). Only the token's SHA-256 is
-- kept. Sessions are read from the database on every use (never cached),
-- so a revocation takes effect on every replica at once.
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    email      TEXT,
    name       TEXT,
    roles      TEXT NOT NULL,                   -- space-separated
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
CREATE INDEX sessions_by_person ON sessions (issuer, subject);
CREATE INDEX sessions_by_expiry ON sessions (expires_at) WHERE revoked_at IS NULL;

-- Automation tokens (admin tokens) expire; tokens created before expiry
-- existed keep none until they are revoked.
ALTER TABLE admin_tokens ADD COLUMN expires_at INTEGER;

-- When each automation token was last used, at minute resolution. Apart
-- from admin_tokens so that using a token does not count as a catalog
-- change (admin_tokens' triggers drop every replica's cached views).
CREATE TABLE admin_token_uses (
    token_id     TEXT PRIMARY KEY NOT NULL REFERENCES admin_tokens (id),
    last_used_at INTEGER NOT NULL
) STRICT;
