//! Admin tokens and signing keys.

use super::*;

#[async_trait]
impl AdminTokenStore for Store {
    async fn create_admin_token(
        &self,
        record: AdminTokenRecord,
        hash: [u8; 32],
        event: AuditEvent,
    ) -> Result<(), StoreError> {
        write_tx(self, move |tx| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO admin_tokens (id, name, role, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&record.id)
                .bind(&record.name)
                .bind(&record.role)
                .bind(hash.as_slice())
                .bind(ts(event.time))
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                insert_event(tx, &event).await.map_err(unavailable)
            })
        })
        .await
    }

    async fn admin_token_by_hash(&self, hash: [u8; 32]) -> Result<Option<AdminTokenRecord>, StoreError> {
        // A token the view lacks may have been created by another process
        // a moment ago (`halflife admin token create`): ask the database.
        if self.cache.trusted()
            && let Some(record) = self.snapshot().await?.admin_tokens.get(&hash)
        {
            return Ok(Some(record.clone()));
        }
        let row = sqlx::query(
            "SELECT id, name, role, token_hash FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash.as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let stored: Vec<u8> = row.try_get("token_hash").map_err(corrupt("admin token"))?;
        // The lookup is by hash; compare again in constant time so no code
        // path decides on a secret-derived value with early exit.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(stored.as_slice(), hash.as_slice())) {
            return Ok(None);
        }
        Ok(Some(AdminTokenRecord {
            id: row.try_get("id").map_err(corrupt("admin token"))?,
            name: row.try_get("name").map_err(corrupt("admin token"))?,
            role: row.try_get("role").map_err(corrupt("admin token"))?,
        }))
    }
}

#[async_trait]
impl KeyStore for Store {
    async fn signing_keys(&self) -> Result<Vec<crate::keys::SealedKey>, StoreError> {
        let rows: Vec<(String, String, i64, String, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT kid, alg, created_at, sealed, activates_at, retired_at FROM signing_keys ORDER BY created_at, kid",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|(kid, alg, created_at, sealed, activates_at, retired_at)| {
                Ok(crate::keys::SealedKey {
                    kid,
                    alg,
                    created_at: from_ts(created_at)?,
                    sealed,
                    activates_at: activates_at.map(from_ts).transpose()?,
                    retired_at: retired_at.map(from_ts).transpose()?,
                })
            })
            .collect()
    }

    async fn retire_signing_key(&self, kid: &str, at: OffsetDateTime, event: AuditEvent) -> Result<bool, StoreError> {
        let kid = kid.to_owned();
        write_tx(self, move |conn| {
            Box::pin(async move {
                let retired =
                    sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE kid = $2 AND retired_at IS NULL")
                        .bind(ts(at))
                        .bind(&kid)
                        .execute(&mut *conn)
                        .await
                        .map_err(unavailable)?
                        .rows_affected();
                if retired > 0 {
                    insert_event(conn, &event).await.map_err(unavailable)?;
                }
                Ok(retired > 0)
            })
        })
        .await
    }

    async fn add_signing_key(
        &self,
        key: &crate::keys::SealedKey,
        only_if_alg_absent: bool,
        event: AuditEvent,
    ) -> Result<bool, StoreError> {
        let key = key.clone();
        write_tx(self, move |conn| {
            Box::pin(async move {
                if only_if_alg_absent {
                    let found: Option<(String,)> =
                        sqlx::query_as("SELECT kid FROM signing_keys WHERE alg = $1 AND retired_at IS NULL")
                            .bind(&key.alg)
                            .fetch_optional(&mut *conn)
                            .await
                            .map_err(unavailable)?;
                    if found.is_some() {
                        return Ok(false);
                    }
                }
                let inserted = sqlx::query(
                    "INSERT INTO signing_keys (kid, alg, created_at, sealed, activates_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kid) DO NOTHING",
                )
                .bind(&key.kid)
                .bind(&key.alg)
                .bind(ts(key.created_at))
                .bind(&key.sealed)
                .bind(key.activates_at.map(ts))
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?
                .rows_affected();
                if inserted > 0 {
                    insert_event(conn, &event).await.map_err(unavailable)?;
                }
                Ok(inserted > 0)
            })
        })
        .await
    }
}
