-- Signing keys live in the database, sealed under the key-encryption key,
-- so every replica signs with the same keys and publishes the same JWKS.
-- Key files of earlier versions are imported at start.
CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY NOT NULL,
    alg        TEXT NOT NULL,
    created_at INTEGER NOT NULL,                -- unix seconds
    sealed     TEXT NOT NULL                    -- AES-256-GCM(KEK, PKCS#8), base64url
) STRICT;
