//! The embedded SQLite store (WAL, `synchronous = FULL`): the default, for
//! one node.
//!
//! The store body is shared with PostgreSQL (`src/store/sql/`); this module
//! supplies SQLite's types, connection settings and write lock. SQLite
//! allows one writer at a time, taken by `BEGIN IMMEDIATE`; the single
//! group-commit writer also avoids the lock convoy many concurrent SQLite
//! writers produce.

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

use super::*;

type Db = sqlx::Sqlite;
type Conn = sqlx::SqliteConnection;
type DbRow = SqliteRow;
type DbPool = SqlitePool;
type ConnectOpts = SqliteConnectOptions;

/// `CONTAINS_FN(haystack, needle) > 0` when `needle` occurs in `haystack`.
const CONTAINS_FN: &str = "instr";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Starts a write transaction holding the database's write lock.
async fn begin_write(conn: &mut Conn) -> Result<(), sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    Ok(())
}

/// Starts the read transaction that loads the catalog view.
const SNAPSHOT_BEGIN: &str = "BEGIN";

include!("sql/core.rs");

mod lifecycle {
    use super::*;
    include!("sql/lifecycle.rs");
}

mod audit {
    use super::*;
    include!("sql/audit.rs");
}

/// The SQLite store.
pub type SqliteStore = Store;

/// One node leads itself.
pub struct SoleLeader;

#[async_trait]
impl Coordination for SoleLeader {
    async fn lead(&self) -> bool {
        true
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`, and
    /// starts the writer task.
    pub async fn open(
        url: &str,
        busy_timeout: Duration,
        max_connections: u32,
        auto_migrate: bool,
    ) -> Result<Self, StoreError> {
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
        prepare_schema(&pool, &MIGRATOR, auto_migrate).await?;
        // One node, so every change is made by this process (which updates
        // its views as it commits) or seen by the reconciliation poll.
        let store = Self::start(pool, options, busy_timeout, true).await?;
        tokio::spawn(checkpoint_wal(store.pool.clone(), store.lifetime.subscribe()));
        Ok(store)
    }
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
/// a checkpoint has caught up.
async fn checkpoint_wal(pool: SqlitePool, mut lifetime: tokio::sync::watch::Receiver<()>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = lifetime.changed() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            tracing::warn!(error = %e, "write-ahead log checkpoint failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            format!("SELECT c.jti, c.kind, c.db_role {} LIMIT 500", lifecycle::DUE_LOGINS),
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
}
