//! Catalog writes (owners, systems, grants): one transaction per change,
//! holding the database-wide write lock from its first read to its commit,
//! so the state the caller decides on (`state`) is the state its writes
//! change. The rules live in `domain::catalog`; here rows are only read and
//! written.

use super::*;
use sqlx::Transaction;

use crate::domain::catalog::CatalogState;

use super::lifecycle::raise_epoch;

/// An open catalog transaction (see `CatalogStore`).
pub(super) struct Tx {
    tx: Transaction<'static, Db>,
    cache: Arc<Cache>,
    /// The change's time: rows record it as their creation or update.
    now: i64,
}

#[async_trait]
impl CatalogStore for Store {
    async fn begin_catalog(&self, now: OffsetDateTime) -> Result<Box<dyn CatalogTx>, StoreError> {
        let tx = self.pool.begin_with(Backend::BEGIN_WRITE).await.map_err(unavailable)?;
        Ok(Box::new(Tx { tx, cache: Arc::clone(&self.cache), now: ts(now) }))
    }
}

fn json_text(items: impl Iterator<Item = String>) -> String {
    serde_json::to_string(&items.collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

/// Fails with `NotFound` when an UPDATE changed no row.
fn one_row(done: u64, what: impl FnOnce() -> String) -> Result<(), StoreError> {
    if done == 0 { Err(StoreError::NotFound(what())) } else { Ok(()) }
}

#[async_trait]
impl CatalogTx for Tx {
    async fn state(&mut self) -> Result<CatalogState, StoreError> {
        let conn = &mut *self.tx;
        let mut state = CatalogState::default();
        let owners = sqlx::query(
            "SELECT id AS o_id, display_name AS o_display_name, email AS o_email, status AS o_status, \
             attested_until AS o_attested_until FROM owners",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        for row in &owners {
            let owner = owner_from(row, "o_")?;
            state.owners.insert(owner.id.clone(), owner);
        }
        let systems = sqlx::query(&format!("SELECT {SYSTEM_FIELDS} FROM systems s"))
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?;
        for row in &systems {
            let system = system_from(row)?;
            state.systems.insert(system.id.clone(), system);
        }
        let grants = sqlx::query(&format!("SELECT {GRANT_COLUMNS} FROM grants g"))
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?;
        for row in &grants {
            let grant = grant_from(row)?;
            state.grants.insert(grant.id.clone(), grant);
        }
        Ok(state)
    }

    async fn put_owner(&mut self, owner: &Owner, insert: bool) -> Result<(), StoreError> {
        let now = self.now;
        let sql = if insert {
            "INSERT INTO owners (display_name, email, status, attested_until, created_at, updated_at, id) \
             VALUES ($1, $2, $3, $4, $5, $5, $6)"
        } else {
            "UPDATE owners SET display_name = $1, email = $2, status = $3, attested_until = $4, updated_at = $5 \
             WHERE id = $6"
        };
        let done = sqlx::query(sql)
            .bind(&owner.display_name)
            .bind(&owner.email)
            .bind(owner.status.as_str())
            .bind(ts(owner.attested_until))
            .bind(now)
            .bind(owner.id.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        one_row(done, || format!("owner {} does not exist", owner.id))
    }

    async fn put_system(&mut self, system: &System, insert: bool) -> Result<(), StoreError> {
        let now = self.now;
        let sql = if insert {
            "INSERT INTO systems (name, purpose, business_owner, technical_owner, tier, state, pilot_ends_at, \
             data_classification, suspended_reason, tier_started_at, created_at, updated_at, id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12)"
        } else {
            "UPDATE systems SET name = $1, purpose = $2, business_owner = $3, technical_owner = $4, tier = $5, \
             state = $6, pilot_ends_at = $7, data_classification = $8, suspended_reason = $9, tier_started_at = $10, \
             updated_at = $11, version = version + 1 WHERE id = $12"
        };
        let done = sqlx::query(sql)
            .bind(&system.name)
            .bind(&system.purpose)
            .bind(system.business_owner.as_str())
            .bind(system.technical_owner.as_str())
            .bind(system.tier.as_str())
            .bind(system.state.as_str())
            .bind(system.pilot_ends_at.map(ts))
            .bind(&system.data_classification)
            .bind(&system.suspended_reason)
            .bind(ts(system.tier_started_at))
            .bind(now)
            .bind(system.id.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        one_row(done, || format!("system {} does not exist", system.id))
    }

    async fn put_grant(&mut self, grant: &Grant, insert: bool) -> Result<(), StoreError> {
        let now = self.now;
        let sql = if insert {
            "INSERT INTO grants (system_id, issuer, subject, audiences, scopes, default_scopes, kinds, max_ttl, \
             binding, max_audiences, on_behalf_of, created_at, updated_at, id, approval) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13, $14)"
        } else {
            "UPDATE grants SET system_id = $1, issuer = $2, subject = $3, audiences = $4, scopes = $5, \
             default_scopes = $6, kinds = $7, max_ttl = $8, binding = $9, max_audiences = $10, on_behalf_of = $11, \
             updated_at = $12, version = version + 1, approval = $14 WHERE id = $13"
        };
        let done = sqlx::query(sql)
            .bind(grant.system.as_str())
            .bind(&grant.issuer)
            .bind(grant.subject.to_string())
            .bind(json_text(grant.audiences.iter().map(ToString::to_string)))
            .bind(json_text(grant.scopes.to_vec().into_iter()))
            .bind(json_text(grant.default_scopes.to_vec().into_iter()))
            .bind(json_text(grant.kinds.iter().map(ToString::to_string)))
            .bind(i64::try_from(grant.max_ttl.as_secs()).unwrap_or(i64::MAX))
            .bind(grant.binding.as_str())
            .bind(i64::from(grant.max_audiences))
            .bind(serde_json::to_string(&grant.on_behalf_of).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            .bind(now)
            .bind(grant.id.as_str())
            .bind(
                grant
                    .approval
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            )
            .execute(&mut *self.tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        one_row(done, || format!("grant {} does not exist", grant.id))
    }

    async fn delete_grant(&mut self, grant: &Grant) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM grants WHERE id = $1 AND system_id = $2")
            .bind(grant.id.as_str())
            .bind(grant.system.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        one_row(done, || format!("system {} has no grant {}", grant.system, grant.id))
    }

    async fn revoke_system(
        &mut self,
        system: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<RevocationOutcome, StoreError> {
        let target = RevokeTarget::System { system_id: system.to_owned() };
        raise_epoch(&mut self.tx, &target, reason, now).await
    }

    async fn revoke_grant(
        &mut self,
        grant: &Grant,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<RevocationOutcome, StoreError> {
        // The workload identities it covers among those that ever held a
        // credential: the others hold nothing to revoke.
        let known: Vec<(i64, String)> = sqlx::query_as("SELECT id, subject FROM workloads WHERE issuer = $1")
            .bind(&grant.issuer)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(unavailable)?;
        let workloads: Vec<i64> =
            known.into_iter().filter(|(_, subject)| grant.subject.matches(subject)).map(|(id, _)| id).collect();
        if workloads.is_empty() {
            return Ok(RevocationOutcome::default());
        }
        let target =
            RevokeTarget::Grant { system_id: grant.system.to_string(), grant_id: grant.id.to_string(), workloads };
        raise_epoch(&mut self.tx, &target, reason, now).await
    }

    async fn event(&mut self, event: &AuditEvent) -> Result<(), StoreError> {
        insert_event(&mut self.tx, event).await.map_err(unavailable)
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let Tx { tx, cache, .. } = *self;
        tx.commit().await.map_err(unavailable)?;
        // The views drop what they hold of the catalog before the caller
        // hears of the commit.
        cache.catalog_changed();
        Ok(())
    }
}
