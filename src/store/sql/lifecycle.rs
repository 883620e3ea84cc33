//! Systems, owners, grants, revocation epochs, jobs and notices.
//!
//! Every operator write runs in one write transaction (see `begin_write`)
//! together with its audit event. Writers commit one at a time, so an epoch
//! read as `MAX(credentials.id)` inside such a transaction covers exactly the
//! credentials committed before it: none can slip in between.

use super::*;
use sqlx::pool::PoolConnection;

use crate::domain::lifecycle::SystemView;

/// Runs `work` inside a write transaction on a pool connection.
pub(super) async fn write_tx<T, F>(store: &Store, work: F) -> Result<T, StoreError>
where
    F: for<'c> FnOnce(
        &'c mut Conn,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'c>>,
{
    let mut conn: PoolConnection<Db> = store.pool.acquire().await.map_err(unavailable)?;
    Backend::begin_write(&mut conn).await.map_err(unavailable)?;
    let result = work(&mut conn).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = sqlx::query(end).execute(&mut *conn).await.map_err(unavailable);
    match (result, ended) {
        (Ok(v), Ok(_)) => {
            // Any of these writes may change what the catalog view holds;
            // drop it before the caller hears of the commit.
            store.cache.catalog_changed();
            Ok(v)
        }
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    }
}

fn system_view_from(row: &DbRow) -> Result<SystemView, StoreError> {
    let grants: i64 = row.try_get("grant_count").map_err(corrupt("system"))?;
    Ok(SystemView {
        system: system_from(row)?,
        business_owner: owner_from(row, "bo_")?,
        technical_owner: owner_from(row, "to_")?,
        grants: usize::try_from(grants).unwrap_or(0),
    })
}

fn system_query(filter: &str) -> String {
    format!(
        "SELECT {SYSTEM_COLUMNS}, (SELECT COUNT(*) FROM grants g WHERE g.system_id = s.id) AS grant_count \
         FROM systems s {SYSTEM_JOINS} {filter} ORDER BY s.id"
    )
}

pub(super) async fn enqueue(conn: &mut Conn, job: &JobSpec, now: i64) -> Result<(), StoreError> {
    let payload = serde_json::to_string(job).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO jobs (kind, payload, state, attempts, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, 'pending', 0, $3, $4, $5)",
    )
    .bind(job.kind())
    .bind(payload)
    .bind(now)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Raises the epoch of `target` to the newest credential id, counts the
/// active credentials that covers, and queues the row-marking job. For a
/// system this reads and deletes its count buckets (one per distinct expiry
/// second) and writes two rows, whatever the number of credentials.
pub(super) async fn raise_epoch(
    conn: &mut Conn,
    target: &RevokeTarget,
    reason: &str,
    now: OffsetDateTime,
) -> Result<RevocationOutcome, StoreError> {
    let (through,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM credentials")
        .fetch_one(&mut *conn)
        .await
        .map_err(unavailable)?;
    let revoked: i64 = match target {
        RevokeTarget::System { system_id } => {
            let found: Option<(String,)> = sqlx::query_as("SELECT id FROM systems WHERE id = $1")
                .bind(system_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(unavailable)?;
            if found.is_none() {
                return Err(StoreError::NotFound(format!("system {system_id} does not exist")));
            }
            // Everything still counted for the system is covered: credentials
            // revoked one by one or by workload were taken off already.
            let (count,): (i64,) = sqlx::query_as(
                "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM credential_counts WHERE system_id = $1 AND exp > $2",
            )
            .bind(system_id)
            .bind(ts(now))
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable)?;
            sqlx::query("DELETE FROM credential_counts WHERE system_id = $1")
                .bind(system_id)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            sqlx::query("UPDATE systems SET revoked_through = $1 WHERE id = $2")
                .bind(through)
                .bind(system_id)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            count
        }
        RevokeTarget::Workload { issuer, subject } => {
            let old: Option<(i64,)> =
                sqlx::query_as("SELECT revoked_through FROM workload_revocations WHERE issuer = $1 AND subject = $2")
                    .bind(issuer)
                    .bind(subject)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(unavailable)?;
            let old = old.map_or(0, |(o,)| o);
            let covered: Vec<(String, i64, i64)> = sqlx::query_as(COVERED_BY_WORKLOAD)
                .bind(issuer)
                .bind(subject)
                .bind(ts(now))
                .bind(old)
                .bind(through)
                .fetch_all(&mut *conn)
                .await
                .map_err(unavailable)?;
            uncount(conn, &covered).await?;
            let count = covered.iter().map(|(_, _, n)| n).sum();
            sqlx::query(
                "INSERT INTO workload_revocations (issuer, subject, revoked_through) VALUES ($1, $2, $3) \
                 ON CONFLICT (issuer, subject) DO UPDATE SET revoked_through = excluded.revoked_through",
            )
            .bind(issuer)
            .bind(subject)
            .bind(through)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            count
        }
        RevokeTarget::Grant { system_id, grant_id, workloads } => {
            let mut count = 0;
            // Two binds and the workloads' ids per statement, well under
            // either database's limit.
            for chunk in workloads.chunks(1000) {
                let mut q = QueryBuilder::<Db>::new(COVERED_BY_GRANT);
                q.push_bind(system_id).push(" AND c.exp > ").push_bind(ts(now));
                q.push(" AND c.id <= ").push_bind(through).push(" AND c.workload_id IN (");
                let mut ids = q.separated(", ");
                for id in chunk {
                    ids.push_bind(*id);
                }
                q.push(") GROUP BY c.system_id, c.exp");
                let covered: Vec<(String, i64, i64)> =
                    q.build_query_as().fetch_all(&mut *conn).await.map_err(unavailable)?;
                uncount(conn, &covered).await?;
                count += covered.iter().map(|(_, _, n)| n).sum::<i64>();
                let mut upsert = QueryBuilder::<Db>::new(
                    "INSERT INTO grant_revocations (system_id, workload_id, revoked_through, grant_id) ",
                );
                upsert.push_values(chunk, |mut row, id| {
                    row.push_bind(system_id).push_bind(*id).push_bind(through).push_bind(grant_id);
                });
                upsert.push(
                    " ON CONFLICT (system_id, workload_id) DO UPDATE SET revoked_through = excluded.revoked_through, \
                     grant_id = excluded.grant_id",
                );
                upsert.build().execute(&mut *conn).await.map_err(unavailable)?;
                // One row-marking job per chunk, so each binds a bounded
                // list of workloads.
                let target = RevokeTarget::Grant {
                    system_id: system_id.clone(),
                    grant_id: grant_id.clone(),
                    workloads: chunk.to_vec(),
                };
                let job = JobSpec::MarkRevoked { target, through, after: 0, reason: reason.to_owned(), at: ts(now) };
                enqueue(conn, &job, ts(now)).await?;
            }
            return Ok(RevocationOutcome { revoked: u64::try_from(count).unwrap_or(0) });
        }
    };
    let job =
        JobSpec::MarkRevoked { target: target.clone(), through, after: 0, reason: reason.to_owned(), at: ts(now) };
    enqueue(conn, &job, ts(now)).await?;
    Ok(RevocationOutcome { revoked: u64::try_from(revoked).unwrap_or(0) })
}

/// Takes revoked credentials off their (system, expiry) count buckets.
async fn uncount(conn: &mut Conn, covered: &[(String, i64, i64)]) -> Result<(), StoreError> {
    // Three binds per bucket, well under either database's limit.
    for chunk in covered.chunks(1000) {
        let mut q = QueryBuilder::<Db>::new("UPDATE credential_counts SET n = credential_counts.n - d.n FROM (");
        for (i, (system, exp, n)) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(" UNION ALL ");
            }
            q.push("SELECT ").push_bind(system).push(" AS system_id, ").push_bind(exp);
            q.push(" AS exp, ").push_bind(n).push(" AS n");
        }
        q.push(") AS d WHERE credential_counts.system_id = d.system_id AND credential_counts.exp = d.exp");
        q.build().execute(&mut *conn).await.map_err(unavailable)?;
    }
    Ok(())
}

/// The active credentials of workload (`$1`, `$2`), or acting on its
/// behalf, at `$3` with ids in (`$4`, `$5`], counted per (system, expiry)
/// bucket.
pub(crate) const COVERED_BY_WORKLOAD: &str = concat!(
    "SELECT c.system_id, c.exp, COUNT(*) FROM credentials c JOIN systems s ON s.id = c.system_id ",
    workload_joins!(),
    " WHERE (c.workload_id = (SELECT id FROM workloads WHERE issuer = $1 AND subject = $2) \
     OR c.principal_id = (SELECT id FROM workloads WHERE issuer = $1 AND subject = $2)) \
     AND c.exp > $3 AND c.id > $4 AND c.id <= $5 AND ",
    not_revoked!(),
    " GROUP BY c.system_id, c.exp"
);

/// The start of the query counting the still-active credentials a grant's
/// revocation covers, per (system, expiry) bucket; followed by the system
/// id, then the expiry, epoch and workload conditions.
const COVERED_BY_GRANT: &str = concat!(
    "SELECT c.system_id, c.exp, COUNT(*) FROM credentials c JOIN systems s ON s.id = c.system_id ",
    workload_joins!(),
    " WHERE ",
    not_revoked!(),
    " AND c.system_id = "
);

/// Database logins to drop at `$1`: revoked (one by one, or by system,
/// workload or grant epoch), expired, or of a system no longer active. The
/// repeated `role_state IN (...)` term is the partial index's own
/// condition, which SQLite needs spelled out to use the index rather than
/// scan every credential. (A login is never delegated: no principal.)
pub(crate) const DUE_LOGINS: &str = "FROM credentials c JOIN systems s ON s.id = c.system_id \
     JOIN workloads k ON k.id = c.workload_id \
     LEFT JOIN workload_revocations w ON w.issuer = k.issuer AND w.subject = k.subject \
     LEFT JOIN grant_revocations gr ON gr.system_id = c.system_id AND gr.workload_id = c.workload_id \
     WHERE c.role_state IN ('live', 'dropping') AND c.role_state = 'live' \
     AND (c.revoked_at IS NOT NULL OR c.exp <= $1 OR c.id <= s.revoked_through \
     OR c.id <= COALESCE(w.revoked_through, 0) OR c.id <= COALESCE(gr.revoked_through, 0) \
     OR s.state <> 'active') ORDER BY c.id";

fn with_count(mut event: AuditEvent, outcome: &RevocationOutcome) -> AuditEvent {
    let mut detail = match event.detail.take() {
        Some(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    detail.insert("revoked".into(), serde_json::json!(outcome.revoked));
    event.detail = Some(serde_json::Value::Object(detail));
    event
}

fn job_from(row: &DbRow) -> Result<Job, StoreError> {
    let payload: String = row.try_get("payload").map_err(corrupt("job"))?;
    Ok(Job {
        id: row.try_get("id").map_err(corrupt("job"))?,
        kind: row.try_get("kind").map_err(corrupt("job"))?,
        spec: serde_json::from_str(&payload).ok(),
        state: row.try_get("state").map_err(corrupt("job"))?,
        attempts: row.try_get("attempts").map_err(corrupt("job"))?,
        next_attempt_at: from_ts(row.try_get("next_attempt_at").map_err(corrupt("job"))?)?,
        last_error: row.try_get("last_error").map_err(corrupt("job"))?,
        created_at: from_ts(row.try_get("created_at").map_err(corrupt("job"))?)?,
    })
}

#[async_trait]
impl LifecycleStore for Store {
    async fn list_systems(&self) -> Result<Vec<SystemView>, StoreError> {
        let rows = sqlx::query(&system_query("")).fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(system_view_from).collect()
    }

    async fn system(&self, id: &SystemId) -> Result<Option<SystemView>, StoreError> {
        let row = sqlx::query(&system_query("WHERE s.id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(system_view_from).transpose()
    }

    async fn revoke(
        &self,
        target: &RevokeTarget,
        reason: &str,
        event: AuditEvent,
    ) -> Result<RevocationOutcome, StoreError> {
        let target = target.clone();
        let reason = reason.to_owned();
        write_tx(self, move |conn| {
            Box::pin(async move {
                let outcome = raise_epoch(conn, &target, &reason, event.time).await?;
                insert_event(conn, &with_count(event, &outcome)).await.map_err(unavailable)?;
                Ok(outcome)
            })
        })
        .await
    }

    async fn list_owners(&self) -> Result<Vec<Owner>, StoreError> {
        let rows = sqlx::query(
            "SELECT id AS o_id, display_name AS o_display_name, email AS o_email, status AS o_status, \
             attested_until AS o_attested_until FROM owners ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(|r| owner_from(r, "o_")).collect()
    }

    async fn owner(&self, id: &OwnerId) -> Result<Option<Owner>, StoreError> {
        let row = sqlx::query(
            "SELECT id AS o_id, display_name AS o_display_name, email AS o_email, status AS o_status, \
             attested_until AS o_attested_until FROM owners WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(|r| owner_from(r, "o_")).transpose()
    }

    async fn grants(&self, system: &SystemId) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {GRANT_COLUMNS} FROM grants g WHERE g.system_id = $1 ORDER BY g.id"))
            .bind(system.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(grant_from).collect()
    }

    async fn active_credentials_by_system(&self, now: OffsetDateTime) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query_as(
            "SELECT system_id, CAST(SUM(n) AS BIGINT) FROM credential_counts WHERE exp > $1 \
             GROUP BY system_id HAVING SUM(n) > 0 ORDER BY system_id",
        )
        .bind(ts(now))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }

    async fn outstanding_credentials(
        &self,
        system: &SystemId,
        now: OffsetDateTime,
    ) -> Result<Vec<CredentialSummary>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT c.jti, c.kind, {ISSUED_TERMS}, k.issuer, k.subject, c.exp \
             FROM credentials c JOIN systems s ON s.id = c.system_id {WORKLOAD_JOINS} {ISSUED_EVENT} \
             WHERE c.system_id = $1 AND c.exp > $2 AND {NOT_REVOKED} \
             ORDER BY c.id LIMIT 10000",
        ))
        .bind(system.as_str())
        .bind(ts(now))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let get = |c: &str| -> Result<String, StoreError> { r.try_get(c).map_err(corrupt("credential")) };
                Ok(CredentialSummary {
                    jti: r.try_get::<StoredId<'static>, _>("jti").map_err(corrupt("credential"))?.into_string(),
                    kind: get("kind")?,
                    grant_id: get("grant_id")?,
                    issuer: get("issuer")?,
                    subject: get("subject")?,
                    audience: get("audience")?,
                    scopes: get("scopes")?,
                    iat: from_ts(r.try_get("iat").map_err(corrupt("credential"))?)?,
                    exp: from_ts(r.try_get("exp").map_err(corrupt("credential"))?)?,
                })
            })
            .collect()
    }

    async fn record_notice(
        &self,
        notice: &Notice,
        event: AuditEvent,
        job: Option<JobSpec>,
    ) -> Result<bool, StoreError> {
        let notice = notice.clone();
        write_tx(self, move |conn| {
            Box::pin(async move {
                let inserted = sqlx::query(
                    "INSERT INTO notices (kind, subject_id, due_at, message, created_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (kind, subject_id, due_at) DO NOTHING",
                )
                .bind(&notice.kind)
                .bind(&notice.subject_id)
                .bind(ts(notice.due_at))
                .bind(&notice.message)
                .bind(ts(notice.created_at))
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?
                .rows_affected();
                if inserted == 0 {
                    return Ok(false);
                }
                insert_event(conn, &event).await.map_err(unavailable)?;
                if let Some(job) = &job {
                    enqueue(conn, job, ts(notice.created_at)).await?;
                }
                Ok(true)
            })
        })
        .await
    }

    async fn list_notices(&self, since: OffsetDateTime) -> Result<Vec<Notice>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, subject_id, due_at, message, created_at FROM notices WHERE created_at >= $1 ORDER BY due_at, id",
        )
        .bind(ts(since))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(Notice {
                    kind: r.try_get("kind").map_err(corrupt("notice"))?,
                    subject_id: r.try_get("subject_id").map_err(corrupt("notice"))?,
                    due_at: from_ts(r.try_get("due_at").map_err(corrupt("notice"))?)?,
                    message: r.try_get("message").map_err(corrupt("notice"))?,
                    created_at: from_ts(r.try_get("created_at").map_err(corrupt("notice"))?)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl JobStore for Store {
    async fn due_jobs(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, payload, state, attempts, next_attempt_at, last_error, created_at FROM jobs \
             WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $2",
        )
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(job_from).collect()
    }

    async fn queue_login_drops(&self, now: OffsetDateTime) -> Result<usize, StoreError> {
        let at = ts(now);
        // Checked first outside a write transaction: most passes find
        // nothing, and then take no write lock at all.
        let any: Option<(i64,)> = sqlx::query_as(&format!("SELECT c.id {DUE_LOGINS} LIMIT 1"))
            .bind(at)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        if any.is_none() {
            return Ok(0);
        }
        write_tx(self, move |conn| {
            Box::pin(async move {
                let due: Vec<(i64, StoredId<'static>, String, String)> =
                    sqlx::query_as(&format!("SELECT c.id, c.jti, c.kind, c.db_role {DUE_LOGINS} LIMIT 500"))
                        .bind(at)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(unavailable)?;
                for (id, jti, kind, role) in &due {
                    let backend = kind.strip_prefix("postgres:").unwrap_or(kind).to_owned();
                    let job = JobSpec::DropLogin { backend, role: role.clone(), jti: jti.0.to_string() };
                    enqueue(conn, &job, at).await?;
                    sqlx::query("UPDATE credentials SET role_state = 'dropping' WHERE id = $1")
                        .bind(id)
                        .execute(&mut *conn)
                        .await
                        .map_err(unavailable)?;
                }
                Ok(due.len())
            })
        })
        .await
    }

    async fn job_stats(&self, failing_after: i64) -> Result<Vec<JobStat>, StoreError> {
        let rows: Vec<(String, bool, i64)> = sqlx::query_as(
            "SELECT kind, attempts >= $1 AS failing, COUNT(*) FROM jobs WHERE state = 'pending' GROUP BY kind, attempts >= $1",
        )
        .bind(failing_after)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows.into_iter().map(|(kind, failing, count)| JobStat { kind, failing, count }).collect())
    }

    async fn login_dropped(&self, jti: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE credentials SET role_state = 'dropped' WHERE jti = $1")
            .bind(StoredId::of(jti))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn kept_login_roles(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT db_role FROM credentials WHERE role_state IN ('live', 'dropping')")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    async fn job_done(&self, id: i64, now: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET state = 'done', attempts = attempts + 1, last_error = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(ts(now))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn job_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(error)
        .bind(ts(retry_at))
        .bind(ts(now))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn list_jobs(&self, include_done: bool) -> Result<Vec<Job>, StoreError> {
        let filter = if include_done { "" } else { "WHERE state = 'pending'" };
        let rows = sqlx::query(&format!(
            "SELECT id, kind, payload, state, attempts, next_attempt_at, last_error, created_at FROM jobs {filter} \
             ORDER BY id DESC LIMIT 1000"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(job_from).collect()
    }

    async fn mark_revoked(
        &self,
        target: &RevokeTarget,
        through: i64,
        after: i64,
        reason: &str,
        at: i64,
        limit: u32,
    ) -> Result<Option<i64>, StoreError> {
        // Walk the covered rows in id order from the cursor, so each pass
        // resumes where the last stopped instead of rescanning.
        let window = |q: &mut QueryBuilder<'_, Db>| {
            q.push("SELECT id FROM credentials WHERE ");
            match target {
                RevokeTarget::System { system_id } => {
                    q.push("system_id = ").push_bind(system_id.clone());
                }
                RevokeTarget::Workload { issuer, subject } => {
                    // Its own credentials, and those acting on its behalf.
                    for (i, column) in ["workload_id", "principal_id"].into_iter().enumerate() {
                        q.push(if i == 0 { "(" } else { " OR " }).push(column);
                        q.push(" = (SELECT id FROM workloads WHERE issuer = ").push_bind(issuer.clone());
                        q.push(" AND subject = ").push_bind(subject.clone()).push(")");
                    }
                    q.push(")");
                }
                RevokeTarget::Grant { system_id, workloads, .. } => {
                    q.push("system_id = ").push_bind(system_id.clone()).push(" AND workload_id IN (");
                    let mut ids = q.separated(", ");
                    for id in workloads.iter().chain(workloads.is_empty().then_some(&0)) {
                        ids.push_bind(*id);
                    }
                    q.push(")");
                }
            }
            q.push(" AND id > ").push_bind(after).push(" AND id <= ").push_bind(through);
            q.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
        };
        let mut last = QueryBuilder::<Db>::new("SELECT MAX(id) FROM (");
        window(&mut last);
        last.push(") AS w");
        let (last,): (Option<i64>,) = last.build_query_as().fetch_one(&self.pool).await.map_err(unavailable)?;
        let Some(last) = last else { return Ok(None) };
        let mut update = QueryBuilder::<Db>::new("UPDATE credentials SET revoked_at = ");
        update.push_bind(at).push(", revoked_reason = ").push_bind(reason.to_owned());
        update.push(" WHERE revoked_at IS NULL AND id IN (");
        window(&mut update);
        update.push(")");
        update.build().execute(&self.pool).await.map_err(unavailable)?;
        Ok(Some(last))
    }

    async fn job_continue(&self, id: i64, spec: &JobSpec, now: OffsetDateTime) -> Result<(), StoreError> {
        let payload = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query("UPDATE jobs SET payload = $1, next_attempt_at = $2, updated_at = $3 WHERE id = $4")
            .bind(payload)
            .bind(ts(now))
            .bind(ts(now))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
