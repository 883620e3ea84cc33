-- Optimistic concurrency for system changes: every write names the version
-- it read, so a stale copy can never overwrite a newer state (for example
-- undo a suspension).
ALTER TABLE systems ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

-- Revocation jobs walk a system's credentials in id order.
CREATE INDEX credentials_by_system_id ON credentials (system_id, id);
