-- Owners, systems and grants: the governed units.
CREATE TABLE owners (
    id             TEXT PRIMARY KEY NOT NULL,
    display_name   TEXT NOT NULL,
    email          TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('active', 'departed')),
    attested_until INTEGER NOT NULL,           -- unix seconds
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE systems (
    id                  TEXT PRIMARY KEY NOT NULL,
    name                TEXT NOT NULL,
    purpose             TEXT NOT NULL,
    business_owner      TEXT NOT NULL REFERENCES owners (id),
    technical_owner     TEXT NOT NULL REFERENCES owners (id),
    tier                TEXT NOT NULL CHECK (tier IN ('sandbox', 'pilot', 'production')),
    state               TEXT NOT NULL CHECK (state IN ('active', 'suspended', 'retired')),
    pilot_ends_at       INTEGER,                -- unix seconds
    data_classification TEXT,
    suspended_reason    TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
) STRICT;

CREATE TABLE grants (
    id             TEXT PRIMARY KEY NOT NULL,
    system_id      TEXT NOT NULL REFERENCES systems (id),
    issuer         TEXT NOT NULL,               -- trusted issuer name from config
    subject        TEXT NOT NULL,               -- exact subject or 'prefix/*'
    audiences      TEXT NOT NULL,               -- JSON array
    scopes         TEXT NOT NULL,               -- JSON array
    default_scopes TEXT NOT NULL,               -- JSON array
    kinds          TEXT NOT NULL,               -- JSON array
    max_ttl        INTEGER NOT NULL,            -- seconds
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) STRICT;
CREATE INDEX grants_by_issuer ON grants (issuer);

-- One row per issued credential. Integer row ids keep inserts appending;
-- jti values are UUIDv7, so their index grows in time order too.
CREATE TABLE credentials (
    id             INTEGER PRIMARY KEY,
    jti            TEXT NOT NULL UNIQUE,
    kind           TEXT NOT NULL,
    system_id      TEXT NOT NULL,
    grant_id       TEXT NOT NULL,
    issuer         TEXT NOT NULL,
    subject        TEXT NOT NULL,
    audience       TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    iat            INTEGER NOT NULL,
    exp            INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT
) STRICT;
CREATE INDEX credentials_by_system ON credentials (system_id, exp);

-- Single-use attestations: the primary key is what rejects a replay, so two
-- concurrent uses of one token cannot both succeed.
CREATE TABLE attestation_uses (
    issuer     TEXT NOT NULL,
    token_id   TEXT NOT NULL,
    expires_at INTEGER NOT NULL,                -- keep until then (token exp + leeway)
    PRIMARY KEY (issuer, token_id)
) STRICT, WITHOUT ROWID;

-- Append-only record of every decision. Never holds a token, secret or key.
CREATE TABLE audit_events (
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
    detail             TEXT                     -- JSON object
) STRICT;
CREATE INDEX audit_by_system ON audit_events (system_id, seq);
CREATE INDEX audit_by_jti ON audit_events (jti);

CREATE TABLE admin_tokens (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'auditor', 'introspector')),
    token_hash BLOB NOT NULL UNIQUE,            -- SHA-256 of the token
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
