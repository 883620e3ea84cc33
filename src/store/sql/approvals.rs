//! Access requests: approvals for sensitive grants.

use super::*;
use crate::domain::approval::{AccessRequest, AccessState};

const COLUMNS: &str = "id, request_key, system_id, grant_id, issuer, subject, principal, asked, state, created_at, \
     expires_at, decided_at, decided_by, reason, approved_until, break_glass, reviewed_at, reviewed_by";

/// A request key taken out of use ([`AccessRequestStore::close_access_request`]).
const CLOSED: &str = ":closed";

fn request_from(row: &DbRow) -> Result<AccessRequest, StoreError> {
    let c = corrupt("access request");
    let time = |column: &str| -> Result<Option<OffsetDateTime>, StoreError> {
        row.try_get::<Option<i64>, _>(column).map_err(corrupt("access request"))?.map(from_ts).transpose()
    };
    let state: String = row.try_get("state").map_err(&c)?;
    let asked: String = row.try_get("asked").map_err(&c)?;
    Ok(AccessRequest {
        id: row.try_get("id").map_err(&c)?,
        request_key: row.try_get("request_key").map_err(&c)?,
        system_id: row.try_get("system_id").map_err(&c)?,
        grant_id: row.try_get("grant_id").map_err(&c)?,
        issuer: row.try_get("issuer").map_err(&c)?,
        subject: row.try_get("subject").map_err(&c)?,
        on_behalf_of: row.try_get("principal").map_err(&c)?,
        asked: serde_json::from_str(&asked).map_err(|e| StoreError::Corrupt(format!("access request asked: {e}")))?,
        state: AccessState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("access request state {state:?}")))?,
        created_at: from_ts(row.try_get("created_at").map_err(&c)?)?,
        expires_at: from_ts(row.try_get("expires_at").map_err(&c)?)?,
        decided_at: time("decided_at")?,
        decided_by: row.try_get("decided_by").map_err(&c)?,
        reason: row.try_get("reason").map_err(&c)?,
        approved_until: time("approved_until")?,
        break_glass: row.try_get("break_glass").map_err(&c)?,
        reviewed_at: time("reviewed_at")?,
        reviewed_by: row.try_get("reviewed_by").map_err(&c)?,
    })
}

async fn by_id(conn: &mut Conn, id: &str) -> Result<Option<AccessRequest>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM access_requests WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(request_from).transpose()
}

/// Whether an issuance under approval `id` may commit at `now`: the
/// approval is still approved and its window open. Read under the write
/// lock, so an approval revoked before the issuance commits stops it.
pub(super) async fn approval_allows(conn: &mut Conn, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT id FROM access_requests WHERE id = $1 AND state = 'approved' AND approved_until > $2")
            .bind(id)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.is_some())
}

/// Records that credential `jti` is issued under approval `id`.
pub(super) async fn link_approval(conn: &mut Conn, id: &str, jti: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO approval_credentials (approval_id, jti) VALUES ($1, $2)")
        .bind(id)
        .bind(jti)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait]
impl AccessRequestStore for Store {
    async fn latest_access_request(&self, key: &str) -> Result<Option<AccessRequest>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM access_requests WHERE request_key = $1 ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(request_from).transpose()
    }

    async fn open_access_request(
        &self,
        request: AccessRequest,
        event: AuditEvent,
        job: Option<JobSpec>,
    ) -> Result<AccessRequest, StoreError> {
        write_tx(self, move |tx| {
            Box::pin(async move {
                let open = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM access_requests WHERE request_key = $1 \
                     AND state IN ('pending', 'approved') ORDER BY created_at DESC, id DESC LIMIT 1"
                ))
                .bind(&request.request_key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
                if let Some(row) = open {
                    let existing = request_from(&row)?;
                    if existing.waiting(event.time) || existing.allows(event.time) {
                        return Ok(existing);
                    }
                }
                let asked = serde_json::to_string(&request.asked).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO access_requests (id, request_key, system_id, grant_id, issuer, subject, principal, \
                     asked, state, created_at, expires_at, break_glass) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11)",
                )
                .bind(&request.id)
                .bind(&request.request_key)
                .bind(&request.system_id)
                .bind(&request.grant_id)
                .bind(&request.issuer)
                .bind(&request.subject)
                .bind(&request.on_behalf_of)
                .bind(asked)
                .bind(ts(request.created_at))
                .bind(ts(request.expires_at))
                .bind(false)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                insert_event(tx, &event).await.map_err(unavailable)?;
                if let Some(job) = &job {
                    lifecycle::enqueue(tx, job, ts(event.time)).await?;
                }
                Ok(request)
            })
        })
        .await
    }

    async fn access_request(&self, id: &str) -> Result<Option<AccessRequest>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        by_id(&mut conn, id).await
    }

    async fn access_requests(&self, state: Option<AccessState>, limit: i64) -> Result<Vec<AccessRequest>, StoreError> {
        let filter = if state.is_some() { "WHERE state = $2" } else { "" };
        let sql = format!("SELECT {COLUMNS} FROM access_requests {filter} ORDER BY created_at DESC, id DESC LIMIT $1");
        let mut query = sqlx::query(&sql).bind(limit);
        if let Some(state) = state {
            query = query.bind(state.as_str());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(request_from).collect()
    }

    async fn decide_access_request(
        &self,
        id: &str,
        from: &[AccessState],
        decision: AccessDecision,
        events: Vec<AuditEvent>,
        jobs: Vec<JobSpec>,
    ) -> Result<Option<AccessRequest>, StoreError> {
        let id = id.to_owned();
        let from: Vec<&'static str> = from.iter().map(|s| s.as_str()).collect();
        write_tx(self, move |tx| {
            Box::pin(async move {
                let Some(current) = by_id(tx, &id).await? else { return Ok(None) };
                if !from.contains(&current.state.as_str()) {
                    return Ok(None);
                }
                sqlx::query(
                    "UPDATE access_requests SET state = $1, decided_at = $2, decided_by = $3, reason = $4, \
                     approved_until = $5, break_glass = $6 WHERE id = $7",
                )
                .bind(decision.state.as_str())
                .bind(ts(decision.at))
                .bind(&decision.by)
                .bind(&decision.reason)
                .bind(decision.approved_until.map(ts))
                .bind(decision.break_glass || current.break_glass)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                for event in &events {
                    insert_event(tx, event).await.map_err(unavailable)?;
                }
                for job in &jobs {
                    lifecycle::enqueue(tx, job, ts(decision.at)).await?;
                }
                by_id(tx, &id).await
            })
        })
        .await
    }

    async fn close_access_request(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE access_requests SET request_key = request_key || '{CLOSED}' WHERE id = $1 \
             AND request_key NOT LIKE '%{CLOSED}'"
        ))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn review_access_request(
        &self,
        id: &str,
        by: &str,
        at: OffsetDateTime,
        event: AuditEvent,
    ) -> Result<bool, StoreError> {
        let (id, by) = (id.to_owned(), by.to_owned());
        write_tx(self, move |tx| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE access_requests SET reviewed_at = $1, reviewed_by = $2 \
                     WHERE id = $3 AND break_glass = $4 AND reviewed_at IS NULL",
                )
                .bind(ts(at))
                .bind(&by)
                .bind(&id)
                .bind(true)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected();
                if done == 1 {
                    insert_event(tx, &event).await.map_err(unavailable)?;
                }
                Ok(done == 1)
            })
        })
        .await
    }

    async fn unreviewed_access(&self) -> Result<Vec<AccessRequest>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM access_requests WHERE break_glass = $1 AND reviewed_at IS NULL \
             ORDER BY created_at, id"
        ))
        .bind(true)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(request_from).collect()
    }

    async fn approval_credentials(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT jti FROM approval_credentials WHERE approval_id = $1 ORDER BY jti")
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(rows.into_iter().map(|(jti,)| jti).collect())
    }
}
