-- Dynamic database logins: the role a credential created on its backend, and
-- where its destruction stands (live -> dropping (a drop_login job is queued)
-- -> dropped). NULL for credentials that are not logins.
ALTER TABLE credentials ADD COLUMN db_role TEXT;
ALTER TABLE credentials ADD COLUMN role_state TEXT
    CHECK (role_state IS NULL OR role_state IN ('live', 'dropping', 'dropped'));
CREATE INDEX credentials_live_roles ON credentials (role_state) WHERE role_state IN ('live', 'dropping');
