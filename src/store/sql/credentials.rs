//! Policy reads, issuance and credential lookup, revocation.

use super::*;

#[async_trait]
impl PolicyStore for Store {
    async fn grants_for_issuer(&self, issuer: &str) -> Result<Arc<Vec<GrantContext>>, StoreError> {
        if self.cache.trusted() {
            return Ok(self.snapshot().await?.grants_by_issuer.get(issuer).cloned().unwrap_or_default());
        }
        let sql = format!(
            "SELECT {GRANT_COLUMNS}, {SYSTEM_COLUMNS} \
             FROM grants g JOIN systems s ON s.id = g.system_id {SYSTEM_JOINS} WHERE g.issuer = $1"
        );
        let rows = sqlx::query(&sql).bind(issuer).fetch_all(&self.pool).await.map_err(unavailable)?;
        let grants = rows
            .iter()
            .map(|row| {
                Ok(GrantContext {
                    grant: grant_from(row)?,
                    system: system_from(row)?,
                    business_owner: owner_from(row, "bo_")?,
                    technical_owner: owner_from(row, "to_")?,
                    grant_version: row.try_get("g_version").map_err(corrupt("grant"))?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Arc::new(grants))
    }
}

#[async_trait]
impl IssuanceLog for Store {
    fn commit_durations(&self) -> Option<Histogram> {
        Some(self.commits.clone())
    }

    async fn record_issuance(&self, issuance: Issuance) -> Result<IssueOutcome, StoreError> {
        match self.submit(WriteOp::Issue(Box::new(issuance))).await? {
            WriteResult::Issue(outcome, _) => Ok(outcome),
            _ => Err(StoreError::Corrupt("writer answered the wrong request".into())),
        }
    }

    async fn record_event(&self, event: AuditEvent) -> Result<(), StoreError> {
        match self.submit(WriteOp::Event(Box::new(event))).await? {
            WriteResult::Event => Ok(()),
            _ => Err(StoreError::Corrupt("writer answered the wrong request".into())),
        }
    }

    async fn revoke_credential(&self, jti: &str, reason: &str, event: AuditEvent) -> Result<bool, StoreError> {
        let op = WriteOp::Revoke { jti: jti.to_owned(), reason: reason.to_owned(), event: Box::new(event) };
        match self.submit(op).await? {
            WriteResult::Revoke(done) => Ok(done),
            _ => Err(StoreError::Corrupt("writer answered the wrong request".into())),
        }
    }
}

#[async_trait]
impl CredentialStore for Store {
    async fn credential(&self, jti: &str) -> Result<Option<CredentialRecord>, StoreError> {
        if !self.cache.trusted() {
            return self.credential_from_db(jti).await;
        }
        let snapshot = self.snapshot().await?;
        let found = match self.cache.lookup(jti) {
            Some(found) => found,
            None => match self.index_from_db(jti).await? {
                Some(found) => found,
                None => return Ok(None),
            },
        };
        match record_from(jti, &found, &snapshot) {
            Some(record) => Ok(Some(record)),
            // A system newer than the snapshot: read it all.
            None => self.credential_from_db(jti).await,
        }
    }

    async fn secret_credential(&self, hash: &str) -> Result<Option<StoredSecret>, StoreError> {
        type Row = (StoredId<'static>, String, String, String, String, String, String, i64, i64);
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT c.jti, c.secret_hash, c.system_id, k.subject, {ISSUED_TERMS}, c.exp \
             FROM credentials c JOIN workloads k ON k.id = c.workload_id {ISSUED_EVENT} WHERE c.secret_hash = $1",
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.map(|(jti, secret_hash, system_id, subject, _grant, audience, scopes, iat, exp)| StoredSecret {
            jti: jti.into_string(),
            secret_hash,
            system_id,
            subject,
            audience,
            scopes,
            iat,
            exp,
        }))
    }

    async fn prune_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM attestation_uses WHERE expires_at < $1")
            .bind(ts(now))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        sqlx::query("DELETE FROM credential_counts WHERE exp <= $1")
            .bind(ts(now))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}
