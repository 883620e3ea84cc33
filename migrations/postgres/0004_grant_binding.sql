-- Whether a grant's tokens must be sender-constrained (RFC 8705 / RFC 9449):
-- optional, required, dpop or mtls.
ALTER TABLE grants ADD COLUMN binding TEXT NOT NULL DEFAULT 'optional'
    CHECK (binding IN ('optional', 'required', 'dpop', 'mtls'));
