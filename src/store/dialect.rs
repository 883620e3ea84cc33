//! What the shared SQL store body (`sql/`) needs from a database backend.
//!
//! The body is written once and compiled inside each backend module
//! against that backend's [`Dialect`]; the trait is the whole interface
//! between them, so a backend is checked by the compiler to provide all of
//! it and the body cannot reach anything else. Behaviour that only one
//! backend has (SQLite's WAL checkpoints, PostgreSQL's leader lock and
//! change listener) lives in the backend module, outside the body.

use std::future::Future;

use sqlx::Database;

use super::StoredId;

/// Why the database refused a statement, when the statement caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A value the statement holds.
    Value,
    /// The statement itself.
    Statement,
}

/// A database backend for the shared store body.
pub(crate) trait Dialect: 'static
where
    for<'q> StoredId<'q>: sqlx::Type<Self::Db> + sqlx::Encode<'q, Self::Db>,
    for<'r> StoredId<'static>: sqlx::Decode<'r, Self::Db>,
{
    /// The sqlx driver.
    type Db: Database;
    /// What the group-commit writer keeps between batches for
    /// [`Dialect::after_batch`].
    type BetweenBatches: Send + Sync + 'static;

    /// Opens a write transaction holding the database-wide write lock,
    /// as one simple query.
    const BEGIN_WRITE: &'static str;
    /// `CONTAINS_FN(haystack, needle) > 0` when `needle` occurs in
    /// `haystack`.
    const CONTAINS_FN: &'static str;
    /// Starts the read transaction that loads the catalog view.
    const SNAPSHOT_BEGIN: &'static str;
    /// Whether a group-commit batch takes the write lock in the same
    /// execution as its first read (else `begin_write` runs first, alone).
    const BATCH_BEGINS_WITH_READ: bool;
    /// Whether a batch's closing statements (and COMMIT) go to the
    /// database as one execution (else as the data-modifying CTEs of one
    /// statement).
    const ONE_EXECUTION: bool;
    /// Whether the writer gives credential ids in the INSERT (counted on
    /// from the largest read under the write lock) rather than reading
    /// back the ids the database picked.
    const EXPLICIT_CREDENTIAL_IDS: bool;
    /// Whether the planner decides without statistics (SQLite, where
    /// nothing runs ANALYZE): a query that must use one index and not
    /// another says so.
    const PLANS_WITHOUT_STATISTICS: bool;

    /// The backend's migrations.
    fn migrator() -> &'static sqlx::migrate::Migrator;

    /// SQL for a stored chain hash (32 bytes) in `column` as lower-case hex
    /// text.
    fn hash_hex(column: &str) -> String;

    /// Whether the database refused a statement for something the
    /// statement caused (its value, or the statement itself), rather than
    /// for being unreachable or unable to commit (`None`).
    fn refusal(e: &dyn sqlx::error::DatabaseError) -> Option<Refusal>;

    /// Starts a write transaction holding the database-wide write lock.
    fn begin_write(
        conn: &mut <Self::Db as Database>::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Work the group-commit writer does on its connection between
    /// batches, while no batch commits.
    fn after_batch(
        conn: &mut <Self::Db as Database>::Connection,
        between: &Self::BetweenBatches,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}
