//! The group-commit writer: one task owns a connection and commits what
//! has queued since its last commit as one transaction.

use super::*;

/// Most records committed in one transaction.
pub(super) const MAX_BATCH: usize = 512;
/// A batch (or the work between two batches) that takes this long is
/// logged: the callers queued behind it all waited.
pub(super) const SLOW_BATCH: Duration = Duration::from_millis(50);
/// Queue depth in front of the writer; callers wait (backpressure) beyond it.
pub(super) const QUEUE_DEPTH: usize = 4096;
/// Most workload identities the writer remembers the ids of.
pub(super) const KNOWN_WORKLOADS: usize = 65_536;
/// Workload identities per INSERT (and read) of those a batch meets first.
pub(super) const WORKLOADS_PER_STATEMENT: usize = 256;

pub(super) enum WriteOp {
    Issue(Box<Issuance>),
    Event(Box<AuditEvent>),
    Revoke {
        jti: String,
        reason: String,
        event: Box<AuditEvent>,
    },
    /// Written at a rate that grows with traffic (every so many events),
    /// so it goes through the one writer rather than competing with it
    /// for the database's write lock.
    Checkpoint(Box<crate::audit::Checkpoint>),
}

pub(super) enum WriteResult {
    /// With the new row's id when committed.
    Issue(IssueOutcome, Option<i64>),
    Event,
    Revoke(bool),
    Checkpoint,
}

pub(super) struct WriteJob {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteResult, StoreError>>,
}

impl Store {
    /// Hands `op` to the writer and waits for its commit.
    pub(super) async fn submit(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
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
pub(super) fn spawn_writer(writer: Writer, rx: mpsc::Receiver<WriteJob>) -> Result<(), StoreError> {
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
pub(super) struct Writer {
    pub(super) options: ConnectOpts,
    /// Longest a batch may take before its callers are answered 503.
    pub(super) limit: Duration,
    pub(super) cache: Arc<Cache>,
    /// The backend's state between batches ([`Dialect::after_batch`]).
    pub(super) between: Arc<<Backend as Dialect>::BetweenBatches>,
    /// Each committed batch's time, from its first statement to its
    /// commit: the part of an issuance's latency the disk decides.
    pub(super) commits: Histogram,
}

/// Commits queued writes in batches. A batch that fails, or does not finish
/// within `limit` (a stalled database), fails every caller in it with
/// `Unavailable`, and the writer starts over on a fresh connection.
pub(super) async fn run_writer(writer: Writer, mut rx: mpsc::Receiver<WriteJob>) {
    let Writer { options, limit, cache, between, commits } = writer;
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
                if let Err(e) = Backend::after_batch(c, &between).await {
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
pub(super) async fn write_alone(
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
pub(super) struct Known {
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
pub(super) struct KnownWorkloads {
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
            let mut insert =
                QueryBuilder::<Db>::new("INSERT INTO workloads (issuer, subject) SELECT column1, column2 FROM (");
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
pub(super) fn remember(cache: &Cache, op: &WriteOp, result: &WriteResult) {
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

pub(super) async fn write_batch(
    conn: &mut Conn,
    ops: &[&WriteOp],
    known: &mut Known,
) -> Result<Vec<WriteResult>, sqlx::Error> {
    if !Backend::BATCH_BEGINS_WITH_READ {
        Backend::begin_write(conn).await?;
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
/// them as one multi-statement execution (`Backend::ONE_EXECUTION`), which stops at
/// the first failing statement, in one hop to its connection's thread;
/// PostgreSQL, which prepares one statement at a time, runs them as the
/// data-modifying CTEs of one statement, in one round trip.
pub(super) struct Statements<'a> {
    query: QueryBuilder<'a, Db>,
    count: usize,
    /// Whether one of them is the credential INSERT whose returned ids
    /// `run` reads (PostgreSQL).
    issued: bool,
}

impl<'a> Statements<'a> {
    pub(super) fn new() -> Self {
        Self { query: QueryBuilder::new(""), count: 0, issued: false }
    }

    /// The next statement, to be written.
    pub(super) fn next(&mut self) -> &mut QueryBuilder<'a, Db> {
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
        if Backend::ONE_EXECUTION {
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

    pub(super) async fn run(mut self, conn: &mut Conn) -> Result<Vec<(StoredId<'static>, i64)>, sqlx::Error> {
        if self.count == 0 {
            return Ok(Vec::new());
        }
        if Backend::ONE_EXECUTION {
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
/// `Backend::EXPLICIT_CREDENTIAL_IDS`), the state of each system it issues for, and
/// the version of each grant it issues under.
pub(super) struct BatchStart {
    chain: audit::Chain,
    last_credential_id: i64,
    active: HashMap<String, bool>,
    grants: HashMap<String, i64>,
}

impl BatchStart {
    /// Reads the start of a batch; with `Backend::BATCH_BEGINS_WITH_READ`, first
    /// opens its write transaction in the same execution.
    async fn read(conn: &mut Conn, systems: &[&str], grants: &[&str]) -> Result<Self, sqlx::Error> {
        let mut q = QueryBuilder::<Db>::new("");
        if Backend::BATCH_BEGINS_WITH_READ {
            q.push(Backend::BEGIN_WRITE).push("; ");
        }
        q.push(format!(
            "SELECT 0 AS part, seq AS n, {} AS name, NULL AS state \
             FROM (SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1) AS head",
            Backend::hash_hex("hash")
        ));
        if Backend::EXPLICIT_CREDENTIAL_IDS {
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
        let mut start = Self {
            chain: audit::Chain::empty(),
            last_credential_id: 0,
            active: HashMap::new(),
            grants: HashMap::new(),
        };
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
pub(super) async fn apply_ops(
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
                let bucket: Option<(String, i64)> =
                    sqlx::query_as(ACTIVE_CREDENTIAL).bind(StoredId::of(jti)).fetch_optional(&mut *conn).await?;
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
        if Backend::EXPLICIT_CREDENTIAL_IDS {
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
    if Backend::ONE_EXECUTION {
        closing.next().push("COMMIT");
    }
    let returned: HashMap<String, i64> =
        closing.run(conn).await?.into_iter().map(|(jti, id)| (jti.into_string(), id)).collect();
    if !Backend::EXPLICIT_CREDENTIAL_IDS {
        for (index, issuance) in &issued {
            let id = returned.get(issuance.jti.as_str()).copied().ok_or_else(|| {
                sqlx::Error::Protocol(format!("credential {} was inserted but not returned", issuance.jti))
            })?;
            results[*index] = WriteResult::Issue(IssueOutcome::Committed, Some(id));
        }
    }
    if !Backend::ONE_EXECUTION {
        sqlx::query("COMMIT").execute(&mut *conn).await?;
    }
    Ok(results)
}

/// Rows per multi-row INSERT of credentials or of count buckets.
pub(super) const CREDENTIALS_PER_STATEMENT: usize = 512;
// A batch's credentials fit one INSERT (one statement returns their ids).
const _: () = assert!(MAX_BATCH <= CREDENTIALS_PER_STATEMENT);

/// The `credential.denied` event recorded instead of an issuance.
pub(super) fn denial_of(i: &Issuance, reason: &str) -> AuditEvent {
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
pub(super) async fn admit(
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
    // Likewise for its approval: revoked or ended since the decision, it
    // allows nothing more.
    if let Some(approval) = &i.approval
        && !super::approvals::approval_allows(conn, approval, ts(i.iat)).await?
    {
        let denial = denial_of(i, "access_denied: the approval was revoked or ended while the request was decided");
        return Ok(Err((IssueOutcome::ApprovalEnded, denial)));
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
    if let Some(approval) = &i.approval {
        super::approvals::link_approval(conn, approval, &i.jti).await?;
    }
    Ok(Ok(()))
}

/// Writes the multi-row INSERT of `issuances` into `q`, with ids counted on
/// from `after` when given (else the database picks them).
pub(super) fn push_credentials<'a>(
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
pub(super) struct Told {
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

/// Adds the batch's credentials to their systems' count buckets: one row
/// per system and expiry second, so a batch issued within one second for
/// one system touches one row.
pub(super) fn count_issued<'a>(closing: &mut Statements<'a>, issuances: impl Iterator<Item = &'a Issuance>) {
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
