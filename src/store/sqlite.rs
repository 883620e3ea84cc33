//! The embedded SQLite store (WAL, `synchronous = FULL`): the default, for
//! one node.
//!
//! The store body is shared with PostgreSQL (`sql/`, see [`Dialect`]); this
//! module supplies SQLite's dialect, connection settings and write lock,
//! and runs the WAL checkpoints. SQLite
//! allows one writer at a time, taken by `BEGIN IMMEDIATE`; the single
//! group-commit writer also avoids the lock convoy many concurrent SQLite
//! writers produce.

use std::sync::atomic::Ordering;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use std::borrow::Cow;
use std::str::FromStr;

use sqlx::ConnectOptions as _;
use std::sync::atomic::AtomicU64;

use body::{prepare_schema, unavailable};

use super::dialect::{Dialect, Refusal};
use super::*;

/// SQLite, for the shared store body.
pub struct Sqlite;

type Backend = Sqlite;

// The shared body, compiled here against SQLite's dialect (the same
// files are compiled in `postgres.rs` against PostgreSQL's).
#[expect(clippy::duplicate_mod, reason = "the store body is compiled once per backend, against its Dialect")]
#[path = "sql/mod.rs"]
mod body;

impl Dialect for Sqlite {
    type Db = sqlx::Sqlite;
    /// Frames in the write-ahead log at the last background checkpoint;
    /// the writer catches up when it is large (`after_batch`).
    type BetweenBatches = AtomicU64;

    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const CONTAINS_FN: &'static str = "instr";
    const SNAPSHOT_BEGIN: &'static str = "BEGIN";
    /// A group-commit batch takes the write lock in the same execution as
    /// its first read (`BatchStart`): each execution is a round trip to the
    /// driver's connection thread, about 0.1 ms under load, and a batch
    /// waits for all of its own.
    const BATCH_BEGINS_WITH_READ: bool = true;
    /// A batch's closing statements (and COMMIT) go to SQLite's connection
    /// thread as one execution.
    const ONE_EXECUTION: bool = true;
    /// Credential ids are given in the INSERT, counted on from the largest
    /// one read under the write lock: no RETURNING rows to wait for, which
    /// SQLite's driver hands back one message, and one wake-up, at a time.
    const EXPLICIT_CREDENTIAL_IDS: bool = true;
    const PLANS_WITHOUT_STATISTICS: bool = true;

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    fn hash_hex(column: &str) -> String {
        format!("lower(hex({column}))")
    }

    /// By the primary result code (the low byte of the extended code sqlx
    /// reports): a value too big or of the wrong type (SQLITE_TOOBIG,
    /// SQLITE_MISMATCH) is its value; an error in the SQL (SQLITE_ERROR,
    /// SQLITE_MISUSE, SQLITE_RANGE) the statement's own. `None` for
    /// everything else: the file could not be used or the write could not
    /// or would not commit (busy, locked, read-only, I/O error, full,
    /// corrupt, a trigger raising ABORT).
    fn refusal(e: &dyn sqlx::error::DatabaseError) -> Option<Refusal> {
        let code: i32 = e.code()?.parse().ok()?;
        match code & 0xff {
            18 | 20 => Some(Refusal::Value),
            1 | 21 | 25 => Some(Refusal::Statement),
            _ => None,
        }
    }

    /// `BEGIN IMMEDIATE` takes SQLite's write lock at once, so what the
    /// transaction reads next no other writer can change before it commits.
    async fn begin_write(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        sqlx::query(Self::BEGIN_WRITE).execute(&mut *conn).await?;
        Ok(())
    }

    /// When the background checkpoint found a long log and nearly caught
    /// up with it, finish the checkpoint on the writer's own connection.
    /// The background checkpoint runs while batches commit, so under
    /// sustained load it never catches up with the last frame, and SQLite
    /// only reuses the log from its start once one has: the log grew
    /// without bound (1.8 GB in 30 seconds at peak). Here no batch commits
    /// meanwhile, so it catches up, and the next batch starts the log over.
    /// The background checkpoint has already copied most pages; this
    /// copies the few frames since.
    async fn after_batch(conn: &mut SqliteConnection, wal_frames: &AtomicU64) -> Result<(), sqlx::Error> {
        if wal_frames.load(Ordering::Relaxed) < CATCH_UP_FRAMES {
            return Ok(());
        }
        let hint = wal_frames.swap(0, Ordering::Relaxed);
        let started = std::time::Instant::now();
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut *conn).await?;
        // Every batch queued meanwhile waited this long.
        tracing::debug!(frames = hint, took_us = started.elapsed().as_micros(), "writer caught up the write-ahead log");
        Ok(())
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Frames (4 KiB pages) in the write-ahead log beyond which the writer
/// checkpoints it itself between batches: 16 MiB, a fraction of a second
/// at the peak rate.
const CATCH_UP_FRAMES: u64 = 4096;

/// Frames the background checkpoint may have left uncopied for the writer
/// to finish: the writer copies them while batches queue behind it, so it
/// finishes only a checkpoint that is nearly done (a reader holding an old
/// snapshot can keep the background one far behind).
const LEFT_FOR_THE_WRITER: i64 = 1024;

/// The log file is cut back to this size when it is reused from its start.
const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// Ids are kept as a UUID's 16 bytes when they are one in canonical form
/// (migration 0017), else as text; both read back as text.
impl sqlx::Type<sqlx::Sqlite> for StoredId<'_> {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <&str as sqlx::Type<sqlx::Sqlite>>::type_info()
    }

    fn compatible(ty: &sqlx::sqlite::SqliteTypeInfo) -> bool {
        <&str as sqlx::Type<sqlx::Sqlite>>::compatible(ty) || <&[u8] as sqlx::Type<sqlx::Sqlite>>::compatible(ty)
    }
}

impl<'q, 'a: 'q> sqlx::Encode<'q, sqlx::Sqlite> for StoredId<'a> {
    fn encode_by_ref(
        &self,
        args: &mut Vec<sqlx::sqlite::SqliteArgumentValue<'q>>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        args.push(match self.uuid_bytes() {
            Some(bytes) => sqlx::sqlite::SqliteArgumentValue::Blob(Cow::Owned(bytes.to_vec())),
            None => sqlx::sqlite::SqliteArgumentValue::Text(self.0.clone()),
        });
        Ok(sqlx::encode::IsNull::No)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Sqlite> for StoredId<'static> {
    fn decode(value: sqlx::sqlite::SqliteValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        use sqlx::ValueRef as _;
        if <&str as sqlx::Type<sqlx::Sqlite>>::compatible(&value.type_info()) {
            return Ok(StoredId(Cow::Owned(<&str as sqlx::Decode<sqlx::Sqlite>>::decode(value)?.to_owned())));
        }
        let bytes = <&[u8] as sqlx::Decode<sqlx::Sqlite>>::decode(value)?;
        StoredId::from_uuid_bytes(bytes).ok_or_else(|| format!("an id of {} bytes is not a UUID", bytes.len()).into())
    }
}

/// The SQLite store.
pub type SqliteStore = body::Store;

/// One node leads itself.
pub struct SoleLeader;

#[async_trait]
impl Coordination for SoleLeader {
    async fn lead(&self) -> bool {
        true
    }
}

impl body::Store {
    /// Opens (creating if needed) and migrates the database at `url`, and
    /// starts the writer task.
    pub async fn open(
        url: &str,
        busy_timeout: Duration,
        max_connections: u32,
        auto_migrate: bool,
    ) -> Result<Self, StoreError> {
        let (pool, options) = connect(url, busy_timeout, max_connections, auto_migrate).await?;
        // One node, so every change is made by this process (which updates
        // its views as it commits) or seen by the reconciliation poll.
        let wal_frames = Arc::new(AtomicU64::new(0));
        let store = Self::start(pool, options, busy_timeout, true, Arc::clone(&wal_frames)).await?;
        tokio::spawn(checkpoint_wal(store.pool.clone(), wal_frames, store.lifetime.subscribe()));
        Ok(store)
    }
}

/// The pool on a migrated database at `url`, and the settings of its
/// connections.
async fn connect(
    url: &str,
    busy_timeout: Duration,
    max_connections: u32,
    auto_migrate: bool,
) -> Result<(SqlitePool, SqliteConnectOptions), StoreError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Unavailable(format!("invalid database.url: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(busy_timeout)
        .pragma("temp_store", "memory")
        // Checkpoints run in their own task (see `checkpoint_wal`), never
        // inside a commit the group-commit writer is waiting on.
        .pragma("wal_autocheckpoint", "0")
        .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string())
        .disable_statement_logging();
    if let Some(dir) = options.get_filename().parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(busy_timeout.max(Duration::from_secs(1)))
        .connect_with(options.clone())
        .await
        .map_err(unavailable)?;
    prepare_schema(&pool, auto_migrate).await?;
    Ok((pool, options))
}

/// How often the write-ahead log is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies committed pages from the write-ahead log into the database file,
/// on a pool connection, until the store is dropped. With SQLite's
/// automatic checkpoints, the connection whose commit crosses 1,000 pages
/// does this work (and an fsync of the database file) before its commit
/// returns; that connection is usually the group-commit writer, so every
/// exchange in the batch waited. A passive checkpoint here waits for no
/// writer and no writer waits for it; the log is reused from its start once
/// a checkpoint has caught up (see `after_batch`).
async fn checkpoint_wal(pool: SqlitePool, wal_frames: Arc<AtomicU64>, mut lifetime: tokio::sync::watch::Receiver<()>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = lifetime.changed() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = checkpoint_once(&pool, &wal_frames).await {
            tracing::warn!(error = %e, "write-ahead log checkpoint failed; will retry");
        }
    }
}

/// Passes one background checkpoint makes at most. A pass copies the
/// frames the log held when it began; batches commit meanwhile (a few
/// hundred frames while a pass copies ten thousand at the peak), and what
/// is left when the writer takes the hint the writer copies while batches
/// wait. Another pass copies those first, off the writer: measured under
/// load, the writer's catch-up went from a median of about 4 ms to about
/// 2 ms, and its total time in them halved.
const CHECKPOINT_PASSES: usize = 3;

/// Frames committed during a pass below which another pass saves the
/// writer too little to be worth one.
const FEW_NEW_FRAMES: i64 = 64;

/// One background checkpoint: passive passes while the log is long and
/// the last pass nearly caught up with it but frames committed during it
/// are left; then records how many frames the log held if the writer may
/// finish the checkpoint, else 0.
async fn checkpoint_once(pool: &SqlitePool, wal_frames: &AtomicU64) -> Result<(), sqlx::Error> {
    let mut hint = 0;
    let mut before = 0;
    for pass in 1..=CHECKPOINT_PASSES {
        let started = std::time::Instant::now();
        // (busy, frames in the log, frames copied into the database)
        let (_, frames, copied): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(pool).await?;
        tracing::debug!(pass, frames, copied, took_us = started.elapsed().as_micros(), "write-ahead log checkpoint");
        let caught_up = frames - copied <= LEFT_FOR_THE_WRITER;
        hint = if caught_up { frames } else { 0 };
        // Committed while the previous pass ran, so this one copied them.
        let new = frames - before;
        before = frames;
        if !caught_up || u64::try_from(frames).unwrap_or(0) < CATCH_UP_FRAMES || new <= FEW_NEW_FRAMES {
            break;
        }
    }
    wal_frames.store(u64::try_from(hint).unwrap_or(0), Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use sqlx::QueryBuilder;

    use super::body::rows::ACTIVE_CREDENTIAL;
    use super::body::{Store, audit, lifecycle};
    use super::*;
    use crate::clock::Clock as _;
    use crate::store::{Outcome, RequestMeta};

    /// Frames in the write-ahead log (the second column of a checkpoint's
    /// answer, counted before it copies anything).
    async fn log_frames(pool: &SqlitePool) -> i64 {
        let (_, frames, _): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(pool).await.unwrap();
        frames
    }

    /// A store on a new database with no background checkpoint task (the
    /// test plays its part), its pool, and the writer's hint.
    async fn without_background_checkpoints() -> (tempfile::TempDir, SqlitePool, Store, Arc<AtomicU64>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/wal.db", dir.path().display());
        let (pool, options) = connect(&url, Duration::from_secs(5), 4, true).await.unwrap();
        let wal_frames = Arc::new(AtomicU64::new(0));
        let store =
            Store::start(pool.clone(), options, Duration::from_secs(5), true, Arc::clone(&wal_frames)).await.unwrap();
        (dir, pool, store, wal_frames)
    }

    async fn record(store: &Store, n: usize) {
        for _ in 0..n {
            let event =
                AuditEvent::new("test.event", Outcome::Success, OffsetDateTime::UNIX_EPOCH, &RequestMeta::default());
            store.record_event(event).await.unwrap();
        }
    }

    /// Under sustained load the background checkpoint never catches up
    /// with the last frame, so SQLite never reuses the log from its start
    /// and it grows without bound. Here a reader holds the background
    /// checkpoint back (as commits landing during it do under load); the
    /// writer then catches up between batches, and the log starts over.
    #[tokio::test]
    async fn the_writer_catches_up_a_long_write_ahead_log_so_it_starts_over() {
        let (_dir, pool, store, wal_frames) = without_background_checkpoints().await;
        record(&store, 20).await;
        let mut reader = pool.acquire().await.unwrap();
        sqlx::query("BEGIN").execute(&mut *reader).await.unwrap();
        sqlx::query("SELECT COUNT(*) FROM audit_events").execute(&mut *reader).await.unwrap();
        record(&store, 20).await;

        checkpoint_once(&pool, &wal_frames).await.unwrap();
        let long = wal_frames.load(Ordering::Relaxed);
        assert!(long >= 40, "the background checkpoint records the log's length: {long}");
        sqlx::query("COMMIT").execute(&mut *reader).await.unwrap();
        drop(reader);
        // As if the log had grown past the limit.
        wal_frames.store(CATCH_UP_FRAMES, Ordering::Relaxed);

        // This batch's writer catches up after answering; the next one
        // starts the log over.
        record(&store, 1).await;
        record(&store, 1).await;
        assert_eq!(wal_frames.load(Ordering::Relaxed), 0, "the writer took the hint");
        let frames = log_frames(&pool).await;
        assert!(u64::try_from(frames).unwrap() * 10 < long, "the log started over: {frames} frames now, {long} before");
    }

    /// A checkpoint held far behind by a reader is left to the background
    /// task: the writer would copy all of it while batches wait.
    #[tokio::test]
    async fn the_writer_leaves_a_checkpoint_that_is_far_behind_to_the_background() {
        let (_dir, pool, store, wal_frames) = without_background_checkpoints().await;
        let mut reader = pool.acquire().await.unwrap();
        sqlx::query("BEGIN").execute(&mut *reader).await.unwrap();
        sqlx::query("SELECT COUNT(*) FROM audit_events").execute(&mut *reader).await.unwrap();
        loop {
            record(&store, 20).await;
            checkpoint_once(&pool, &wal_frames).await.unwrap();
            let (_, frames, copied): (i64, i64, i64) =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&pool).await.unwrap();
            let hint = wal_frames.load(Ordering::Relaxed);
            if frames - copied > LEFT_FOR_THE_WRITER {
                assert_eq!(hint, 0, "{} frames behind", frames - copied);
                break;
            }
            assert_eq!(hint, u64::try_from(frames).unwrap(), "nearly done: {} frames behind", frames - copied);
        }
    }

    /// An owner and an active system `batch` to issue for.
    async fn with_a_system(pool: &SqlitePool) {
        sqlx::query(
            "INSERT INTO owners (id, display_name, email, status, attested_until, created_at, updated_at) \
             VALUES ('o', 'O', 'o@example.com', 'active', 4000000000, 0, 0)",
        )
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO systems (id, name, purpose, business_owner, technical_owner, tier, state, created_at, \
             updated_at) VALUES ('batch', 'Batch', 'test', 'o', 'o', 'pilot', 'active', 0, 0)",
        )
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO grants (id, system_id, issuer, subject, audiences, scopes, default_scopes, kinds, max_ttl, \
             created_at, updated_at) VALUES ('g', 'batch', 'https://issuer.example', 'workload-*', '[\"api\"]', \
             '[\"read\"]', '[]', '[\"jwt\"]', 3600, 0, 0)",
        )
        .execute(pool)
        .await
        .unwrap();
    }

    /// An issuance for system `batch` to workload `n`.
    fn issuance(n: usize) -> Issuance {
        let now = crate::clock::SystemClock.now();
        let jti = crate::broker::exchange::new_jti(now);
        let mut event = AuditEvent::new("credential.issued", Outcome::Success, now, &RequestMeta::default());
        event.system_id = Some("batch".into());
        event.jti = Some(jti.clone());
        Issuance {
            jti,
            kind: CredentialKind::Jwt,
            system_id: SystemId::parse("batch").unwrap(),
            grant_id: GrantId::parse("g").unwrap(),
            grant_version: 0,
            issuer: "https://issuer.example".into(),
            subject: format!("workload-{n}"),
            principal: None,
            audience: "api".into(),
            scopes: "read".into(),
            iat: now,
            exp: now + time::Duration::hours(1),
            replay: Vec::new(),
            secret_hash: None,
            db_role: None,
            approval: None,
            event,
        }
    }

    /// Issues `count` credentials concurrently through `store`, numbering
    /// workloads from `first`; every one must commit. Returns their jtis.
    async fn issue_concurrently(store: &Arc<Store>, first: usize, count: usize) -> Vec<String> {
        let mut jtis = Vec::new();
        let mut inflight = tokio::task::JoinSet::new();
        for n in first..first + count {
            let i = issuance(n);
            jtis.push(i.jti.clone());
            let store = Arc::clone(store);
            inflight.spawn(async move { store.record_issuance(i).await });
        }
        while let Some(outcome) = inflight.join_next().await {
            let outcome = outcome.unwrap();
            assert!(matches!(outcome, Ok(IssueOutcome::Committed)), "{outcome:?}");
        }
        jtis
    }

    /// A batch gives its credentials ids counted on from the largest one
    /// (`EXPLICIT_CREDENTIAL_IDS`); the index must hold each credential
    /// under the id its row has, or epochs misjudge it.
    #[tokio::test]
    async fn credentials_committed_in_one_batch_are_indexed_under_their_own_ids() {
        let (_dir, pool, store, _) = without_background_checkpoints().await;
        with_a_system(&pool).await;
        let store = Arc::new(store);
        let mut jtis = Vec::new();
        for round in 0..3 {
            jtis.extend(issue_concurrently(&store, round * 40, 40).await);
        }
        for jti in &jtis {
            let (id,): (i64,) = sqlx::query_as("SELECT id FROM credentials WHERE jti = $1")
                .bind(StoredId::of(jti))
                .fetch_one(&pool)
                .await
                .unwrap();
            let indexed = store.cache.lookup(jti).map(|found| found.id);
            assert_eq!(indexed, Some(id), "{jti}");
        }
    }

    /// A credential's jti, as the broker mints it (a UUIDv7), takes 16
    /// bytes in the credential row and the event; any other spelling stays
    /// text. Both are found, revoked and audited by the text.
    #[tokio::test]
    async fn issued_ids_take_sixteen_bytes_and_are_found_by_their_text() {
        let (_dir, pool, store, _) = without_background_checkpoints().await;
        with_a_system(&pool).await;
        let store = Arc::new(store);
        let mut jtis = issue_concurrently(&store, 0, 5).await;
        let mut upper = issuance(5);
        upper.jti = upper.jti.to_uppercase();
        upper.event.jti = Some(upper.jti.clone());
        upper.event.request_id = Some("request-of-the-uppercase-one".into());
        jtis.push(upper.jti.clone());
        assert!(matches!(store.record_issuance(upper).await, Ok(IssueOutcome::Committed)));

        let count = |sql: &'static str| {
            let pool = pool.clone();
            async move { sqlx::query_as::<_, (i64,)>(sql).fetch_one(&pool).await.unwrap().0 }
        };
        assert_eq!(count("SELECT COUNT(*) FROM credentials WHERE typeof(jti) = 'blob' AND length(jti) = 16").await, 5);
        assert_eq!(count("SELECT COUNT(*) FROM credentials WHERE typeof(jti) = 'text'").await, 1);
        assert_eq!(count("SELECT COUNT(*) FROM audit_events WHERE typeof(jti) = 'blob'").await, 5);
        assert_eq!(count("SELECT COUNT(*) FROM audit_events WHERE typeof(request_id) = 'text'").await, 1);

        for jti in &jtis {
            let record = store.credential_from_db(jti).await.unwrap().expect("found by its text");
            assert_eq!(&record.jti, jti);
            assert!(store.index_from_db(jti).await.unwrap().is_some(), "{jti}");
        }
        let lower = jtis[5].to_lowercase();
        assert!(store.credential_from_db(&lower).await.unwrap().is_none(), "ids are compared exactly");

        for jti in [&jtis[0], &jtis[5]] {
            let mut event = AuditEvent::new(
                "credential.revoked",
                Outcome::Success,
                crate::clock::SystemClock.now(),
                &RequestMeta::default(),
            );
            event.jti = Some(jti.clone());
            assert!(store.revoke_credential(jti, "test", event).await.unwrap(), "{jti}");
            let filter = AuditFilter { jti: Some(jti.clone()), ..AuditFilter::default() };
            let events = store.audit_events(&filter, None, 10).await.unwrap();
            let kinds: Vec<(&str, Option<&str>)> =
                events.iter().map(|e| (e.event.kind.as_str(), e.event.jti.as_deref())).collect();
            assert_eq!(kinds, [("credential.issued", Some(jti.as_str())), ("credential.revoked", Some(jti.as_str()))]);
        }
        let revoked = count("SELECT COUNT(*) FROM credentials WHERE revoked_at IS NOT NULL").await;
        assert_eq!(revoked, 2);
    }

    /// A credential row holds only the terms (grant, audience, scopes, iat)
    /// its issuance event does not: reads take the rest from the event.
    #[tokio::test]
    async fn a_credential_stores_only_the_terms_its_event_lacks() {
        let (_dir, pool, store, _) = without_background_checkpoints().await;
        with_a_system(&pool).await;
        // The event repeats the grant and audience, names other scopes, and
        // no iat.
        let mut partly = issuance(1);
        partly.event.grant_id = Some(partly.grant_id.to_string());
        partly.event.audience = Some(partly.audience.clone());
        partly.event.scopes = Some("read write".into());
        // The event repeats every term.
        let mut fully = issuance(2);
        fully.event.grant_id = Some(fully.grant_id.to_string());
        fully.event.audience = Some(fully.audience.clone());
        fully.event.scopes = Some(fully.scopes.clone());
        fully.event.iat = Some(fully.iat.unix_timestamp());
        // Every term repeated, but by an event of another credential.
        let mut elsewhere = issuance(3);
        elsewhere.event = fully.event.clone();
        elsewhere.event.jti = Some("another".into());
        let jtis = [partly.jti.clone(), fully.jti.clone(), elsewhere.jti.clone()];
        let iats: Vec<i64> = [&partly, &fully, &elsewhere].iter().map(|i| i.iat.unix_timestamp()).collect();
        for i in [partly, fully, elsewhere] {
            assert!(matches!(store.record_issuance(i).await, Ok(IssueOutcome::Committed)));
        }

        type Terms = (Option<String>, Option<String>, Option<String>, bool);
        let stored: Vec<Terms> =
            sqlx::query_as("SELECT grant_id, audience, scopes, iat IS NOT NULL FROM credentials ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let own = |s: &str| Some(s.to_owned());
        assert_eq!(
            stored,
            [(None, None, own("read"), true), (None, None, None, false), (own("g"), own("api"), own("read"), true)]
        );
        let system = SystemId::parse("batch").unwrap();
        let listed = store.outstanding_credentials(&system, crate::clock::SystemClock.now()).await.unwrap();
        let terms: Vec<(&str, &str, &str, &str)> = listed
            .iter()
            .map(|c| (c.jti.as_str(), c.grant_id.as_str(), c.audience.as_str(), c.scopes.as_str()))
            .collect();
        assert_eq!(terms, jtis.iter().map(|j| (j.as_str(), "g", "api", "read")).collect::<Vec<_>>());
        assert_eq!(listed.iter().map(|c| c.iat.unix_timestamp()).collect::<Vec<_>>(), iats);
    }

    /// Two writers on one database file (two brokers, or a broker and the
    /// CLI) each read the chain head and the largest credential id at the
    /// start of every batch: only under the write lock (`BEGIN_WRITE`,
    /// sent with that read) do they never read the same ones. Otherwise
    /// one of them would number events or credentials already taken and
    /// fail its whole batch.
    #[tokio::test]
    async fn two_writers_on_one_file_keep_one_chain_and_distinct_ids() {
        let (dir, pool, first, _) = without_background_checkpoints().await;
        with_a_system(&pool).await;
        let url = format!("sqlite://{}/wal.db", dir.path().display());
        let (second_pool, options) = connect(&url, Duration::from_secs(5), 4, false).await.unwrap();
        let second = Store::start(second_pool, options, Duration::from_secs(5), false, Arc::new(AtomicU64::new(0)))
            .await
            .unwrap();
        let (first, second) = (Arc::new(first), Arc::new(second));
        for round in 0..4 {
            // Each call asserts that every one of its issuances committed.
            tokio::join!(
                issue_concurrently(&first, round * 100, 50),
                issue_concurrently(&second, round * 100 + 50, 50)
            );
        }
        let (credentials, distinct): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT id) FROM credentials").fetch_one(&pool).await.unwrap();
        assert_eq!((credentials, distinct), (400, 400));
        let events = first.audit_events(&crate::store::AuditFilter::default(), None, 1000).await.unwrap();
        assert_eq!(events.len(), 400);
        let mut chain = crate::audit::ChainVerifier::new(1, crate::audit::GENESIS.to_owned(), &[]);
        for event in &events {
            chain.push(event);
        }
        let report = chain.finish();
        assert!(report.ok, "{report:?}");
    }

    /// Background passes run these against a table of every credential
    /// ever issued: each must reach its rows through an index, or it holds
    /// the write lock (and stalls every exchange) for a scan that grows
    /// with the table.
    #[tokio::test]
    async fn background_queries_do_not_scan_the_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/plan.db", dir.path().display());
        let store = Store::open(&url, Duration::from_secs(5), 2, true).await.unwrap();
        let queries = [
            format!("SELECT c.id, c.jti, c.kind, c.db_role {} LIMIT 500", lifecycle::DUE_LOGINS),
            "SELECT db_role FROM credentials WHERE role_state IN ('live', 'dropping')".to_owned(),
            ACTIVE_CREDENTIAL.to_owned(),
            lifecycle::COVERED_BY_WORKLOAD.to_owned(),
        ];
        for sql in queries {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}")).fetch_all(&store.pool).await.unwrap();
            let steps: Vec<&str> = plan.iter().map(|(_, _, _, detail)| detail.as_str()).collect();
            assert!(
                !steps.iter().any(|s| s.starts_with("SCAN c") || s.starts_with("SCAN credentials")),
                "{sql}\n{steps:#?}"
            );
        }
    }

    /// The index by kind leaves issuances out: a query for any other kind
    /// reaches its events through it, and one for issuances reads the log
    /// in order, without sorting it.
    #[tokio::test]
    async fn audit_queries_by_kind_use_the_index_or_the_log_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/plan.db", dir.path().display());
        let store = Store::open(&url, Duration::from_secs(5), 2, true).await.unwrap();
        for (kind, expected) in [
            ("system.suspended", "SEARCH audit_events USING INDEX audit_by_kind (kind=? AND seq>?)"),
            ("credential.issued", "SEARCH audit_events USING INTEGER PRIMARY KEY (rowid>?)"),
        ] {
            let filter = AuditFilter { kind: Some(kind.to_owned()), ..AuditFilter::default() };
            let mut q = QueryBuilder::<sqlx::Sqlite>::new("EXPLAIN QUERY PLAN SELECT seq, detail FROM audit_events");
            audit::push_filter(&mut q, &filter, Some(0), false);
            q.push(" ORDER BY seq LIMIT 100");
            let plan: Vec<(i64, i64, i64, String)> = q.build_query_as().fetch_all(&store.pool).await.unwrap();
            let steps: Vec<&str> = plan.iter().map(|(_, _, _, detail)| detail.as_str()).collect();
            assert_eq!(steps, [expected], "{kind}");
        }
    }

    /// Events of one workload or issuer are found through their name's id:
    /// the name is looked up once, and the workload's events are read in
    /// order from the index by subject, without sorting them.
    #[tokio::test]
    async fn audit_queries_by_workload_look_the_name_up_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/plan.db", dir.path().display());
        let store = Store::open(&url, Duration::from_secs(5), 2, true).await.unwrap();
        let filter = AuditFilter { workload: Some("spiffe://example/w".to_owned()), ..AuditFilter::default() };
        let mut q = QueryBuilder::<sqlx::Sqlite>::new("EXPLAIN QUERY PLAN SELECT seq, detail FROM audit_events");
        audit::push_filter(&mut q, &filter, Some(0), false);
        q.push(" ORDER BY seq LIMIT 100");
        let plan: Vec<(i64, i64, i64, String)> = q.build_query_as().fetch_all(&store.pool).await.unwrap();
        let steps: Vec<&str> = plan.iter().map(|(_, _, _, detail)| detail.as_str()).collect();
        assert_eq!(
            steps,
            [
                "SEARCH audit_events USING INDEX audit_by_subject (subject_id=? AND seq>?)",
                "SCALAR SUBQUERY 1",
                "SEARCH audit_names USING COVERING INDEX sqlite_autoindex_audit_names_1 (name=?)",
            ]
        );
    }
}
