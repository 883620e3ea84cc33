//! The PostgreSQL store: several stateless replicas share one database.
//!
//! The store body is shared with SQLite (`sql/`, see [`Dialect`]); this
//! module supplies PostgreSQL's dialect and connection settings, the write
//! lock, and what replicas need to cooperate: a leader lock for singleton
//! background work and the change listener.
//!
//! Every write transaction takes one transaction-scoped advisory lock first
//! (`begin_write`). That serializes writers across all replicas the way
//! SQLite's single writer does, which is what keeps credential ids in commit
//! order (revocation epochs compare them), the audit chain linear, and the
//! commit-time check of a system's state exact. Group commit keeps the cost
//! to one lock per batch, not per request.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

use std::str::FromStr;

use sqlx::ConnectOptions as _;

use body::{prepare_schema, unavailable};

use super::cache::Cache;
use super::dialect::{Dialect, Refusal};
use super::*;

/// PostgreSQL, for the shared store body.
pub struct Postgres;

type Backend = Postgres;

// The shared body, compiled here against PostgreSQL's dialect (the same
// files are compiled in `sqlite.rs` against SQLite's).
#[expect(clippy::duplicate_mod, reason = "the store body is compiled once per backend, against its Dialect")]
#[path = "sql/mod.rs"]
mod body;

/// Advisory lock held by every write transaction (`halflife` in ASCII).
const WRITE_LOCK: i64 = 0x68616c666c696665;
/// `BEGIN` and taking `WRITE_LOCK`, as one simple query.
const BEGIN_WRITE: &str = "BEGIN; SELECT pg_advisory_xact_lock(7521412039846749797)";
/// Advisory lock held by the replica that runs singleton background work.
const LEADER_LOCK: i64 = WRITE_LOCK + 1;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Dialect for Postgres {
    type Db = sqlx::Postgres;
    /// Nothing: the writer does no work between batches here.
    type BetweenBatches = ();

    const BEGIN_WRITE: &'static str = BEGIN_WRITE;
    const CONTAINS_FN: &'static str = "strpos";
    const SNAPSHOT_BEGIN: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    /// `BEGIN_WRITE` is a simple query and a batch's first read has bind
    /// parameters (the extended protocol): they cannot share a round trip.
    const BATCH_BEGINS_WITH_READ: bool = false;
    /// PostgreSQL prepares one statement at a time: a batch's closing
    /// statements become the data-modifying CTEs of one (see `Statements`).
    const ONE_EXECUTION: bool = false;
    /// The database picks credential ids; the INSERT returns them.
    const EXPLICIT_CREDENTIAL_IDS: bool = false;
    const PLANS_WITHOUT_STATISTICS: bool = false;

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    fn hash_hex(column: &str) -> String {
        format!("encode({column}, 'hex')")
    }

    /// By SQLSTATE (Appendix A of PostgreSQL's manual): data exceptions
    /// (class 22, such as a NUL in text, `invalid byte sequence`) and
    /// program limits (54, such as a value too long to index) are its
    /// values; an error in the statement (42 but 42501, 0A, 21, 26, 34) is
    /// the statement's own. `None` for everything else: the server could
    /// not be reached, could not or would not commit (a connection lost, a
    /// lock or statement timeout, a serialization failure, a full disk, a
    /// read-only standby after failover, a permission taken away, a
    /// trigger raising an exception).
    fn refusal(e: &dyn sqlx::error::DatabaseError) -> Option<Refusal> {
        let code = e.code()?;
        match (code.get(..2)?, code.as_ref()) {
            ("22" | "54", _) => Some(Refusal::Value),
            (_, "42501") => None,
            ("42" | "0A" | "21" | "26" | "34", _) => Some(Refusal::Statement),
            _ => None,
        }
    }

    /// `BEGIN` and the database-wide write lock in one round trip (both
    /// statements in one simple query).
    async fn begin_write(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        use sqlx::Executor as _;
        conn.execute(BEGIN_WRITE).await?;
        Ok(())
    }

    async fn after_batch(_conn: &mut PgConnection, _: &()) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

/// Ids are kept in `bytea` columns (migration 0014): a canonical UUID as
/// its 16 bytes, any other id as its text's bytes (`StoredId::packed`).
impl sqlx::Type<sqlx::Postgres> for StoredId<'_> {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&[u8] as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <&[u8] as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'q, 'a: 'q> sqlx::Encode<'q, sqlx::Postgres> for StoredId<'a> {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&[u8] as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&&*self.packed(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for StoredId<'static> {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(StoredId::unpack(<&[u8] as sqlx::Decode<sqlx::Postgres>>::decode(value)?)?)
    }
}

/// The PostgreSQL store.
pub type PgStore = body::Store;

/// How long a replica waits for another's migrations (or a migration for
/// the locks it needs).
const MIGRATION_LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// Connection settings shared by the pool, the writer and the leader lock.
///
/// A session that waits on a lock, or sits inside a transaction waiting
/// for a client that stalled, is ended by the server after `limit`: a
/// replica cut off mid-transaction cannot hold the write lock and stop the
/// others.
fn connect_options(url: &str, name: &str, limit: Duration) -> Result<PgConnectOptions, StoreError> {
    let ms = limit.max(Duration::from_secs(1)).as_millis().to_string();
    Ok(PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Unavailable(format!("invalid database.url: {e}")))?
        .application_name(name)
        .options([("lock_timeout", ms.as_str()), ("idle_in_transaction_session_timeout", ms.as_str())])
        .disable_statement_logging())
}

impl body::Store {
    /// Connects to the database at `url`, applies (or, without
    /// `auto_migrate`, requires) the migrations, and starts the writer task.
    pub async fn open(
        url: &str,
        name: &str,
        acquire_timeout: Duration,
        max_connections: u32,
        auto_migrate: bool,
    ) -> Result<Self, StoreError> {
        let options = connect_options(url, name, acquire_timeout * 2)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout.max(Duration::from_secs(1)))
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        // Replicas starting together wait for the one that migrates (sqlx
        // holds an advisory lock meanwhile): longer than the request path's
        // lock timeout allows, so on a connection of their own.
        let migrations = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire_timeout.max(Duration::from_secs(1)))
            .connect_with(connect_options(url, name, MIGRATION_LOCK_TIMEOUT)?)
            .await
            .map_err(unavailable)?;
        prepare_schema(&migrations, auto_migrate).await?;
        migrations.close().await;
        // The views are trusted only once the change listener is up.
        let store = Self::start(pool, options, acquire_timeout, false, Arc::default()).await?;
        tokio::spawn(listen_for_changes(store.pool.clone(), Arc::clone(&store.cache), store.lifetime.subscribe()));
        Ok(store)
    }
}

/// The channel the migration's triggers notify: `catalog` after any
/// change to systems, owners, grants, workload revocations or admin
/// tokens; `jti <jti>` for each credential revoked.
const CHANGES_CHANNEL: &str = "halflife_changes";

/// Keeps this replica's views current with what every replica commits. The
/// views are trusted only while the listener is connected; every
/// (re)connection drops them, since notifications sent while disconnected
/// are lost. Ends when the store is dropped.
async fn listen_for_changes(pool: PgPool, cache: Arc<Cache>, mut lifetime: tokio::sync::watch::Receiver<()>) {
    loop {
        tokio::select! {
            _ = lifetime.changed() => return,
            () = listen_once(&pool, &cache) => {}
        }
        cache.set_trusted(false);
        // Not for correctness: reads go to the database meanwhile.
        tokio::select! {
            _ = lifetime.changed() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One listener connection, until it fails.
async fn listen_once(pool: &PgPool, cache: &Cache) {
    let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for changes; reading revocation state from the database");
            return;
        }
    };
    if let Err(e) = listener.listen(CHANGES_CHANNEL).await {
        tracing::warn!(error = %e, "cannot listen for changes; reading revocation state from the database");
        return;
    }
    cache.set_trusted(true);
    tracing::debug!("listening for changes from every replica");
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match notification.payload().split_once(' ') {
                Some(("jti", jti)) => cache.forget(jti),
                _ => cache.catalog_changed(),
            },
            Ok(None) | Err(_) => {
                tracing::warn!("change listener disconnected; reading revocation state from the database");
                return;
            }
        }
    }
}

/// Leadership among replicas, by a session-level advisory lock held on a
/// dedicated connection. When the leader dies its session ends, PostgreSQL
/// releases the lock, and the next replica to ask takes over.
pub struct PgLeader {
    options: PgConnectOptions,
    timeout: Duration,
    /// The connection holding the lock, while this replica leads.
    held: Mutex<Option<PgConnection>>,
}

impl PgLeader {
    pub fn new(url: &str, name: &str, timeout: Duration) -> Result<Self, StoreError> {
        Ok(Self {
            options: connect_options(url, &format!("{name} (leader lock)"), timeout)?,
            timeout,
            held: Mutex::new(None),
        })
    }

    async fn try_acquire(&self) -> Result<Option<PgConnection>, sqlx::Error> {
        let mut conn = PgConnection::connect_with(&self.options).await?;
        let (got,): (bool,) =
            sqlx::query_as("SELECT pg_try_advisory_lock($1)").bind(LEADER_LOCK).fetch_one(&mut conn).await?;
        if got {
            Ok(Some(conn))
        } else {
            conn.close().await?;
            Ok(None)
        }
    }
}

#[async_trait]
impl Coordination for PgLeader {
    async fn lead(&self) -> bool {
        let mut held = self.held.lock().await;
        if let Some(conn) = held.as_mut() {
            // Still leading only while the session holding the lock is alive.
            match tokio::time::timeout(self.timeout, conn.ping()).await {
                Ok(Ok(())) => return true,
                _ => {
                    tracing::warn!("lost the connection holding the leader lock; stepping down");
                    *held = None;
                    return false;
                }
            }
        }
        match tokio::time::timeout(self.timeout, self.try_acquire()).await {
            Ok(Ok(Some(conn))) => {
                tracing::info!("this replica now runs the lifecycle reaper, jobs and audit checkpoints");
                *held = Some(conn);
                true
            }
            Ok(Ok(None)) => false,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot reach the database to take the leader lock");
                false
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-round-trip BEGIN takes the same lock as every other writer.
    #[test]
    fn begin_write_takes_the_write_lock() {
        assert_eq!(BEGIN_WRITE, format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"));
    }
}
