//! The store body shared by both backends: systems, owners, grants,
//! credentials, keys and the audit trail in portable SQL (`$n`
//! placeholders, BIGINT integers, `ON CONFLICT`, no backend functions).
//!
//! This module is compiled once inside each backend module (`sqlite.rs`,
//! `postgres.rs`), against that backend's [`Dialect`] named `Backend`
//! there: everything it needs from a backend is in that trait, and it
//! reaches nothing else of the backend. The sqlx types below are the
//! dialect's.
//!
//! Reads use a pool. Writes on the request path go through one writer task
//! (`writer`) that owns its own connection and commits whatever has queued
//! up since the last commit as one transaction (group commit): each caller
//! is answered only after the transaction holding its record is durable.
//! Every write transaction starts with [`Dialect::begin_write`], which takes
//! the database-wide write lock (SQLite's `BEGIN IMMEDIATE`, a PostgreSQL
//! advisory transaction lock): writers, in one process or many, commit one
//! at a time, so row ids and the audit chain follow commit order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
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
use crate::store::dialect::{Dialect, Refusal};
use crate::store::*;

use super::Backend;

#[macro_use]
pub(super) mod rows;
mod approvals;
pub(super) mod audit;
mod catalog;
mod credentials;
mod keys;
pub(super) mod lifecycle;
mod views;
mod writer;

use rows::*;
use views::*;
use writer::*;

type Db = <Backend as Dialect>::Db;
type Conn = <Db as sqlx::Database>::Connection;
type DbRow = <Db as sqlx::Database>::Row;
type DbPool = sqlx::Pool<Db>;
type ConnectOpts = <Conn as sqlx::Connection>::Options;

/// What a failed statement means for its caller. An error the statement
/// itself caused is no outage: a value the database refuses (such as a NUL
/// in PostgreSQL text) is [`StoreError::InvalidValue`], a mistake in the
/// statement [`StoreError::Refused`], a write another one beat to a unique
/// key a [`StoreError::Conflict`] ([`Dialect::refusal`] tells them apart by SQLSTATE
/// or SQLite result code). Everything else is a failure to reach the
/// database or to have it commit: [`StoreError::Unavailable`], the outage
/// that answers 503 and that operators alert on. Unknown errors stay on
/// that side: no decision is recorded, so none is made.
pub(super) fn unavailable(e: sqlx::Error) -> StoreError {
    match &e {
        // Another writer got to the key first (the code checks before it
        // writes; only a race gets here).
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(
            "the change conflicts with another made at the same time; read the current state and retry".into(),
        ),
        sqlx::Error::Database(db) => match Backend::refusal(db.as_ref()) {
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
pub(super) async fn prepare_schema(pool: &DbPool, auto_migrate: bool) -> Result<(), StoreError> {
    if auto_migrate {
        return Backend::migrator()
            .run(pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")));
    }
    // No bookkeeping table means nothing was applied yet.
    let applied: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool).await.unwrap_or_default();
    let pending: Vec<String> = Backend::migrator()
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

#[derive(Clone)]
pub struct Store {
    pub(super) pool: DbPool,
    writer: mpsc::Sender<WriteJob>,
    pub(super) cache: Arc<Cache>,
    /// Dropped with the last clone of this store, which stops the tasks
    /// that serve it (PostgreSQL's change listener, SQLite's checkpoints).
    pub(super) lifetime: Arc<tokio::sync::watch::Sender<()>>,
    /// How long the writer's committed batches took (see [`Writer`]).
    commits: Histogram,
}

impl Store {
    /// Starts the writer task on its own connection and seals events
    /// written before the audit chain existed. `trusted`: whether the
    /// in-memory views may be used from the start (see [`Cache`]);
    /// `between`: what the writer keeps between batches
    /// ([`Dialect::BetweenBatches`]).
    pub(super) async fn start(
        pool: DbPool,
        options: ConnectOpts,
        busy_timeout: Duration,
        trusted: bool,
        between: Arc<<Backend as Dialect>::BetweenBatches>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let cache = Arc::new(Cache::new(trusted));
        // 0.1 ms to about 1.6 s.
        let commits = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        let writer = Writer {
            options,
            limit: busy_timeout.max(Duration::from_secs(1)) * 2,
            cache: Arc::clone(&cache),
            between,
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
    pub(super) async fn credential_from_db(&self, jti: &str) -> Result<Option<CredentialRecord>, StoreError> {
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
    pub(super) async fn index_from_db(&self, jti: &str) -> Result<Option<Found>, StoreError> {
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
}
