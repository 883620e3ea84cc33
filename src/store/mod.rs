//! Storage behind small traits, one per capability. Nothing outside this
//! module names sqlx; each backend converts its private row types into
//! domain types.
//!
//! The write path is shaped for group commit: callers hand a record to the
//! store and wait for the commit that contains it. The SQLite backend runs
//! one writer task that gathers concurrent records into one transaction.

pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;

use crate::domain::model::{Grant, GrantContext, Owner, OwnerStatus, System, Tier};
use crate::domain::values::{CredentialKind, GrantId, OwnerId, SystemId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot take the request now (down, locked, read-only,
    /// full). Callers answer 503 and issue nothing.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data violates an invariant (a bug or tampering).
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// The request conflicts with stored data (a uniqueness rule).
    #[error("{0}")]
    Conflict(String),
    /// The request refers to something that does not exist.
    #[error("{0}")]
    NotFound(String),
}

/// Where a request came from, for attribution.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Denied,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failure => "failure",
        }
    }
}

/// One entry of the audit log. Holds identifiers and fingerprints only:
/// never a token, secret or key.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub kind: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub actor: Option<String>,
    pub system_id: Option<String>,
    pub grant_id: Option<String>,
    pub jti: Option<String>,
    pub request_id: Option<String>,
    pub source: Option<String>,
    pub attestation_issuer: Option<String>,
    pub subject: Option<String>,
    pub attestation_id: Option<String>,
    pub audience: Option<String>,
    pub scopes: Option<String>,
    pub iat: Option<i64>,
    pub exp: Option<i64>,
    pub detail: Option<serde_json::Value>,
}

impl AuditEvent {
    pub fn new(kind: &str, outcome: Outcome, time: OffsetDateTime, meta: &RequestMeta) -> Self {
        Self {
            time,
            kind: kind.to_owned(),
            outcome,
            reason: None,
            actor: None,
            system_id: None,
            grant_id: None,
            jti: None,
            request_id: meta.request_id.clone(),
            source: meta.source.clone(),
            attestation_issuer: None,
            subject: None,
            attestation_id: None,
            audience: None,
            scopes: None,
            iat: None,
            exp: None,
            detail: None,
        }
    }
}

/// Guards a single-use attestation: the store refuses the issuance when a
/// record with the same issuer and token id exists.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    pub issuer: String,
    pub token_id: String,
    pub keep_until: OffsetDateTime,
}

/// A credential about to be released, with its issuance event. The store
/// commits both in one transaction or neither.
#[derive(Debug, Clone)]
pub struct Issuance {
    pub jti: String,
    pub kind: CredentialKind,
    pub system_id: SystemId,
    pub grant_id: GrantId,
    /// Trusted issuer name (from config).
    pub issuer: String,
    pub subject: String,
    pub audience: String,
    pub scopes: String,
    pub iat: OffsetDateTime,
    pub exp: OffsetDateTime,
    pub replay: Option<ReplayGuard>,
    /// The `credential.issued` event.
    pub event: AuditEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueOutcome {
    /// Credential and event are durably committed.
    Committed,
    /// A single-use attestation was already used; nothing was issued and a
    /// `credential.denied` event was committed instead.
    Replayed,
}

/// What the store knows about an issued credential.
#[derive(Debug, Clone)]
pub struct CredentialRecord {
    pub jti: String,
    pub revoked_at: Option<OffsetDateTime>,
    pub system: System,
    pub business_owner: Owner,
    pub technical_owner: Owner,
}

/// An administrative token's identity (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenRecord {
    pub id: String,
    pub name: String,
    pub role: String,
}

/// Declarative input for `halflife apply`, already validated.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub owners: Vec<OwnerSpec>,
    pub systems: Vec<SystemSpec>,
    pub grants: Vec<Grant>,
}

/// A date that is either given, or set once when the row is created and
/// then left alone by later applies (so re-applying is idempotent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateSpec {
    At(OffsetDateTime),
    OnCreate(Duration),
}

#[derive(Debug, Clone)]
pub struct OwnerSpec {
    pub id: OwnerId,
    pub display_name: String,
    pub email: String,
    pub status: OwnerStatus,
    pub attested_until: DateSpec,
}

#[derive(Debug, Clone)]
pub struct SystemSpec {
    pub id: SystemId,
    pub name: String,
    pub purpose: String,
    pub business_owner: OwnerId,
    pub technical_owner: OwnerId,
    pub tier: Tier,
    pub pilot_ends_at: Option<DateSpec>,
    pub data_classification: Option<String>,
}

/// What an apply changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Policy reads on the exchange path.
#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// Grants accepting tokens from the named issuer, each with its system
    /// and the system's owners as they are now.
    async fn grants_for_issuer(&self, issuer: &str) -> Result<Vec<GrantContext>, StoreError>;
}

/// The durable write path: issuances, denials and revocations, each with its
/// audit event, committed before the caller is answered.
#[async_trait]
pub trait IssuanceLog: Send + Sync {
    async fn record_issuance(&self, issuance: Issuance) -> Result<IssueOutcome, StoreError>;
    async fn record_event(&self, event: AuditEvent) -> Result<(), StoreError>;
    /// Marks one credential revoked (with its event). Returns whether it was
    /// active before: `false` for unknown or already revoked credentials.
    async fn revoke_credential(
        &self,
        jti: &str,
        reason: &str,
        event: AuditEvent,
    ) -> Result<bool, StoreError>;
}

#[async_trait]
pub trait CredentialStore: Send + Sync {
    async fn credential(&self, jti: &str) -> Result<Option<CredentialRecord>, StoreError>;
    /// Forgets single-use records whose tokens can no longer verify.
    async fn prune_replay_records(&self, now: OffsetDateTime) -> Result<u64, StoreError>;
}

#[async_trait]
pub trait AdminTokenStore: Send + Sync {
    async fn create_admin_token(
        &self,
        record: AdminTokenRecord,
        hash: [u8; 32],
        event: AuditEvent,
    ) -> Result<(), StoreError>;
    async fn admin_token_by_hash(
        &self,
        hash: [u8; 32],
    ) -> Result<Option<AdminTokenRecord>, StoreError>;
}

#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// Creates or updates owners, systems and grants in one transaction,
    /// recording an event for each change. Additive: nothing absent from
    /// the catalog is removed.
    async fn apply(
        &self,
        catalog: &Catalog,
        actor: &str,
        now: OffsetDateTime,
        dry_run: bool,
    ) -> Result<ApplyReport, StoreError>;
}

#[async_trait]
pub trait Health: Send + Sync {
    /// A cheap round trip proving the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
