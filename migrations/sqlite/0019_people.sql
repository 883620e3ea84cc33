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

-- Owners linked to the people who sign in: when a person's verified email
-- is an owner's, the owner is that person (issuer and subject at the
-- people provider) from then on, whatever either email becomes later.
-- Separation of duties and approvals compare on the link too.
CREATE TABLE owner_people (
    owner_id     TEXT NOT NULL REFERENCES owners (id),
    issuer       TEXT NOT NULL,
    subject      TEXT NOT NULL,
    linked_at    INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    PRIMARY KEY (owner_id, issuer, subject)
) STRICT;
CREATE INDEX owner_people_by_person ON owner_people (issuer, subject);
