-- Signing keys live in the database, sealed under the key-encryption key,
-- so every replica signs with the same keys and publishes the same JWKS.
CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY,
    alg        TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    sealed     TEXT NOT NULL
);
