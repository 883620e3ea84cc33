-- Active credentials per system and expiry second. Revoking a system reports
-- how many credentials it covered by summing its rows here, so the cost
-- follows the number of distinct expiry seconds (at most the longest TTL),
-- not the number of credentials. Issuance adds to a row in the same
-- transaction; revoking one credential or a workload takes from it; revoking
-- a system deletes its rows; rows past their expiry are pruned.
CREATE TABLE credential_counts (
    system_id TEXT NOT NULL,
    exp       BIGINT NOT NULL,   -- unix seconds
    n         BIGINT NOT NULL,
    PRIMARY KEY (system_id, exp)
);

-- Expired rows are carried over too; reads ignore them and pruning removes
-- them, so the result does not depend on the clock at migration time.
INSERT INTO credential_counts (system_id, exp, n)
SELECT c.system_id, c.exp, COUNT(*) FROM credentials c
JOIN systems s ON s.id = c.system_id
LEFT JOIN workload_revocations w ON w.issuer = c.issuer AND w.subject = c.subject
WHERE c.revoked_at IS NULL AND c.id > s.revoked_through AND c.id > COALESCE(w.revoked_through, 0)
GROUP BY c.system_id, c.exp;
