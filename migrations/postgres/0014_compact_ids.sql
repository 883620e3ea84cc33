-- Credential, request and attestation ids go from text to bytea: a UUID
-- in canonical form (lower-case, hyphenated), as the broker mints them, is
-- kept as its 16 bytes instead of 36 characters; any other id as its
-- text's UTF-8 bytes, preceded by a 0xFF byte (never part of UTF-8) when
-- those are themselves 16 bytes long, so that 16 bytes always mean a UUID.
-- The broker reads each back as the text it was given, which the audit
-- chain hashes cover. This rewrites both tables and their indexes.

-- The stored form of an id, for looking one up by hand:
--   SELECT * FROM audit_events WHERE jti = halflife_id('0190…');
CREATE FUNCTION halflife_id(id text) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN uuid_send(id::uuid)
        WHEN octet_length(id) = 16 THEN '\xff'::bytea || convert_to(id, 'UTF8')
        ELSE convert_to(id, 'UTF8')
    END
$$;

-- The id a stored form holds, as text:
--   SELECT halflife_id_text(jti), kind FROM audit_events ORDER BY seq DESC LIMIT 10;
CREATE FUNCTION halflife_id_text(id bytea) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN octet_length(id) = 16 THEN encode(id, 'hex')::uuid::text
        WHEN octet_length(id) = 0 THEN ''
        WHEN get_byte(id, 0) = 255 THEN convert_from(substring(id FROM 2), 'UTF8')
        ELSE convert_from(id, 'UTF8')
    END
$$;

ALTER TABLE credentials ALTER COLUMN jti TYPE bytea USING halflife_id(jti);

ALTER TABLE audit_events
    ALTER COLUMN jti TYPE bytea USING halflife_id(jti),
    ALTER COLUMN request_id TYPE bytea USING halflife_id(request_id),
    ALTER COLUMN attestation_id TYPE bytea USING halflife_id(attestation_id);

-- Replicas drop a revoked credential from their index by its text.
CREATE OR REPLACE FUNCTION halflife_credential_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('halflife_changes', 'jti ' || halflife_id_text(NEW.jti));
    RETURN NULL;
END;
$$;
