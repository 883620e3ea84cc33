//! Health, and loading the in-memory views (catalog snapshot,
//! credential index).

use super::*;

#[async_trait]
impl Health for Store {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(unavailable)?;
        Ok(())
    }
}

/// Loads the catalog view in one read transaction, so its parts agree.
pub(super) async fn load_snapshot(pool: &DbPool) -> Result<Snapshot, StoreError> {
    let mut tx = pool.begin_with(Backend::SNAPSHOT_BEGIN).await.map_err(unavailable)?;
    let mut snapshot = Snapshot::default();
    let sql = format!("SELECT {SYSTEM_COLUMNS}, s.revoked_through AS s_revoked_through FROM systems s {SYSTEM_JOINS}");
    for row in sqlx::query(&sql).fetch_all(&mut *tx).await.map_err(unavailable)? {
        let system = system_from(&row)?;
        let entry = SystemEntry {
            revoked_through: row.try_get("s_revoked_through").map_err(corrupt("system"))?,
            business_owner: owner_from(&row, "bo_")?,
            technical_owner: owner_from(&row, "to_")?,
            system,
        };
        snapshot.systems.insert(entry.system.id.to_string(), entry);
    }
    let grants = sqlx::query(&format!("SELECT {GRANT_COLUMNS} FROM grants g ORDER BY g.id"))
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
    let mut by_issuer: HashMap<String, Vec<GrantContext>> = HashMap::new();
    for row in &grants {
        let grant = grant_from(row)?;
        let system = snapshot
            .systems
            .get(grant.system.as_str())
            .ok_or_else(|| StoreError::Corrupt(format!("grant {} names a missing system", grant.id)))?;
        by_issuer.entry(grant.issuer.clone()).or_default().push(GrantContext {
            system: system.system.clone(),
            business_owner: system.business_owner.clone(),
            technical_owner: system.technical_owner.clone(),
            grant_version: row.try_get("g_version").map_err(corrupt("grant"))?,
            grant,
        });
    }
    snapshot.grants_by_issuer = by_issuer.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
    let workloads: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT issuer, subject, revoked_through FROM workload_revocations")
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
    snapshot.workloads = workloads.into_iter().map(|(i, s, r)| ((i, s), r)).collect();
    let by_grants: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT r.system_id, k.issuer, k.subject, r.revoked_through FROM grant_revocations r \
         JOIN workloads k ON k.id = r.workload_id",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    snapshot.grant_epochs = by_grants.into_iter().map(|(system, i, s, r)| ((system, i, s), r)).collect();
    /// id, name, role, token hash, expiry.
    type AdminTokenRow = (String, String, String, Vec<u8>, Option<i64>);
    let tokens: Vec<AdminTokenRow> =
        sqlx::query_as("SELECT id, name, role, token_hash, expires_at FROM admin_tokens WHERE revoked_at IS NULL")
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
    for (id, name, role, hash, expires_at) in tokens {
        let hash: [u8; 32] =
            hash.try_into().map_err(|_| StoreError::Corrupt(format!("admin token {id}: hash is not 32 bytes")))?;
        let expires_at = expires_at.map(from_ts).transpose()?;
        snapshot.admin_tokens.insert(hash, AdminTokenRecord { id, name, role, expires_at });
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(snapshot)
}

#[async_trait]
impl Views for Store {
    async fn reconcile(&self, now: OffsetDateTime) -> Result<(), StoreError> {
        let (revision,): (i64,) = sqlx::query_as("SELECT revision FROM changes WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        self.cache.polled(revision);
        // A scan of every indexed credential: kept off the async workers.
        let cache = Arc::clone(&self.cache);
        let at = ts(now);
        let _ = tokio::task::spawn_blocking(move || cache.prune(at)).await;
        if self.cache.begin_warming() {
            tokio::spawn(warm_index(self.pool.clone(), Arc::clone(&self.cache), ts(now)));
        }
        Ok(())
    }
}

/// What the credential index keeps of a row, as [`INDEX_COLUMNS`] reads it.
pub(super) type IndexRow =
    (i64, StoredId<'static>, String, String, String, i64, Option<i64>, Option<String>, Option<String>);
/// Followed by `WHERE`: the columns are those of `c` (credentials).
pub(super) const INDEX_COLUMNS: &str = "c.id, c.jti, c.system_id, k.issuer, k.subject, c.exp, c.revoked_at, pk.issuer, pk.subject \
     FROM credentials c JOIN workloads k ON k.id = c.workload_id LEFT JOIN workloads pk ON pk.id = c.principal_id";

pub(super) fn indexed(row: &IndexRow) -> IndexedCredential<'_> {
    let (id, jti, system, issuer, subject, exp, revoked_at, principal_issuer, principal_subject) = row;
    IndexedCredential {
        jti: &jti.0,
        id: *id,
        exp: *exp,
        revoked_at: *revoked_at,
        system,
        issuer,
        subject,
        principal: principal_issuer.as_deref().zip(principal_subject.as_deref()),
    }
}

/// Loads every unexpired credential into the index, a page at a time in id
/// order, so introspecting a token issued before this process started (or
/// by another replica) reads no rows. Runs in the background: until it is
/// done, lookups it has not reached read the database, as they would
/// anyway. A page that raced with a revocation is read again.
pub(super) async fn warm_index(pool: DbPool, cache: Arc<Cache>, now: i64) {
    let started = std::time::Instant::now();
    let (mut after, mut loaded) = (0i64, 0usize);
    let page_size = i64::try_from(crate::store::cache::WARM_PAGE).unwrap_or(1_000);
    loop {
        if !cache.trusted() {
            return;
        }
        let epoch = cache.epoch();
        let sql = format!("SELECT {INDEX_COLUMNS} WHERE c.id > $1 AND c.exp > $2 ORDER BY c.id LIMIT $3");
        let rows: Vec<IndexRow> =
            match sqlx::query_as(&sql).bind(after).bind(now).bind(page_size).fetch_all(&pool).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, loaded, "loading the credential index failed; will retry");
                    cache.warming_failed();
                    return;
                }
            };
        let Some(last) = rows.last().map(|r| r.0) else { break };
        let page: Vec<IndexedCredential<'_>> = rows.iter().map(indexed).collect();
        match cache.index_page(&page, epoch) {
            Indexed::All => {
                after = last;
                loaded += page.len();
            }
            Indexed::Stale => {}
            Indexed::Full => {
                tracing::warn!(
                    loaded,
                    "credential index is full; introspection of further credentials reads the database"
                );
                break;
            }
        }
    }
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(credentials = loaded, elapsed_ms, "credential index loaded");
}
