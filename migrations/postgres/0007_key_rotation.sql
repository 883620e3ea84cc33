-- Key rotation: a key is published when stored, signs from activates_at
-- (NULL: from created_at, as before rotation existed) and is withdrawn from
-- the JWKS, and no longer verifies anything, from retired_at.
ALTER TABLE signing_keys ADD COLUMN activates_at BIGINT;
ALTER TABLE signing_keys ADD COLUMN retired_at BIGINT;
