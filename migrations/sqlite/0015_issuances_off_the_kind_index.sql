-- Events by kind, without issuances. Nearly every event is a
-- `credential.issued`, so the index spent about 34 bytes per issuance on
-- entries a query for that kind does not need: reading the log in order
-- finds issuances at once. Queries for any other kind name the index's
-- condition too (`kind <> 'credential.issued'`) so it is used.
DROP INDEX audit_by_kind;
CREATE INDEX audit_by_kind ON audit_events (kind, seq) WHERE kind <> 'credential.issued';
