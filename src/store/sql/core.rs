// The store body shared by both backends, compiled once per backend
// against its concrete sqlx types (`Db`, `Conn`, `DbRow`, `DbPool`,
// `ConnectOpts`) and its dialect hooks (`begin_write`, `CONTAINS_FN`). All SQL
// here is portable between SQLite and PostgreSQL: `$n` placeholders, BIGINT
// integers, `ON CONFLICT`, no backend-specific functions.
//
// Reads use a pool. Writes on the request path go through one writer task
// that owns its own connection and commits whatever has queued up since the
// last commit as one transaction (group commit): each caller is answered only
// after the transaction holding its record is durable. Every write
// transaction starts with `begin_write`, which takes the database-wide write
// lock (SQLite's `BEGIN IMMEDIATE`, a PostgreSQL advisory transaction lock):
// writers, in one process or many, commit one at a time, so row ids and the
// audit chain follow commit order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use sqlx::{ConnectOptions, Row};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use audit::insert_event;
use lifecycle::write_tx;
use sqlx::QueryBuilder;

use crate::domain::model::{Binding, OwnerStatus, SystemState, Tier};
use crate::domain::values::{ScopeSet, SubjectMatch};
use crate::store::cache::{Cache, Found, Indexed, IndexedCredential, Parties, Snapshot, SystemEntry, record_from};

/// Most records committed in one transaction.
const MAX_BATCH: usize = 512;
/// A batch (or the work between two batches) that takes this long is
/// logged: the callers queued behind it all waited.
const SLOW_BATCH: Duration = Duration::from_millis(50);
/// Queue depth in front of the writer; callers wait (backpressure) beyond it.
const QUEUE_DEPTH: usize = 4096;
/// Most workload identities the writer remembers the ids of.
const KNOWN_WORKLOADS: usize = 65_536;
/// Workload identities per INSERT (and read) of those a batch meets first.
const WORKLOADS_PER_STATEMENT: usize = 256;

/// What a failed statement means for its caller. An error the statement
/// itself caused is no outage: a value the database refuses (such as a NUL
/// in PostgreSQL text) is [`StoreError::InvalidValue`], a mistake in the
/// statement [`StoreError::Refused`], a write another one beat to a unique
/// key a [`StoreError::Conflict`] ([`refusal`] tells them apart by SQLSTATE
/// or SQLite result code). Everything else is a failure to reach the
/// database or to have it commit: [`StoreError::Unavailable`], the outage
/// that answers 503 and that operators alert on. Unknown errors stay on
/// that side: no decision is recorded, so none is made.
fn unavailable(e: sqlx::Error) -> StoreError {
    match &e {
        // Another writer got to the key first (the code checks before it
        // writes; only a race gets here).
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(
            "the change conflicts with another made at the same time; read the current state and retry".into(),
        ),
        sqlx::Error::Database(db) => match refusal(db.as_ref()) {
            Some(Refusal::Value) => StoreError::InvalidValue(e.to_string()),
            Some(Refusal::Statement) => StoreError::Refused(e.to_string()),
            None => StoreError::Unavailable(e.to_string()),
        },
        sqlx::Error::Encode(_) => StoreError::InvalidValue(e.to_string()),
        sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => StoreError::Corrupt(e.to_string()),
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::InvalidArgument(_) => StoreError::Refused(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// Why the database refused a statement, when the statement caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A value the statement holds.
    Value,
    /// The statement itself.
    Statement,
}

/// An id column ([`StoredId`]) read back as the text it was given.
fn stored_id(row: &DbRow, column: &str) -> Result<Option<String>, sqlx::Error> {
    Ok(row.try_get::<Option<StoredId<'static>>, _>(column)?.map(StoredId::into_string))
}

fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn from_ts(secs: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| StoreError::Corrupt(format!("timestamp {secs} out of range")))
}

/// Applies pending migrations, or with `auto_migrate = false` refuses to
/// go on while any is pending (production deployments that migrate as a
/// separate step).
async fn prepare_schema(
    pool: &DbPool,
    migrator: &sqlx::migrate::Migrator,
    auto_migrate: bool,
) -> Result<(), StoreError> {
    if auto_migrate {
        return migrator.run(pool).await.map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")));
    }
    // No bookkeeping table means nothing was applied yet.
    let applied: Vec<(i64,)> = sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    let pending: Vec<String> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.iter().any(|(v,)| *v == m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    if pending.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "the database has pending migrations ({}) and database.auto_migrate is false; run `halflife migrate`",
            pending.join(", ")
        )))
    }
}

enum WriteOp {
    Issue(Box<Issuance>),
    Event(Box<AuditEvent>),
    Revoke { jti: String, reason: String, event: Box<AuditEvent> },
    /// Written at a rate that grows with traffic (every so many events),
    /// so it goes through the one writer rather than competing with it
    /// for the database's write lock.
    Checkpoint(Box<crate::audit::Checkpoint>),
}

enum WriteResult {
    /// With the new row's id when committed.
    Issue(IssueOutcome, Option<i64>),
    Event,
    Revoke(bool),
    Checkpoint,
}

struct WriteJob {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteResult, StoreError>>,
}

#[derive(Clone)]
pub struct Store {
    pool: DbPool,
    writer: mpsc::Sender<WriteJob>,
    cache: Arc<Cache>,
    /// Dropped with the last clone of this store, which stops the tasks
    /// that serve it (PostgreSQL's change listener, SQLite's checkpoints).
    lifetime: Arc<tokio::sync::watch::Sender<()>>,
    /// How long the writer's committed batches took (see [`Writer`]).
    commits: Histogram,
}

impl Store {
    /// Starts the writer task on its own connection and seals events
    /// written before the audit chain existed. `trusted`: whether the
    /// in-memory views may be used from the start (see [`Cache`]);
    /// `wal_frames`: see [`Writer`].
    async fn start(
        pool: DbPool,
        options: ConnectOpts,
        busy_timeout: Duration,
        trusted: bool,
        wal_frames: Arc<AtomicU64>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let cache = Arc::new(Cache::new(trusted));
        // 0.1 ms to about 1.6 s.
        let commits = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        let writer = Writer {
            options,
            limit: busy_timeout.max(Duration::from_secs(1)) * 2,
            cache: Arc::clone(&cache),
            wal_frames,
            commits: commits.clone(),
        };
        spawn_writer(writer, rx)?;
        let (lifetime, _) = tokio::sync::watch::channel(());
        let store = Self { pool, writer: tx, cache, lifetime: Arc::new(lifetime), commits };
        store.seal_unhashed().await?;
        Ok(store)
    }

    /// The catalog view, loaded if it is not current.
    async fn snapshot(&self) -> Result<Arc<Snapshot>, StoreError> {
        self.cache.snapshot_or_load(async || load_snapshot(&self.pool).await).await
    }

    /// The full credential record, read from the database.
    async fn credential_from_db(&self, jti: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let sql = format!(
            "SELECT c.id AS c_id, c.jti AS c_jti, c.revoked_at AS c_revoked_at, \
             s.revoked_through AS s_revoked_through, COALESCE(w.revoked_through, 0) AS w_revoked_through, \
             COALESCE(pw.revoked_through, 0) AS pw_revoked_through, COALESCE(gr.revoked_through, 0) AS gr_revoked_through, \
             k.issuer AS k_issuer, k.subject AS k_subject, pk.issuer AS pk_issuer, pk.subject AS pk_subject, {SYSTEM_COLUMNS} \
             FROM credentials c JOIN systems s ON s.id = c.system_id {SYSTEM_JOINS} {WORKLOAD_JOINS} \
             WHERE c.jti = $1"
        );
        let Some(row) =
            sqlx::query(&sql).bind(StoredId::of(jti)).fetch_optional(&self.pool).await.map_err(unavailable)?
        else {
            return Ok(None);
        };
        let revoked_at: Option<i64> = row.try_get("c_revoked_at").map_err(corrupt("credential"))?;
        let get = |column: &str| -> Result<String, StoreError> { row.try_get(column).map_err(corrupt("credential")) };
        let get_opt =
            |column: &str| -> Result<Option<String>, StoreError> { row.try_get(column).map_err(corrupt("credential")) };
        Ok(Some(CredentialRecord {
            jti: row.try_get::<StoredId<'static>, _>("c_jti").map_err(corrupt("credential"))?.into_string(),
            id: row.try_get("c_id").map_err(corrupt("credential"))?,
            revoked_at: revoked_at.map(from_ts).transpose()?,
            system_revoked_through: row.try_get("s_revoked_through").map_err(corrupt("credential"))?,
            workload_revoked_through: row.try_get("w_revoked_through").map_err(corrupt("credential"))?,
            principal_revoked_through: row.try_get("pw_revoked_through").map_err(corrupt("credential"))?,
            grant_revoked_through: row.try_get("gr_revoked_through").map_err(corrupt("credential"))?,
            system: system_from(&row)?,
            business_owner: owner_from(&row, "bo_")?,
            technical_owner: owner_from(&row, "to_")?,
            parties: Arc::new(Parties {
                workload: (get("k_issuer")?, get("k_subject")?),
                principal: get_opt("pk_issuer")?.zip(get_opt("pk_subject")?),
            }),
        }))
    }

    /// Reads one credential's indexable facts and offers them to the index.
    async fn index_from_db(&self, jti: &str) -> Result<Option<Found>, StoreError> {
        let epoch = self.cache.epoch();
        let row: Option<IndexRow> = sqlx::query_as(&format!("SELECT {INDEX_COLUMNS} WHERE c.jti = $1"))
            .bind(StoredId::of(jti))
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let credential = indexed(&row);
        self.cache.index(&credential, Some(epoch));
        let parties = Parties {
            workload: (credential.issuer.to_owned(), credential.subject.to_owned()),
            principal: credential.principal.map(|(i, s)| (i.to_owned(), s.to_owned())),
        };
        Ok(Some(Found {
            id: credential.id,
            revoked_at: credential.revoked_at,
            system: Arc::from(credential.system),
            parties: Arc::new(parties),
        }))
    }

    async fn submit(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer.send(WriteJob { op, reply }).await.map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }
}

/// Starts the group-commit writer on a thread and runtime of its own. On
/// the shared runtime each of a batch's statements waited behind request
/// handlers to be polled again (its wake-ups come from the database
/// driver's thread, so they land in the global queue), which stretched
/// every batch and so every caller's wait. It stops when the last sender
/// is dropped.
fn spawn_writer(writer: Writer, rx: mpsc::Receiver<WriteJob>) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Unavailable(format!("starting the database writer: {e}")))?;
    std::thread::Builder::new()
        .name("halflife-writer".to_owned())
        .spawn(move || runtime.block_on(run_writer(writer, rx)))
        .map_err(|e| StoreError::Unavailable(format!("starting the database writer: {e}")))?;
    Ok(())
}

/// What the group-commit writer works with.
struct Writer {
    options: ConnectOpts,
    /// Longest a batch may take before its callers are answered 503.
    limit: Duration,
    cache: Arc<Cache>,
    /// Frames in SQLite's write-ahead log at the last background
    /// checkpoint; the writer catches up when it is large (`after_batch`).
    wal_frames: Arc<AtomicU64>,
    /// Each committed batch's time, from its first statement to its
    /// commit: the part of an issuance's latency the disk decides.
    commits: Histogram,
}

/// Commits queued writes in batches. A batch that fails, or does not finish
/// within `limit` (a stalled database), fails every caller in it with
/// `Unavailable`, and the writer starts over on a fresh connection.
async fn run_writer(writer: Writer, mut rx: mpsc::Receiver<WriteJob>) {
    let Writer { options, limit, cache, wal_frames, commits } = writer;
    let mut conn: Option<Conn> = None;
    let mut known = Known::default();
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        if conn.is_none() {
            match tokio::time::timeout(limit, options.connect()).await {
                Ok(Ok(c)) => conn = Some(c),
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "connecting timed out".to_owned(),
                    };
                    tracing::error!(%error, "database writer cannot connect");
                    for job in jobs.drain(..) {
                        let _ = job.reply.send(Err(StoreError::Unavailable(error.clone())));
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let ops: Vec<&WriteOp> = jobs.iter().map(|j| &j.op).collect();
        let started = std::time::Instant::now();
        let error = match tokio::time::timeout(limit, write_batch(c, &ops, &mut known)).await {
            Ok(Ok(results)) => {
                let took = started.elapsed();
                commits.observe(took.as_secs_f64());
                if took >= SLOW_BATCH {
                    // Every caller in the batch, and every one queued behind
                    // it, waited this long.
                    tracing::warn!(batch = jobs.len(), took_ms = took.as_millis(), "slow database commit");
                }
                // Committed: the views learn of it before any caller does.
                for (job, result) in jobs.iter().zip(&results) {
                    remember(&cache, &job.op, result);
                }
                known.committed();
                for (job, result) in jobs.drain(..).zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
                let started = std::time::Instant::now();
                if let Err(e) = after_batch(c, &wal_frames).await {
                    tracing::warn!(error = %e, "write-ahead log catch-up failed; will retry");
                }
                let took = started.elapsed();
                if took >= SLOW_BATCH {
                    tracing::warn!(took_ms = took.as_millis(), "slow write-ahead log catch-up");
                }
                continue;
            }
            Ok(Err(e)) => unavailable(e),
            // The commit may or may not have reached the database; the
            // callers get no credential either way.
            Err(_) => StoreError::Unavailable(format!("database write timed out after {limit:?}")),
        };
        // Start over on a fresh connection: the failure may have left this
        // one in an unknown state.
        conn = None;
        known.rolled_back();
        if let StoreError::Unavailable(error) = &error {
            tracing::error!(%error, batch = jobs.len(), "database write failed; nothing in the batch was committed");
        } else if jobs.len() > 1 {
            // Refused for something one of its writes holds, not for want of
            // the database, and stopped before its COMMIT: every write is
            // written again on its own, so that only the one at fault fails
            // and the others are not refused for it.
            tracing::warn!(%error, batch = jobs.len(), "a write of the batch was refused; writing each alone");
            for job in jobs.drain(..) {
                let result = write_alone(&mut conn, &options, limit, &job.op, &mut known, &cache).await;
                let _ = job.reply.send(result);
            }
            continue;
        }
        for job in jobs.drain(..) {
            let _ = job.reply.send(Err(error.clone()));
        }
    }
}

/// Writes one queued write in a transaction of its own, after the batch
/// that held it was refused (see [`run_writer`]).
async fn write_alone(
    conn: &mut Option<Conn>,
    options: &ConnectOpts,
    limit: Duration,
    op: &WriteOp,
    known: &mut Known,
    cache: &Cache,
) -> Result<WriteResult, StoreError> {
    let c = match conn {
        Some(c) => c,
        None => match tokio::time::timeout(limit, options.connect()).await {
            Ok(Ok(c)) => conn.insert(c),
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => return Err(StoreError::Unavailable("connecting timed out".to_owned())),
        },
    };
    let written = match tokio::time::timeout(limit, write_batch(c, &[op], known)).await {
        Ok(Ok(mut results)) => results.pop().ok_or_else(|| StoreError::Corrupt("a write returned no result".into())),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(StoreError::Unavailable(format!("database write timed out after {limit:?}"))),
    };
    match &written {
        Ok(result) => {
            remember(cache, op, result);
            known.committed();
        }
        Err(_) => {
            *conn = None;
            known.rolled_back();
        }
    }
    written
}

/// What the writer remembers of the ids of repeated values, kept only for
/// as long as its batches commit.
#[derive(Default)]
struct Known {
    workloads: KnownWorkloads,
    names: audit::KnownNames,
}

impl Known {
    fn committed(&mut self) {
        self.workloads.committed();
        self.names.committed();
    }

    fn rolled_back(&mut self) {
        self.workloads.rolled_back();
        self.names.rolled_back();
    }
}

/// The row ids of workload identities (`workloads`), as the writer has
/// read or inserted them, so a batch binds its credentials' workload ids
/// and reads or inserts only identities it has not met. Ids of a batch are
/// kept only once it commits. Workload rows are never deleted, so a known
/// id stays right; past `KNOWN_WORKLOADS` identities the map starts over.
#[derive(Default)]
struct KnownWorkloads {
    /// Subject to id, by issuer name.
    ids: HashMap<String, HashMap<String, i64>>,
    len: usize,
    /// Met in the batch being written: known once it commits.
    pending: Vec<(String, String, i64)>,
}

impl KnownWorkloads {
    fn id(&self, issuer: &str, subject: &str) -> Option<i64> {
        self.ids.get(issuer).and_then(|subjects| subjects.get(subject)).copied()
    }

    fn committed(&mut self) {
        for (issuer, subject, id) in std::mem::take(&mut self.pending) {
            if self.len >= KNOWN_WORKLOADS {
                self.ids.clear();
                self.len = 0;
            }
            if self.ids.entry(issuer).or_default().insert(subject, id).is_none() {
                self.len += 1;
            }
        }
    }

    fn rolled_back(&mut self) {
        self.pending.clear();
    }

    /// The row id of each of `identities` (issuer name, subject), in
    /// order: known ones from memory, the others read, after inserting
    /// those not stored yet. Must run inside the batch's write transaction.
    async fn resolve(&mut self, conn: &mut Conn, identities: &[(&str, &str)]) -> Result<Vec<i64>, sqlx::Error> {
        let mut unknown: Vec<(&str, &str)> =
            identities.iter().filter(|(issuer, subject)| self.id(issuer, subject).is_none()).copied().collect();
        unknown.sort_unstable();
        unknown.dedup();
        for chunk in unknown.chunks(WORKLOADS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Db>::new("INSERT INTO workloads (issuer, subject) SELECT column1, column2 FROM (");
            insert.push_values(chunk, |mut row, (issuer, subject)| {
                row.push_bind(*issuer).push_bind(*subject);
            });
            insert.push(
                ") AS v WHERE NOT EXISTS (SELECT 1 FROM workloads k WHERE k.issuer = v.column1 AND k.subject = v.column2) \
                 ON CONFLICT (issuer, subject) DO NOTHING",
            );
            insert.build().execute(&mut *conn).await?;
            let mut read = QueryBuilder::<Db>::new("SELECT k.id, k.issuer, k.subject FROM workloads k JOIN (");
            read.push_values(chunk, |mut row, (issuer, subject)| {
                row.push_bind(*issuer).push_bind(*subject);
            });
            read.push(") AS v ON k.issuer = v.column1 AND k.subject = v.column2");
            let rows: Vec<(i64, String, String)> = read.build_query_as().fetch_all(&mut *conn).await?;
            self.pending.extend(rows.into_iter().map(|(id, issuer, subject)| (issuer, subject, id)));
        }
        let met: HashMap<(&str, &str), i64> =
            self.pending.iter().map(|(issuer, subject, id)| ((issuer.as_str(), subject.as_str()), *id)).collect();
        identities
            .iter()
            .map(|&(issuer, subject)| {
                self.id(issuer, subject)
                    .or_else(|| met.get(&(issuer, subject)).copied())
                    .ok_or_else(|| sqlx::Error::Protocol(format!("identity {subject} of {issuer} was not stored")))
            })
            .collect()
    }

    /// The workload id of each of `issuances` and, for a delegated one, the
    /// id of the identity it acts for.
    async fn resolve_issuances(
        &mut self,
        conn: &mut Conn,
        issuances: &[&Issuance],
    ) -> Result<Vec<(i64, Option<i64>)>, sqlx::Error> {
        let mut identities = Vec::with_capacity(issuances.len());
        for i in issuances {
            identities.push((i.issuer.as_str(), i.subject.as_str()));
            if let Some((issuer, subject)) = &i.principal {
                identities.push((issuer.as_str(), subject.as_str()));
            }
        }
        let mut ids = self.resolve(conn, &identities).await?.into_iter();
        let mut out = Vec::with_capacity(issuances.len());
        for i in issuances {
            let workload = ids.next();
            let principal = if i.principal.is_some() { ids.next() } else { None };
            let workload = workload.ok_or_else(|| sqlx::Error::Protocol("an identity was not resolved".into()))?;
            out.push((workload, principal));
        }
        Ok(out)
    }
}

/// Tells the in-memory views about one committed write.
fn remember(cache: &Cache, op: &WriteOp, result: &WriteResult) {
    match (op, result) {
        (WriteOp::Issue(i), WriteResult::Issue(IssueOutcome::Committed, Some(id))) => cache.index(
            &IndexedCredential {
                jti: &i.jti,
                id: *id,
                exp: ts(i.exp),
                revoked_at: None,
                system: i.system_id.as_str(),
                issuer: &i.issuer,
                subject: &i.subject,
                principal: i.principal.as_ref().map(|(issuer, subject)| (issuer.as_str(), subject.as_str())),
            },
            None,
        ),
        (WriteOp::Revoke { jti, event, .. }, WriteResult::Revoke(true)) => cache.revoked(jti, ts(event.time)),
        _ => {}
    }
}

async fn write_batch(
    conn: &mut Conn,
    ops: &[&WriteOp],
    known: &mut Known,
) -> Result<Vec<WriteResult>, sqlx::Error> {
    if !BATCH_BEGINS_WITH_READ {
        begin_write(conn).await?;
    }
    let applied = apply_ops(conn, ops, known).await;
    if applied.is_err() {
        // Nothing of the batch is committed (its closing statements stop
        // at the first error, before COMMIT).
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    }
    applied
}

/// Statements to run in order, sent to the database as one: SQLite runs
/// them as one multi-statement execution (`ONE_EXECUTION`), which stops at
/// the first failing statement, in one hop to its connection's thread;
/// PostgreSQL, which prepares one statement at a time, runs them as the
/// data-modifying CTEs of one statement, in one round trip.
struct Statements<'a> {
    query: QueryBuilder<'a, Db>,
    count: usize,
    /// Whether one of them is the credential INSERT whose returned ids
    /// `run` reads (PostgreSQL).
    issued: bool,
}

impl<'a> Statements<'a> {
    fn new() -> Self {
        Self { query: QueryBuilder::new(""), count: 0, issued: false }
    }

    /// The next statement, to be written.
    fn next(&mut self) -> &mut QueryBuilder<'a, Db> {
        self.start(None)
    }

    /// The credential INSERT whose `RETURNING jti, id` rows `run` returns
    /// (PostgreSQL; SQLite returns none).
    fn next_issued(&mut self) -> &mut QueryBuilder<'a, Db> {
        self.issued = true;
        self.start(Some("issued"))
    }

    /// Starts a statement; on PostgreSQL a CTE called `name`, or `s<n>`.
    fn start(&mut self, name: Option<&str>) -> &mut QueryBuilder<'a, Db> {
        if ONE_EXECUTION {
            if self.count > 0 {
                self.query.push("; ");
            }
        } else {
            self.query.push(if self.count == 0 { "WITH " } else { "), " });
            match name {
                Some(name) => self.query.push(name),
                None => self.query.push(format_args!("s{}", self.count)),
            };
            self.query.push(" AS (");
        }
        self.count += 1;
        &mut self.query
    }

    async fn run(mut self, conn: &mut Conn) -> Result<Vec<(StoredId<'static>, i64)>, sqlx::Error> {
        if self.count == 0 {
            return Ok(Vec::new());
        }
        if ONE_EXECUTION {
            self.query.build().execute(&mut *conn).await?;
            return Ok(Vec::new());
        }
        self.query.push(if self.issued {
            ") SELECT jti, id FROM issued"
        } else {
            ") SELECT '' AS jti, CAST(0 AS BIGINT) AS id WHERE false"
        });
        self.query.build_query_as().fetch_all(&mut *conn).await
    }
}

/// What a batch reads first, in one statement: the audit chain's head, the
/// largest credential id (where the batch numbers its credentials itself,
/// `EXPLICIT_CREDENTIAL_IDS`), the state of each system it issues for, and
/// the version of each grant it issues under.
struct BatchStart {
    chain: audit::Chain,
    last_credential_id: i64,
    active: HashMap<String, bool>,
    grants: HashMap<String, i64>,
}

impl BatchStart {
    /// Reads the start of a batch; with `BATCH_BEGINS_WITH_READ`, first
    /// opens its write transaction in the same execution.
    async fn read(conn: &mut Conn, systems: &[&str], grants: &[&str]) -> Result<Self, sqlx::Error> {
        let mut q = QueryBuilder::<Db>::new("");
        if BATCH_BEGINS_WITH_READ {
            q.push(BEGIN_WRITE).push("; ");
        }
        q.push(format!(
            "SELECT 0 AS part, seq AS n, {} AS name, NULL AS state \
             FROM (SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1) AS head",
            hash_hex("hash")
        ));
        if EXPLICIT_CREDENTIAL_IDS {
            q.push(" UNION ALL SELECT 1, COALESCE(MAX(id), 0), NULL, NULL FROM credentials");
        }
        if !systems.is_empty() {
            q.push(" UNION ALL SELECT 2, NULL, id, state FROM systems WHERE id IN (");
            let mut ids = q.separated(", ");
            for id in systems {
                ids.push_bind(*id);
            }
            q.push(")");
        }
        if !grants.is_empty() {
            q.push(" UNION ALL SELECT 3, version, id, NULL FROM grants WHERE id IN (");
            let mut ids = q.separated(", ");
            for id in grants {
                ids.push_bind(*id);
            }
            q.push(")");
        }
        // (part, head seq or largest id or grant version, head hash or
        // system or grant id, state)
        type Row = (i32, Option<i64>, Option<String>, Option<String>);
        let rows: Vec<Row> = q.build_query_as().fetch_all(&mut *conn).await?;
        let mut start =
            Self { chain: audit::Chain::empty(), last_credential_id: 0, active: HashMap::new(), grants: HashMap::new() };
        for (part, n, name, state) in rows {
            match (part, n, name) {
                (0, Some(seq), name) => start.chain = audit::Chain::after(seq, name),
                (1, Some(id), _) => start.last_credential_id = id,
                (3, Some(version), Some(id)) => {
                    start.grants.insert(id, version);
                }
                (_, _, Some(id)) => {
                    start.active.insert(id, state.as_deref() == Some("active"));
                }
                _ => {}
            }
        }
        Ok(start)
    }
}

/// Applies one batch inside its transaction, and commits it, with a
/// handful of statements whatever its size: one read (`BatchStart`), then
/// multi-row INSERTs of credentials, count buckets and audit events
/// (chained in batch order) sent as one (`Statements`), and COMMIT, which
/// SQLite runs in the same execution.
/// Only single-use replay guards and revocations take statements of their
/// own.
async fn apply_ops(
    conn: &mut Conn,
    ops: &[&WriteOp],
    known: &mut Known,
) -> Result<Vec<WriteResult>, sqlx::Error> {
    let mut systems: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Issue(i) => Some(i.system_id.as_str()),
            _ => None,
        })
        .collect();
    systems.sort_unstable();
    systems.dedup();
    let mut grants: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Issue(i) => Some(i.grant_id.as_str()),
            _ => None,
        })
        .collect();
    grants.sort_unstable();
    grants.dedup();
    let start = BatchStart::read(conn, &systems, &grants).await?;
    let BatchStart { mut chain, last_credential_id, .. } = start;
    let mut results = Vec::with_capacity(ops.len());
    let mut events: Vec<Cow<'_, AuditEvent>> = Vec::with_capacity(ops.len());
    // (index into `results`, issuance) of each credential to insert.
    let mut issued: Vec<(usize, &Issuance)> = Vec::with_capacity(ops.len());
    for op in ops {
        let result = match op {
            WriteOp::Issue(i) => match admit(conn, i, &start.active, &start.grants).await? {
                Ok(()) => {
                    issued.push((results.len(), i));
                    events.push(Cow::Borrowed(&i.event));
                    WriteResult::Issue(IssueOutcome::Committed, None)
                }
                Err((outcome, denial)) => {
                    events.push(Cow::Owned(denial));
                    WriteResult::Issue(outcome, None)
                }
            },
            WriteOp::Event(event) => {
                events.push(Cow::Borrowed(event));
                WriteResult::Event
            }
            WriteOp::Checkpoint(c) => {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (seq, hash, time, signature) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (seq) DO NOTHING",
                )
                .bind(c.seq)
                .bind(&c.hash)
                .bind(&c.time)
                .bind(&c.signature)
                .execute(&mut *conn)
                .await?;
                WriteResult::Checkpoint
            }
            WriteOp::Revoke { jti, reason, event } => {
                // Its count bucket, if the credential is still active (not
                // already revoked, by itself or by an epoch).
                let bucket: Option<(String, i64)> = sqlx::query_as(ACTIVE_CREDENTIAL)
                .bind(StoredId::of(jti))
                .fetch_optional(&mut *conn)
                .await?;
                if let Some((system, exp)) = &bucket {
                    sqlx::query("UPDATE credential_counts SET n = n - 1 WHERE system_id = $1 AND exp = $2")
                        .bind(system)
                        .bind(exp)
                        .execute(&mut *conn)
                        .await?;
                }
                let done = sqlx::query(
                    "UPDATE credentials SET revoked_at = $1, revoked_reason = $2 WHERE jti = $3 AND revoked_at IS NULL",
                )
                .bind(ts(event.time))
                .bind(reason)
                .bind(StoredId::of(jti))
                .execute(&mut *conn)
                .await?
                .rows_affected();
                let mut event = (**event).clone();
                event.detail = Some(serde_json::json!({"revoked": done}));
                events.push(Cow::Owned(event));
                WriteResult::Revoke(done > 0)
            }
        };
        results.push(result);
    }
    let mut closing = Statements::new();
    if !issued.is_empty() {
        let issuances: Vec<&Issuance> = issued.iter().map(|(_, i)| *i).collect();
        let workloads = known.workloads.resolve_issuances(conn, &issuances).await?;
        let issuances = issuances.into_iter().zip(workloads);
        if EXPLICIT_CREDENTIAL_IDS {
            // The batch holds the write lock: ids counted on from the
            // largest one are the next ones, in issuance order.
            push_credentials(closing.next(), issuances, Some(last_credential_id));
            for ((index, _), id) in issued.iter().zip(last_credential_id + 1..) {
                results[*index] = WriteResult::Issue(IssueOutcome::Committed, Some(id));
            }
        } else {
            let q = closing.next_issued();
            push_credentials(q, issuances, None);
            q.push(" RETURNING jti, id");
        }
    }
    count_issued(&mut closing, issued.iter().map(|(_, i)| *i));
    let events: Vec<&AuditEvent> = events.iter().map(AsRef::as_ref).collect();
    let details = known.names.resolve(conn, &events).await?;
    chain.push_inserts(&mut closing, &events, &known.names, details)?;
    if ONE_EXECUTION {
        closing.next().push("COMMIT");
    }
    let returned: HashMap<String, i64> =
        closing.run(conn).await?.into_iter().map(|(jti, id)| (jti.into_string(), id)).collect();
    if !EXPLICIT_CREDENTIAL_IDS {
        for (index, issuance) in &issued {
            let id = returned.get(issuance.jti.as_str()).copied().ok_or_else(|| {
                sqlx::Error::Protocol(format!("credential {} was inserted but not returned", issuance.jti))
            })?;
            results[*index] = WriteResult::Issue(IssueOutcome::Committed, Some(id));
        }
    }
    if !ONE_EXECUTION {
        sqlx::query("COMMIT").execute(&mut *conn).await?;
    }
    Ok(results)
}

/// A credential's (`c`) workload identity (`k`), that workload's
/// revocation epoch, if any (`w`); for a delegated credential the identity
/// it acts for (`pk`) and that identity's epoch, if any (`pw`); and the
/// workload's epoch in the credential's system from removed or narrowed
/// grants, if any (`gr`).
macro_rules! workload_joins {
    () => {
        "JOIN workloads k ON k.id = c.workload_id \
         LEFT JOIN workload_revocations w ON w.issuer = k.issuer AND w.subject = k.subject \
         LEFT JOIN workloads pk ON pk.id = c.principal_id \
         LEFT JOIN workload_revocations pw ON pw.issuer = pk.issuer AND pw.subject = pk.subject \
         LEFT JOIN grant_revocations gr ON gr.system_id = c.system_id AND gr.workload_id = c.workload_id"
    };
}
pub(crate) const WORKLOAD_JOINS: &str = workload_joins!();

/// Credential `c` is revoked by none of the epochs of [`WORKLOAD_JOINS`],
/// nor by its system's (`s`, joined), nor by itself.
macro_rules! not_revoked {
    () => {
        "c.revoked_at IS NULL AND c.id > s.revoked_through \
         AND c.id > COALESCE(w.revoked_through, 0) AND c.id > COALESCE(pw.revoked_through, 0) \
         AND c.id > COALESCE(gr.revoked_through, 0)"
    };
}
pub(crate) const NOT_REVOKED: &str = not_revoked!();

/// The count bucket (system, expiry) of credential `$1`, if it is still
/// active: revoked neither by itself nor by an epoch.
const ACTIVE_CREDENTIAL: &str = concat!(
    "SELECT c.system_id, c.exp FROM credentials c JOIN systems s ON s.id = c.system_id ",
    workload_joins!(),
    " WHERE c.jti = $1 AND ",
    not_revoked!()
);

/// Rows per multi-row INSERT of credentials or of count buckets.
const CREDENTIALS_PER_STATEMENT: usize = 512;
// A batch's credentials fit one INSERT (one statement returns their ids).
const _: () = assert!(MAX_BATCH <= CREDENTIALS_PER_STATEMENT);

/// The `credential.denied` event recorded instead of an issuance.
fn denial_of(i: &Issuance, reason: &str) -> AuditEvent {
    let mut denial = i.event.clone();
    denial.kind = "credential.denied".into();
    denial.outcome = Outcome::Denied;
    denial.reason = Some(reason.to_owned());
    denial.jti = None;
    denial.iat = None;
    denial.exp = None;
    denial
}

/// Whether issuance `i` may still commit, under the write lock: its system
/// is still active, and a single-use attestation has not been used. If not,
/// the outcome and the denial to record instead.
async fn admit(
    conn: &mut Conn,
    i: &Issuance,
    active: &HashMap<String, bool>,
    grants: &HashMap<String, i64>,
) -> Result<Result<(), (IssueOutcome, AuditEvent)>, sqlx::Error> {
    // The decision was taken before this transaction; a suspension or
    // retirement may have committed since. Checked here, with the states
    // read under the write lock (`BatchStart`), no credential can be
    // committed for a system that is no longer active, so none can reappear
    // when it is reinstated. Write transactions are serialized, so one read
    // per batch holds for the whole batch.
    let is_active = active.get(i.system_id.as_str()).copied().unwrap_or(false);
    if !is_active {
        let denial = denial_of(i, "access_denied: the system stopped operating while the request was decided");
        return Ok(Err((IssueOutcome::SystemStopped, denial)));
    }
    // Likewise for its grant: removed or changed since the decision, it may
    // no longer allow what was decided, and a removal's revocation epoch
    // was read before this credential's id exists.
    if grants.get(i.grant_id.as_str()) != Some(&i.grant_version) {
        let denial = denial_of(i, "access_denied: the grant was removed or changed while the request was decided");
        return Ok(Err((IssueOutcome::GrantChanged, denial)));
    }
    for guard in &i.replay {
        // The primary key decides: of two uses of one token, exactly one
        // inserts a row (also when both are in this batch).
        let inserted = sqlx::query(
            "INSERT INTO attestation_uses (issuer, token_id, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&guard.issuer)
        .bind(&guard.token_id)
        .bind(ts(guard.keep_until))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            let denial = denial_of(i, guard.kind.reason());
            return Ok(Err((IssueOutcome::Replayed(guard.kind), denial)));
        }
    }
    Ok(Ok(()))
}

/// Writes the multi-row INSERT of `issuances` into `q`, with ids counted on
/// from `after` when given (else the database picks them).
fn push_credentials<'a>(
    q: &mut QueryBuilder<'a, Db>,
    issuances: impl Iterator<Item = (&'a Issuance, (i64, Option<i64>))>,
    after: Option<i64>,
) {
    q.push(if after.is_some() { "INSERT INTO credentials (id, " } else { "INSERT INTO credentials (" });
    q.push(
        "jti, kind, system_id, grant_id, workload_id, principal_id, audience, scopes, iat, exp, secret_hash, db_role, \
         role_state) ",
    );
    let mut next = after.unwrap_or(0);
    q.push_values(issuances, |mut row, (i, (workload, principal))| {
        if after.is_some() {
            next += 1;
            row.push_bind(next);
        }
        let told = Told::by(i);
        row.push_bind(StoredId::of(&i.jti))
            .push_bind(i.kind.to_string())
            .push_bind(i.system_id.as_str())
            .push_bind((!told.grant).then_some(i.grant_id.as_str()))
            .push_bind(workload)
            .push_bind(principal)
            .push_bind((!told.audience).then_some(i.audience.as_str()))
            .push_bind((!told.scopes).then_some(i.scopes.as_str()))
            .push_bind((!told.iat).then_some(ts(i.iat)))
            .push_bind(ts(i.exp))
            .push_bind(i.secret_hash.as_deref())
            .push_bind(i.db_role.as_deref())
            .push_bind(i.db_role.as_ref().map(|_| "live"));
    });
}

/// Which of a credential's terms its issuance event already holds: those
/// it holds, the credential row leaves NULL, and reads take from the
/// event ([`ISSUED_TERMS`]).
struct Told {
    grant: bool,
    audience: bool,
    scopes: bool,
    iat: bool,
}

impl Told {
    fn by(i: &Issuance) -> Self {
        let e = &i.event;
        if e.kind != ISSUED || e.jti.as_deref() != Some(i.jti.as_str()) {
            return Self { grant: false, audience: false, scopes: false, iat: false };
        }
        Self {
            grant: e.grant_id.as_deref() == Some(i.grant_id.as_str()),
            audience: e.audience.as_deref() == Some(i.audience.as_str()),
            scopes: e.scopes.as_deref() == Some(i.scopes.as_str()),
            iat: e.iat == Some(ts(i.iat)),
        }
    }
}

/// The kind of a credential's issuance event.
const ISSUED: &str = "credential.issued";

/// A credential's grant, audience, scopes and iat, as `grant_id`,
/// `audience`, `scopes` and `iat`: its own where its row holds them, else
/// its issuance event's (see [`Told`]). Needs [`ISSUED_EVENT`] joined.
const ISSUED_TERMS: &str = "COALESCE(c.grant_id, e.grant_id) AS grant_id, \
     COALESCE(c.audience, (SELECT name FROM audit_names WHERE id = e.audience_id)) AS audience, \
     COALESCE(c.scopes, (SELECT name FROM audit_names WHERE id = e.scopes_id)) AS scopes, \
     COALESCE(c.iat, e.iat) AS iat";
/// The issuance event `e` of credential `c`.
const ISSUED_EVENT: &str = "LEFT JOIN audit_events e ON e.jti = c.jti AND e.kind = 'credential.issued'";

/// Adds the batch's credentials to their systems' count buckets: one row
/// per system and expiry second, so a batch issued within one second for
/// one system touches one row.
fn count_issued<'a>(closing: &mut Statements<'a>, issuances: impl Iterator<Item = &'a Issuance>) {
    let mut counts: HashMap<(&str, i64), i64> = HashMap::new();
    for i in issuances {
        *counts.entry((i.system_id.as_str(), ts(i.exp))).or_default() += 1;
    }
    let buckets: Vec<(&str, i64, i64)> = counts.into_iter().map(|((s, e), n)| (s, e, n)).collect();
    for chunk in buckets.chunks(CREDENTIALS_PER_STATEMENT) {
        let q = closing.next();
        q.push("INSERT INTO credential_counts (system_id, exp, n) ");
        q.push_values(chunk.iter().copied(), |mut row, (system, exp, n)| {
            row.push_bind(system).push_bind(exp).push_bind(n);
        });
        q.push(" ON CONFLICT (system_id, exp) DO UPDATE SET n = credential_counts.n + excluded.n");
    }
}

fn corrupt(what: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

fn json_list<T: FromStr>(text: &str, what: &str) -> Result<Vec<T>, StoreError> {
    let items: Vec<String> = serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    items
        .iter()
        .map(|s| s.parse::<T>().map_err(|_| StoreError::Corrupt(format!("{what}: invalid item {s:?}"))))
        .collect()
}

fn scope_set(text: &str, what: &str) -> Result<ScopeSet, StoreError> {
    let items: Vec<String> = serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    ScopeSet::from_list(&items).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Reads an owner from columns prefixed with `p`.
fn owner_from(row: &DbRow, p: &str) -> Result<Owner, StoreError> {
    let col = |c: &str| format!("{p}{c}");
    let id: String = row.try_get(col("id").as_str()).map_err(corrupt("owner"))?;
    let status: String = row.try_get(col("status").as_str()).map_err(corrupt("owner"))?;
    Ok(Owner {
        id: OwnerId::parse(&id).map_err(|e| StoreError::Corrupt(e.0))?,
        display_name: row.try_get(col("display_name").as_str()).map_err(corrupt("owner"))?,
        email: row.try_get(col("email").as_str()).map_err(corrupt("owner"))?,
        status: OwnerStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("owner status {status:?}")))?,
        attested_until: from_ts(row.try_get(col("attested_until").as_str()).map_err(corrupt("owner"))?)?,
    })
}

/// Reads a system from columns prefixed with `s_`.
fn system_from(row: &DbRow) -> Result<System, StoreError> {
    let get = |c: &str| -> Result<String, StoreError> { row.try_get(c).map_err(corrupt("system")) };
    let tier = get("s_tier")?;
    let state = get("s_state")?;
    let pilot_ends_at: Option<i64> = row.try_get("s_pilot_ends_at").map_err(corrupt("system"))?;
    Ok(System {
        id: SystemId::parse(&get("s_id")?).map_err(|e| StoreError::Corrupt(e.0))?,
        name: get("s_name")?,
        purpose: get("s_purpose")?,
        business_owner: OwnerId::parse(&get("s_business_owner")?).map_err(|e| StoreError::Corrupt(e.0))?,
        technical_owner: OwnerId::parse(&get("s_technical_owner")?).map_err(|e| StoreError::Corrupt(e.0))?,
        tier: Tier::parse(&tier).ok_or_else(|| StoreError::Corrupt(format!("tier {tier:?}")))?,
        state: SystemState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("state {state:?}")))?,
        pilot_ends_at: pilot_ends_at.map(from_ts).transpose()?,
        data_classification: row.try_get("s_data_classification").map_err(corrupt("system"))?,
        suspended_reason: row.try_get("s_suspended_reason").map_err(corrupt("system"))?,
        tier_started_at: from_ts(row.try_get("s_tier_started_at").map_err(corrupt("system"))?)?,
    })
}

fn grant_from(row: &DbRow) -> Result<Grant, StoreError> {
    let get = |c: &str| -> Result<String, StoreError> { row.try_get(c).map_err(corrupt("grant")) };
    let max_ttl: i64 = row.try_get("g_max_ttl").map_err(corrupt("grant"))?;
    Ok(Grant {
        id: GrantId::parse(&get("g_id")?).map_err(|e| StoreError::Corrupt(e.0))?,
        system: SystemId::parse(&get("g_system_id")?).map_err(|e| StoreError::Corrupt(e.0))?,
        issuer: get("g_issuer")?,
        subject: SubjectMatch::parse(&get("g_subject")?).map_err(|e| StoreError::Corrupt(e.0))?,
        audiences: json_list(&get("g_audiences")?, "grant audiences")?,
        scopes: scope_set(&get("g_scopes")?, "grant scopes")?,
        default_scopes: scope_set(&get("g_default_scopes")?, "grant default scopes")?,
        kinds: json_list(&get("g_kinds")?, "grant kinds")?,
        max_ttl: Duration::from_secs(u64::try_from(max_ttl).map_err(|_| StoreError::Corrupt("grant max_ttl".into()))?),
        binding: {
            let binding = get("g_binding")?;
            Binding::parse(&binding).ok_or_else(|| StoreError::Corrupt(format!("grant binding {binding:?}")))?
        },
        max_audiences: {
            let n: i64 = row.try_get("g_max_audiences").map_err(corrupt("grant"))?;
            u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("grant max_audiences {n}")))?
        },
        on_behalf_of: serde_json::from_str(&get("g_on_behalf_of")?)
            .map_err(|e| StoreError::Corrupt(format!("grant on_behalf_of: {e}")))?,
    })
}

/// A system's own columns (`s`), as [`system_from`] reads them.
macro_rules! system_fields {
    () => {
        "s.id AS s_id, s.name AS s_name, s.purpose AS s_purpose, \
         s.business_owner AS s_business_owner, s.technical_owner AS s_technical_owner, s.tier AS s_tier, \
         s.state AS s_state, s.pilot_ends_at AS s_pilot_ends_at, s.data_classification AS s_data_classification, \
         s.suspended_reason AS s_suspended_reason, s.tier_started_at AS s_tier_started_at"
    };
}

/// A system's own columns, without its owners.
const SYSTEM_FIELDS: &str = system_fields!();

/// A system's columns and its owners' (`bo`, `tecn`; see [`SYSTEM_JOINS`]).
const SYSTEM_COLUMNS: &str = concat!(
    system_fields!(),
    ", bo.id AS bo_id, bo.display_name AS bo_display_name, bo.email AS bo_email, bo.status AS bo_status, \
     bo.attested_until AS bo_attested_until, \
     tecn.id AS to_id, tecn.display_name AS to_display_name, tecn.email AS to_email, tecn.status AS to_status, \
     tecn.attested_until AS to_attested_until"
);

/// A grant's columns (`g`), as [`grant_from`] reads them, and its version.
const GRANT_COLUMNS: &str = "g.id AS g_id, g.system_id AS g_system_id, g.issuer AS g_issuer, g.subject AS g_subject, \
     g.audiences AS g_audiences, g.scopes AS g_scopes, g.default_scopes AS g_default_scopes, g.kinds AS g_kinds, \
     g.max_ttl AS g_max_ttl, g.binding AS g_binding, g.version AS g_version, g.max_audiences AS g_max_audiences, \
     g.on_behalf_of AS g_on_behalf_of";

const SYSTEM_JOINS: &str = "JOIN owners bo ON bo.id = s.business_owner JOIN owners tecn ON tecn.id = s.technical_owner";
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

#[async_trait]
impl AdminTokenStore for Store {
    async fn create_admin_token(
        &self,
        record: AdminTokenRecord,
        hash: [u8; 32],
        event: AuditEvent,
    ) -> Result<(), StoreError> {
        write_tx(self, move |tx| Box::pin(async move {
        sqlx::query("INSERT INTO admin_tokens (id, name, role, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&record.id)
            .bind(&record.name)
            .bind(&record.role)
            .bind(hash.as_slice())
            .bind(ts(event.time))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        insert_event(tx, &event).await.map_err(unavailable)
        })).await
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
                let retired = sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE kid = $2 AND retired_at IS NULL")
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

#[async_trait]
impl Health for Store {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(unavailable)?;
        Ok(())
    }
}

/// Loads the catalog view in one read transaction, so its parts agree.
async fn load_snapshot(pool: &DbPool) -> Result<Snapshot, StoreError> {
    let mut tx = pool.begin_with(SNAPSHOT_BEGIN).await.map_err(unavailable)?;
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
    let tokens: Vec<(String, String, String, Vec<u8>)> =
        sqlx::query_as("SELECT id, name, role, token_hash FROM admin_tokens WHERE revoked_at IS NULL")
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
    for (id, name, role, hash) in tokens {
        let hash: [u8; 32] =
            hash.try_into().map_err(|_| StoreError::Corrupt(format!("admin token {id}: hash is not 32 bytes")))?;
        snapshot.admin_tokens.insert(hash, AdminTokenRecord { id, name, role });
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
type IndexRow = (i64, StoredId<'static>, String, String, String, i64, Option<i64>, Option<String>, Option<String>);
/// Followed by `WHERE`: the columns are those of `c` (credentials).
const INDEX_COLUMNS: &str = "c.id, c.jti, c.system_id, k.issuer, k.subject, c.exp, c.revoked_at, pk.issuer, pk.subject \
     FROM credentials c JOIN workloads k ON k.id = c.workload_id LEFT JOIN workloads pk ON pk.id = c.principal_id";

fn indexed(row: &IndexRow) -> IndexedCredential<'_> {
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
async fn warm_index(pool: DbPool, cache: Arc<Cache>, now: i64) {
    let started = std::time::Instant::now();
    let (mut after, mut loaded) = (0i64, 0usize);
    let page_size = i64::try_from(crate::store::cache::WARM_PAGE).unwrap_or(1_000);
    loop {
        if !cache.trusted() {
            return;
        }
        let epoch = cache.epoch();
        let sql = format!("SELECT {INDEX_COLUMNS} WHERE c.id > $1 AND c.exp > $2 ORDER BY c.id LIMIT $3");
        let rows: Vec<IndexRow> = match sqlx::query_as(&sql)
        .bind(after)
        .bind(now)
        .bind(page_size)
        .fetch_all(&pool)
        .await
        {
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
