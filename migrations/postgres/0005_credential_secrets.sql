-- Opaque secrets are stored only as HMAC-SHA256 under a key derived from the
-- key-encryption key, and looked up by it.
ALTER TABLE credentials ADD COLUMN secret_hash TEXT;
CREATE UNIQUE INDEX credentials_by_secret_hash ON credentials (secret_hash) WHERE secret_hash IS NOT NULL;
