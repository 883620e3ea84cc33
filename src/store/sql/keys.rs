//! Automation (admin) tokens, people's sessions and signing keys.

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
                    "INSERT INTO admin_tokens (id, name, role, token_hash, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&record.id)
                .bind(&record.name)
                .bind(&record.role)
                .bind(hash.as_slice())
                .bind(ts(event.time))
                .bind(record.expires_at.map(ts))
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
            "SELECT id, name, role, token_hash, expires_at FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
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
            expires_at: row
                .try_get::<Option<i64>, _>("expires_at")
                .map_err(corrupt("admin token"))?
                .map(from_ts)
                .transpose()?,
        }))
    }

    async fn admin_tokens(&self) -> Result<Vec<AdminTokenListing>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.id, t.name, t.role, t.created_at, t.expires_at, t.revoked_at, u.last_used_at \
             FROM admin_tokens t LEFT JOIN admin_token_uses u ON u.token_id = t.id \
             ORDER BY t.created_at DESC, t.id DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let time = |row: &DbRow, column: &str| -> Result<Option<OffsetDateTime>, StoreError> {
            row.try_get::<Option<i64>, _>(column).map_err(corrupt("admin token"))?.map(from_ts).transpose()
        };
        rows.iter()
            .map(|row| {
                Ok(AdminTokenListing {
                    id: row.try_get("id").map_err(corrupt("admin token"))?,
                    name: row.try_get("name").map_err(corrupt("admin token"))?,
                    role: row.try_get("role").map_err(corrupt("admin token"))?,
                    created_at: from_ts(row.try_get("created_at").map_err(corrupt("admin token"))?)?,
                    expires_at: time(row, "expires_at")?,
                    last_used_at: time(row, "last_used_at")?,
                    revoked_at: time(row, "revoked_at")?,
                })
            })
            .collect()
    }

    async fn revoke_admin_token(&self, id: &str, event: AuditEvent) -> Result<bool, StoreError> {
        revoke_row(self, "admin_tokens", id, event).await
    }

    async fn admin_token_used(&self, id: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO admin_token_uses (token_id, last_used_at) VALUES ($1, $2) \
             ON CONFLICT (token_id) DO UPDATE SET last_used_at = excluded.last_used_at",
        )
        .bind(id)
        .bind(ts(at))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

/// Marks row `id` of `table` (`admin_tokens` or `sessions`) revoked, with
/// its event; `false` if there is no such row or it already was.
async fn revoke_row(store: &Store, table: &'static str, id: &str, event: AuditEvent) -> Result<bool, StoreError> {
    let id = id.to_owned();
    write_tx(store, move |tx| {
        Box::pin(async move {
            let revoked =
                sqlx::query(&format!("UPDATE {table} SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL"))
                    .bind(ts(event.time))
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?
                    .rows_affected()
                    == 1;
            if revoked {
                insert_event(tx, &event).await.map_err(unavailable)?;
            }
            Ok(revoked)
        })
    })
    .await
}

const SESSION_COLUMNS: &str = "id, issuer, subject, email, name, roles, groups, created_at, expires_at, revoked_at";

fn session_from(row: &DbRow) -> Result<SessionRecord, StoreError> {
    let roles: String = row.try_get("roles").map_err(corrupt("session"))?;
    Ok(SessionRecord {
        id: row.try_get("id").map_err(corrupt("session"))?,
        issuer: row.try_get("issuer").map_err(corrupt("session"))?,
        subject: row.try_get("subject").map_err(corrupt("session"))?,
        email: row.try_get("email").map_err(corrupt("session"))?,
        name: row.try_get("name").map_err(corrupt("session"))?,
        roles: roles.split_whitespace().map(str::to_owned).collect(),
        groups: serde_json::from_str(&row.try_get::<String, _>("groups").map_err(corrupt("session"))?)
            .unwrap_or_default(),
        created_at: from_ts(row.try_get("created_at").map_err(corrupt("session"))?)?,
        expires_at: from_ts(row.try_get("expires_at").map_err(corrupt("session"))?)?,
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")
            .map_err(corrupt("session"))?
            .map(from_ts)
            .transpose()?,
    })
}

#[async_trait]
impl SessionStore for Store {
    async fn create_session(
        &self,
        record: SessionRecord,
        hash: [u8; 32],
        event: AuditEvent,
        owners: Vec<String>,
    ) -> Result<(), StoreError> {
        write_tx(self, move |tx| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO sessions (id, token_hash, issuer, subject, email, name, roles, created_at, expires_at, \
                     groups) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&record.id)
                .bind(hash.as_slice())
                .bind(&record.issuer)
                .bind(&record.subject)
                .bind(&record.email)
                .bind(&record.name)
                .bind(record.roles.join(" "))
                .bind(ts(record.created_at))
                .bind(ts(record.expires_at))
                .bind(serde_json::to_string(&record.groups).map_err(|e| StoreError::Corrupt(e.to_string()))?)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                for owner in &owners {
                    sqlx::query(
                        "INSERT INTO owner_people (owner_id, issuer, subject, linked_at, last_seen_at) \
                         VALUES ($1, $2, $3, $4, $4) ON CONFLICT (owner_id, issuer, subject) \
                         DO UPDATE SET last_seen_at = excluded.last_seen_at",
                    )
                    .bind(owner)
                    .bind(&record.issuer)
                    .bind(&record.subject)
                    .bind(ts(record.created_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                }
                insert_event(tx, &event).await.map_err(unavailable)
            })
        })
        .await
    }

    async fn owners_of_person(&self, issuer: &str, subject: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT owner_id FROM owner_people WHERE issuer = $1 AND subject = $2 ORDER BY owner_id")
                .bind(issuer)
                .bind(subject)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn people_of_owner(&self, owner: &str) -> Result<Vec<OwnerPerson>, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT issuer, subject, linked_at, last_seen_at FROM owner_people WHERE owner_id = $1 \
             ORDER BY linked_at, subject",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|(issuer, subject, linked, seen)| {
                Ok(OwnerPerson { issuer, subject, linked_at: from_ts(linked)?, last_seen_at: from_ts(seen)? })
            })
            .collect()
    }

    async fn session_by_hash(&self, hash: [u8; 32]) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS}, token_hash FROM sessions WHERE token_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(hash.as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let stored: Vec<u8> = row.try_get("token_hash").map_err(corrupt("session"))?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(stored.as_slice(), hash.as_slice())) {
            return Ok(None);
        }
        session_from(&row).map(Some)
    }

    async fn sessions(
        &self,
        now: OffsetDateTime,
        person: Option<(&str, &str)>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let filter = if person.is_some() { " AND issuer = $2 AND subject = $3" } else { "" };
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE revoked_at IS NULL AND expires_at > $1{filter} \
             ORDER BY created_at DESC, id DESC"
        );
        let mut query = sqlx::query(&sql).bind(ts(now));
        if let Some((issuer, subject)) = person {
            query = query.bind(issuer).bind(subject);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(session_from).collect()
    }

    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(session_from).transpose()
    }

    async fn revoke_session(&self, id: &str, event: AuditEvent) -> Result<bool, StoreError> {
        revoke_row(self, "sessions", id, event).await
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
