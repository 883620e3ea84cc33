-- A credential's grant, audience, scopes and iat repeat its issuance
-- event's: they may now be NULL, meaning "as in the `credential.issued`
-- event with this jti", and the broker stores them only where they differ.
-- Existing rows keep theirs; nothing is rewritten.
ALTER TABLE credentials
    ALTER COLUMN grant_id DROP NOT NULL,
    ALTER COLUMN audience DROP NOT NULL,
    ALTER COLUMN scopes DROP NOT NULL,
    ALTER COLUMN iat DROP NOT NULL;
