-- Chain hashes are stored as their 32 bytes instead of 64 hex characters,
-- and an event's prev_hash is no longer stored: it is its predecessor's
-- hash, and is read from there. The hashes, and so every signed
-- checkpoint, stay as they were. A value that is not a hash (altered by
-- hand) becomes NULL, which verification reports.
ALTER TABLE audit_events DROP COLUMN prev_hash;
ALTER TABLE audit_events ALTER COLUMN hash TYPE bytea
    USING CASE WHEN hash ~ '^[0-9a-f]{64}$' THEN decode(hash, 'hex') END;
