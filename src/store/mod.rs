//! Storage behind small traits, one per capability. Nothing outside this
//! module names sqlx; each backend converts its private row types into
//! domain types.
//!
//! The write path is shaped for group commit: callers hand a record to the
//! store and wait for the commit that contains it. Each backend runs one
//! writer task that gathers concurrent records into one transaction.
//!
//! Two backends share one body of SQL (`sql/`): SQLite, embedded, for one
//! node; PostgreSQL for several replicas. `database.url` picks one.

pub mod cache;
pub(crate) mod dialect;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;

pub use crate::audit::{AuditEvent, Outcome, RequestMeta};
use crate::config::BackendKind;
use crate::domain::approval::AccessRequest;
use crate::domain::catalog::CatalogState;
use crate::domain::model::{Grant, GrantContext, Owner, System};
use crate::domain::values::{CredentialKind, GrantId, OwnerId, SystemId};

/// The length of a UUID's bytes, the one length a packed text id never has.
const UUID_LEN: usize = 16;
/// Marks a packed text id of [`UUID_LEN`] bytes; UTF-8 never holds it.
const TEXT_MARK: u8 = 0xFF;

/// A credential, request or attestation id as a store keeps it. A UUID in
/// canonical form (lower-case, hyphenated) is kept as its 16 bytes; any
/// other id as its text: as a text value where the backend lets a column
/// hold either (SQLite), as the text's bytes in a `bytea` column on
/// PostgreSQL (see [`StoredId::packed`]). Either way it reads back as the
/// text it was given, which the audit chain hashes depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredId<'a>(pub(crate) std::borrow::Cow<'a, str>);

impl<'a> StoredId<'a> {
    pub(crate) fn of(id: &'a str) -> Self {
        Self(std::borrow::Cow::Borrowed(id))
    }

    pub(crate) fn owned(id: String) -> StoredId<'static> {
        StoredId(std::borrow::Cow::Owned(id))
    }

    pub(crate) fn into_string(self) -> String {
        self.0.into_owned()
    }

    /// The UUID's 16 bytes, when the id is one written in canonical form:
    /// the only form that the bytes give back unchanged.
    pub(crate) fn uuid_bytes(&self) -> Option<[u8; 16]> {
        if self.0.len() != 36 {
            return None;
        }
        let id = uuid::Uuid::try_parse(&self.0).ok()?;
        let mut text = [0u8; 36];
        (*id.hyphenated().encode_lower(&mut text) == *self.0).then(|| *id.as_bytes())
    }

    /// The id whose stored form is `bytes`: a UUID's 16 bytes.
    pub(crate) fn from_uuid_bytes(bytes: &[u8]) -> Option<StoredId<'static>> {
        let id = uuid::Uuid::from_slice(bytes).ok()?;
        Some(StoredId(std::borrow::Cow::Owned(id.hyphenated().to_string())))
    }

    /// The id as one byte string, for a column that holds bytes only
    /// (PostgreSQL's `bytea`): a canonical UUID as its 16 bytes, any other id
    /// as its UTF-8 text, which is preceded by a 0xFF byte (never part of
    /// UTF-8) when it is itself 16 bytes long. So 16 bytes are always a UUID.
    pub(crate) fn packed(&self) -> std::borrow::Cow<'_, [u8]> {
        use std::borrow::Cow;
        if let Some(bytes) = self.uuid_bytes() {
            return Cow::Owned(bytes.to_vec());
        }
        let text = self.0.as_bytes();
        if text.len() == UUID_LEN {
            let mut marked = Vec::with_capacity(UUID_LEN + 1);
            marked.push(TEXT_MARK);
            marked.extend_from_slice(text);
            Cow::Owned(marked)
        } else {
            Cow::Borrowed(text)
        }
    }

    /// The id whose [`packed`](Self::packed) form is `bytes`.
    pub(crate) fn unpack(bytes: &[u8]) -> Result<StoredId<'static>, String> {
        if bytes.len() == UUID_LEN {
            return Self::from_uuid_bytes(bytes).ok_or_else(|| "an id of 16 bytes is not a UUID".to_owned());
        }
        let text = match bytes.strip_prefix(&[TEXT_MARK]) {
            Some(text) if text.len() == UUID_LEN => text,
            Some(_) => return Err(format!("a marked id of {} bytes was not packed here", bytes.len())),
            None => bytes,
        };
        String::from_utf8(text.to_vec())
            .map(StoredId::owned)
            .map_err(|_| format!("an id of {} bytes is not UTF-8 text", bytes.len()))
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot take the request now: it could not be reached or
    /// would not commit (down, locked, read-only, full, timed out, a trigger
    /// or rule of its own refusing the write). Callers answer 503 and issue
    /// nothing. The only variant that is an outage.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The database refused a value of the request: PostgreSQL's data
    /// exceptions (SQLSTATE class 22, such as a NUL in text) and program
    /// limits (class 54, such as a value too long to index), SQLite's
    /// too-big and mismatched values. The request is at fault, not the
    /// database: 400.
    #[error("the database refused a value: {0}")]
    InvalidValue(String),
    /// The statement itself is wrong (an error in its SQL, an unknown
    /// column, a row or type that is not there): a bug, 500.
    #[error("the database refused a statement: {0}")]
    Refused(String),
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

/// Guards something that works once (a single-use attestation, a DPoP
/// proof): the store refuses the issuance when a record with the same
/// issuer and token id exists.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    pub kind: ReplayKind,
    pub issuer: String,
    pub token_id: String,
    pub keep_until: OffsetDateTime,
}

/// What a replay guard protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayKind {
    Attestation,
    /// A delegation's subject token, from a single-use issuer.
    SubjectToken,
    DpopProof,
}

impl ReplayKind {
    /// The audit reason when a replay is refused.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Attestation => "single-use attestation was already used (replay)",
            Self::SubjectToken => "single-use subject token was already used (replay)",
            Self::DpopProof => "DPoP proof was already used (replay)",
        }
    }
}

/// A credential about to be released, with its issuance event. The store
/// commits both in one transaction or neither.
#[derive(Debug, Clone)]
pub struct Issuance {
    pub jti: String,
    pub kind: CredentialKind,
    pub system_id: SystemId,
    pub grant_id: GrantId,
    /// The grant's version the decision was taken on.
    pub grant_version: i64,
    /// Trusted issuer name (from config).
    pub issuer: String,
    pub subject: String,
    /// For a delegated credential: on whose behalf it acts (issuer name and
    /// subject of the chain's first subject). Revoking that identity
    /// revokes the credential too.
    pub principal: Option<(String, String)>,
    pub audience: String,
    pub scopes: String,
    pub iat: OffsetDateTime,
    pub exp: OffsetDateTime,
    /// Checked in order; the first replayed one refuses the issuance.
    pub replay: Vec<ReplayGuard>,
    /// For an opaque secret: its keyed hash (never the secret).
    pub secret_hash: Option<String>,
    /// For a database login: the role created on the backend.
    pub db_role: Option<String>,
    /// The approval it is issued under, if its grant needs one: it must
    /// still allow issuance when the credential commits, and revoking it
    /// revokes the credential.
    pub approval: Option<String>,
    /// The `credential.issued` event.
    pub event: AuditEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueOutcome {
    /// Credential and event are durably committed.
    Committed,
    /// A single-use attestation or a DPoP proof was already used; nothing
    /// was issued and a `credential.denied` event was committed instead.
    Replayed(ReplayKind),
    /// The system was suspended or retired after the decision; nothing was
    /// issued and a `credential.denied` event was committed instead.
    SystemStopped,
    /// The grant was removed or changed after the decision; nothing was
    /// issued and a `credential.denied` event was committed instead.
    GrantChanged,
    /// The approval it was decided under was revoked or ended after the
    /// decision; nothing was issued and a `credential.denied` event was
    /// committed instead.
    ApprovalEnded,
}

/// What the store knows about an issued credential.
#[derive(Debug, Clone)]
pub struct CredentialRecord {
    pub jti: String,
    /// Row id: monotonic in commit order, compared with revocation epochs.
    pub id: i64,
    pub revoked_at: Option<OffsetDateTime>,
    /// Credentials of this system with an id at or below this are revoked.
    pub system_revoked_through: i64,
    /// Credentials of this workload with an id at or below this are revoked.
    pub workload_revoked_through: i64,
    /// For a delegated credential: the epoch of the identity it acts for.
    pub principal_revoked_through: i64,
    /// Credentials of this workload in this system with an id at or below
    /// this are revoked: a grant that covered them was removed or narrowed.
    pub grant_revoked_through: i64,
    pub system: System,
    pub business_owner: Owner,
    pub technical_owner: Owner,
    /// Its workload and, if it is delegated, the identity it acts for.
    pub parties: Arc<cache::Parties>,
}

impl CredentialRecord {
    /// Revoked singly, with its system, its workload, the identity it acts
    /// for, or its grant.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
            || self.id <= self.system_revoked_through
            || self.id <= self.workload_revoked_through
            || self.id <= self.principal_revoked_through
            || self.id <= self.grant_revoked_through
    }
}

/// What was issued as an opaque secret: the claims a JWT would carry.
#[derive(Debug, Clone)]
pub struct StoredSecret {
    pub jti: String,
    pub secret_hash: String,
    pub system_id: String,
    pub subject: String,
    pub audience: String,
    pub scopes: String,
    pub iat: i64,
    pub exp: i64,
}

/// An outstanding credential as operators see it: never the token.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialSummary {
    pub jti: String,
    pub kind: String,
    pub grant_id: String,
    pub issuer: String,
    pub subject: String,
    pub audience: String,
    pub scopes: String,
    #[serde(with = "time::serde::rfc3339")]
    pub iat: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub exp: OffsetDateTime,
}

/// The result of a revocation: how many active credentials it made
/// inactive. The request itself writes a constant number of rows whatever
/// that count; marking the credential rows happens in a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RevocationOutcome {
    pub revoked: u64,
}

/// Whose credentials a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum RevokeTarget {
    System {
        system_id: String,
    },
    Workload {
        issuer: String,
        subject: String,
    },
    /// The workloads a removed or narrowed grant covered, in its system.
    Grant {
        system_id: String,
        grant_id: String,
        workloads: Vec<i64>,
    },
}

/// Durable background work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobSpec {
    /// Mark the rows an epoch revoked (`id <= through`) as revoked.
    MarkRevoked {
        target: RevokeTarget,
        through: i64,
        /// Rows up to this id are done (the job's cursor).
        #[serde(default)]
        after: i64,
        reason: String,
        at: i64,
    },
    /// POST a lifecycle notice to the configured webhook.
    Webhook { body: serde_json::Value },
    /// Destroy a dynamic database login: end its sessions, drop what it
    /// owns, drop the role.
    DropLogin { backend: String, role: String, jti: String },
}

impl JobSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MarkRevoked { .. } => "mark_revoked",
            Self::Webhook { .. } => "webhook",
            Self::DropLogin { .. } => "drop_login",
        }
    }
}

/// How many pending jobs of a kind are (or are not) failing.
#[derive(Debug, Clone)]
pub struct JobStat {
    pub kind: String,
    pub failing: bool,
    pub count: i64,
}

/// A queued job and its progress.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    #[serde(skip)]
    pub spec: Option<JobSpec>,
    pub state: String,
    pub attempts: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A lifecycle warning, recorded once per subject and deadline.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    pub kind: String,
    pub subject_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An automation (admin) token's identity (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    /// None for tokens created before tokens expired.
    pub expires_at: Option<OffsetDateTime>,
}

/// An automation token as listed (never the token).
#[derive(Debug, Clone, Serialize)]
pub struct AdminTokenListing {
    pub id: String,
    pub name: String,
    pub role: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A person linked to an owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerPerson {
    pub issuer: String,
    pub subject: String,
    #[serde(with = "time::serde::rfc3339")]
    pub linked_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
}

/// A person's session (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRecord {
    pub id: String,
    /// The people issuer's `iss`, and the person's `sub` there.
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// Role names, as mapped from the person's groups at sign-in.
    pub roles: Vec<String>,
    /// The person's groups at sign-in (for grants whose approvers are groups).
    #[serde(skip)]
    pub groups: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// Policy reads on the exchange path.
#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// Grants accepting tokens from the named issuer, each with its system
    /// and the system's owners as they are now. Served from memory while
    /// the catalog view is current.
    async fn grants_for_issuer(&self, issuer: &str) -> Result<Arc<Vec<GrantContext>>, StoreError>;
}

/// The durable write path: issuances, denials and revocations, each with its
/// audit event, committed before the caller is answered.
#[async_trait]
pub trait IssuanceLog: Send + Sync {
    async fn record_issuance(&self, issuance: Issuance) -> Result<IssueOutcome, StoreError>;
    async fn record_event(&self, event: AuditEvent) -> Result<(), StoreError>;
    /// Marks one credential revoked (with its event). Returns whether it was
    /// active before: `false` for unknown or already revoked credentials.
    async fn revoke_credential(&self, jti: &str, reason: &str, event: AuditEvent) -> Result<bool, StoreError>;
    /// How long each committed group-commit batch took, from its first
    /// statement to its commit, if this log keeps the figure.
    fn commit_durations(&self) -> Option<prometheus_client::metrics::histogram::Histogram> {
        None
    }
}

#[async_trait]
pub trait CredentialStore: Send + Sync {
    async fn credential(&self, jti: &str) -> Result<Option<CredentialRecord>, StoreError>;
    /// The opaque secret stored under `hash`, whatever its state.
    async fn secret_credential(&self, hash: &str) -> Result<Option<StoredSecret>, StoreError>;
    /// Forgets what expiry has made moot: single-use records whose tokens
    /// can no longer verify, and active-credential counts past their expiry.
    /// Returns the number of single-use records removed.
    async fn prune_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError>;
}

#[async_trait]
pub trait AdminTokenStore: Send + Sync {
    async fn create_admin_token(
        &self,
        record: AdminTokenRecord,
        hash: [u8; 32],
        event: AuditEvent,
    ) -> Result<(), StoreError>;
    async fn admin_token_by_hash(&self, hash: [u8; 32]) -> Result<Option<AdminTokenRecord>, StoreError>;
    /// Every automation token, newest first, revoked ones included.
    async fn admin_tokens(&self) -> Result<Vec<AdminTokenListing>, StoreError>;
    /// Revokes a token (with its event); `false` if it does not exist or
    /// was already revoked.
    async fn revoke_admin_token(&self, id: &str, event: AuditEvent) -> Result<bool, StoreError>;
    /// Records that the token was used at `at`.
    async fn admin_token_used(&self, id: &str, at: OffsetDateTime) -> Result<(), StoreError>;
}

/// A decision on an access request: its new state and what goes with it.
#[derive(Debug, Clone)]
pub struct AccessDecision {
    pub state: crate::domain::approval::AccessState,
    pub at: OffsetDateTime,
    /// The deciding person (as events name actors), or `lifecycle`.
    pub by: String,
    pub reason: Option<String>,
    pub approved_until: Option<OffsetDateTime>,
    pub break_glass: bool,
}

/// Access requests (approvals for sensitive grants).
#[async_trait]
pub trait AccessRequestStore: Send + Sync {
    /// The newest request with `key` whose key is still open.
    async fn latest_access_request(&self, key: &str) -> Result<Option<AccessRequest>, StoreError>;
    /// Records a new pending request with its event (and webhook job),
    /// unless one with the same key is pending or approved by the time the
    /// write lock is held: then that one is returned and nothing written.
    async fn open_access_request(
        &self,
        request: AccessRequest,
        event: AuditEvent,
        job: Option<JobSpec>,
    ) -> Result<AccessRequest, StoreError>;
    async fn access_request(&self, id: &str) -> Result<Option<AccessRequest>, StoreError>;
    /// Requests in `state` (all when `None`), newest first, at most `limit`.
    async fn access_requests(
        &self,
        state: Option<crate::domain::approval::AccessState>,
        limit: i64,
    ) -> Result<Vec<AccessRequest>, StoreError>;
    /// Moves request `id` from one of the states `from` to the decision's,
    /// with its events (and webhook jobs). `None` if it was in none of them.
    async fn decide_access_request(
        &self,
        id: &str,
        from: &[crate::domain::approval::AccessState],
        decision: AccessDecision,
        events: Vec<AuditEvent>,
        jobs: Vec<JobSpec>,
    ) -> Result<Option<AccessRequest>, StoreError>;
    /// Takes a request's key out of use: the next ask opens a new request.
    async fn close_access_request(&self, id: &str) -> Result<(), StoreError>;
    /// Marks a break-glass approval reviewed; `false` if there is no such
    /// unreviewed approval.
    async fn review_access_request(
        &self,
        id: &str,
        by: &str,
        at: OffsetDateTime,
        event: AuditEvent,
    ) -> Result<bool, StoreError>;
    /// Break-glass approvals not yet reviewed, oldest first.
    async fn unreviewed_access(&self) -> Result<Vec<AccessRequest>, StoreError>;
    /// The credentials issued under approval `id`.
    async fn approval_credentials(&self, id: &str) -> Result<Vec<String>, StoreError>;
}

/// People's sessions. Read from the database on every use, so that a
/// revocation holds at once on every replica.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Records a session with its event, and links the person to
    /// `owners` (ids of owners whose email is the person's verified one).
    async fn create_session(
        &self,
        record: SessionRecord,
        hash: [u8; 32],
        event: AuditEvent,
        owners: Vec<String>,
    ) -> Result<(), StoreError>;
    /// The owners linked to the person (`issuer`, `subject`).
    async fn owners_of_person(&self, issuer: &str, subject: &str) -> Result<Vec<String>, StoreError>;
    /// The people linked to an owner.
    async fn people_of_owner(&self, owner: &str) -> Result<Vec<OwnerPerson>, StoreError>;
    /// The session whose token hashes to `hash`, unless revoked (expiry is
    /// the caller's to check, against its clock).
    async fn session_by_hash(&self, hash: [u8; 32]) -> Result<Option<SessionRecord>, StoreError>;
    /// Sessions neither revoked nor expired at `now`, newest first; only
    /// those of one person when `person` (issuer, subject) is given.
    async fn sessions(
        &self,
        now: OffsetDateTime,
        person: Option<(&str, &str)>,
    ) -> Result<Vec<SessionRecord>, StoreError>;
    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Revokes a session (with its event); `false` if it does not exist
    /// or was already revoked.
    async fn revoke_session(&self, id: &str, event: AuditEvent) -> Result<bool, StoreError>;
}

/// Writes of owners, systems and grants. Every change to them goes through
/// one [`CatalogTx`]: the caller reads the catalog under the write lock,
/// decides by the rules of `domain::catalog`, and writes the plan with its
/// events in the same transaction. The store has no rules about content.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// Opens a write transaction holding the database-wide write lock until
    /// it is committed or dropped (dropped: rolled back). Rows it writes
    /// record `now` as their creation or update time.
    async fn begin_catalog(&self, now: OffsetDateTime) -> Result<Box<dyn CatalogTx>, StoreError>;
}

/// One catalog write transaction (see [`CatalogStore`]).
#[async_trait]
pub trait CatalogTx: Send {
    /// Every owner, system and grant, as they are under the lock.
    async fn state(&mut self) -> Result<CatalogState, StoreError>;
    /// Inserts (`insert`) or updates an owner.
    async fn put_owner(&mut self, owner: &Owner, insert: bool) -> Result<(), StoreError>;
    /// Inserts (`insert`) or updates a system.
    async fn put_system(&mut self, system: &System, insert: bool) -> Result<(), StoreError>;
    /// Inserts (`insert`) or updates a grant; an update bumps its version,
    /// so issuances decided on the old version are refused at commit.
    async fn put_grant(&mut self, grant: &Grant, insert: bool) -> Result<(), StoreError>;
    async fn delete_grant(&mut self, grant: &Grant) -> Result<(), StoreError>;
    /// Raises the system's revocation epoch: everything it holds is revoked.
    async fn revoke_system(
        &mut self,
        system: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<RevocationOutcome, StoreError>;
    /// Revokes, in the grant's system, every credential issued before now
    /// to a workload identity the grant covers (its issuer, and a subject
    /// its pattern matches): one epoch per such workload in that system.
    async fn revoke_grant(
        &mut self,
        grant: &Grant,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<RevocationOutcome, StoreError>;
    async fn event(&mut self, event: &AuditEvent) -> Result<(), StoreError>;
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// Systems, owners, grants, revocation and the job queue: the operator's
/// write paths and the reaper's reads. Every write commits with its event.
#[async_trait]
pub trait LifecycleStore: Send + Sync {
    async fn list_systems(&self) -> Result<Vec<crate::domain::lifecycle::SystemView>, StoreError>;
    async fn system(&self, id: &SystemId) -> Result<Option<crate::domain::lifecycle::SystemView>, StoreError>;
    /// Raises the revocation epoch of a system or workload (one write).
    async fn revoke(
        &self,
        target: &RevokeTarget,
        reason: &str,
        event: AuditEvent,
    ) -> Result<RevocationOutcome, StoreError>;
    async fn list_owners(&self) -> Result<Vec<Owner>, StoreError>;
    async fn owner(&self, id: &OwnerId) -> Result<Option<Owner>, StoreError>;
    async fn grants(&self, system: &SystemId) -> Result<Vec<Grant>, StoreError>;
    async fn outstanding_credentials(
        &self,
        system: &SystemId,
        now: OffsetDateTime,
    ) -> Result<Vec<CredentialSummary>, StoreError>;
    /// How many credentials each system holds that are still active at
    /// `now` (not expired, not revoked by any means).
    async fn active_credentials_by_system(&self, now: OffsetDateTime) -> Result<Vec<(String, i64)>, StoreError>;
    /// Records a notice once; returns false if it was already recorded.
    async fn record_notice(&self, notice: &Notice, event: AuditEvent, job: Option<JobSpec>)
    -> Result<bool, StoreError>;
    async fn list_notices(&self, since: OffsetDateTime) -> Result<Vec<Notice>, StoreError>;
}

/// The durable job queue.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Pending jobs counted by kind and whether they have failed at least
    /// `failing_after` times.
    async fn job_stats(&self, failing_after: i64) -> Result<Vec<JobStat>, StoreError>;
    /// Queues a `drop_login` job for every live database login that is
    /// revoked (singly, by epoch, or because its system stopped) or expired
    /// at `now`, in the same transaction as marking it `dropping`. Returns
    /// how many were queued.
    async fn queue_login_drops(&self, now: OffsetDateTime) -> Result<usize, StoreError>;
    /// Records that a login's role is gone.
    async fn login_dropped(&self, jti: &str) -> Result<(), StoreError>;
    /// Roles of logins not yet dropped (what a sweep must keep).
    async fn kept_login_roles(&self) -> Result<Vec<String>, StoreError>;
    async fn due_jobs(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Job>, StoreError>;
    async fn job_done(&self, id: i64, now: OffsetDateTime) -> Result<(), StoreError>;
    async fn job_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    async fn list_jobs(&self, include_done: bool) -> Result<Vec<Job>, StoreError>;
    /// Marks the next `limit` rows after `after` (up to `through`) that an
    /// epoch revoked; returns the last id covered, or `None` when done.
    async fn mark_revoked(
        &self,
        target: &RevokeTarget,
        through: i64,
        after: i64,
        reason: &str,
        at: i64,
        limit: u32,
    ) -> Result<Option<i64>, StoreError>;
    /// Saves a job's progress and runs it again at once (no attempt spent).
    async fn job_continue(&self, id: i64, spec: &JobSpec, now: OffsetDateTime) -> Result<(), StoreError>;
}

/// Which audit events to return. Every value is bound as a parameter.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub system: Option<String>,
    /// Events whose system had this owner at the time.
    pub owner: Option<String>,
    /// A workload subject: events of that workload, and of credentials
    /// issued on its behalf (as the subject of a delegation).
    pub workload: Option<String>,
    /// The acting workload's subject (a delegation's actor, or a workload
    /// acting for itself).
    pub actor: Option<String>,
    /// Events of credentials issued on this subject's behalf (a person, or
    /// the workload a delegation chain started from).
    pub subject: Option<String>,
    /// Attestation issuer (`iss`) of the workload.
    pub issuer: Option<String>,
    /// An exact kind, or a family written `system.*`.
    pub kind: Option<String>,
    pub outcome: Option<String>,
    pub jti: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only events with a sequence number at least this.
    pub from_seq: Option<i64>,
    /// Only events with a sequence number at most this.
    pub to_seq: Option<i64>,
    /// Newest first: the cursor then names the event the page continues
    /// before, not after.
    pub newest_first: bool,
}

/// Read-only access to the audit log: what auditors get.
#[async_trait]
pub trait AuditReader: Send + Sync {
    /// Events matching `filter` with `seq > after`, oldest first.
    async fn audit_events(
        &self,
        filter: &AuditFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<crate::audit::AuditRecord>, StoreError>;
    /// The hash of event `seq`, if it exists.
    async fn audit_hash(&self, seq: i64) -> Result<Option<String>, StoreError>;
    /// The newest event's sequence number and hash.
    async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError>;
    async fn checkpoints(&self) -> Result<Vec<crate::audit::Checkpoint>, StoreError>;
    /// The stored credential row behind a `jti`, for its story.
    async fn credential_row(&self, jti: &str) -> Result<Option<serde_json::Value>, StoreError>;
}

/// Writes signed checkpoints.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    async fn write_checkpoint(&self, checkpoint: &crate::audit::Checkpoint) -> Result<(), StoreError>;
}

/// The broker's signing keys, sealed, shared by every replica.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Every stored key, oldest first.
    async fn signing_keys(&self) -> Result<Vec<crate::keys::SealedKey>, StoreError>;
    /// Stores `key` with `event`, unless its key id is stored already or,
    /// with `only_if_alg_absent`, a key of its algorithm is. Decided under
    /// the write lock, so replicas starting together agree on one key.
    /// Returns whether it was stored.
    async fn add_signing_key(
        &self,
        key: &crate::keys::SealedKey,
        only_if_alg_absent: bool,
        event: AuditEvent,
    ) -> Result<bool, StoreError>;
    /// Withdraws a key from `at`, with `event`; `false` if it is unknown or
    /// already retired.
    async fn retire_signing_key(&self, kid: &str, at: OffsetDateTime, event: AuditEvent) -> Result<bool, StoreError>;
}

#[async_trait]
pub trait Health: Send + Sync {
    /// A cheap round trip proving the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The in-memory views (see [`cache`]) and what keeps them current.
#[async_trait]
pub trait Views: Send + Sync {
    /// One reconciliation pass: notices catalog changes made by processes
    /// that could not notify this one, and forgets credentials expired at
    /// `now`. Run every `database.sync_interval` on every replica.
    async fn reconcile(&self, now: OffsetDateTime) -> Result<(), StoreError>;
}

/// Singleton background work (lifecycle reaper, jobs, audit checkpoints)
/// runs on one replica at a time: the one that leads.
#[async_trait]
pub trait Coordination: Send + Sync {
    /// Whether this process leads now. Called before each pass; a replica
    /// that stops leading (its database session ended) answers `false`.
    async fn lead(&self) -> bool;
}

/// Every capability of a store, for the composition root.
pub trait Backend:
    PolicyStore
    + IssuanceLog
    + CredentialStore
    + AdminTokenStore
    + SessionStore
    + AccessRequestStore
    + CatalogStore
    + LifecycleStore
    + JobStore
    + AuditReader
    + CheckpointStore
    + KeyStore
    + Health
    + Views
{
}

impl<T> Backend for T where
    T: PolicyStore
        + IssuanceLog
        + CredentialStore
        + AdminTokenStore
        + SessionStore
        + AccessRequestStore
        + SessionStore
        + CatalogStore
        + LifecycleStore
        + JobStore
        + AuditReader
        + CheckpointStore
        + KeyStore
        + Health
        + Views
{
}

/// How to open the database.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub url: String,
    /// SQLite: how long a write waits for another process's lock.
    /// PostgreSQL: how long to wait for a pooled connection. Both: a write
    /// batch that takes longer than twice this fails with 503.
    pub busy_timeout: Duration,
    pub max_connections: u32,
    /// Apply pending migrations; when false, refuse to open while any is
    /// pending.
    pub auto_migrate: bool,
    /// Names this process's PostgreSQL sessions (`pg_stat_activity`), so an
    /// operator can tell replicas apart, e.g. which one holds the leader lock.
    pub application_name: String,
}

/// An open store and the leadership that goes with it.
pub struct Opened {
    pub store: Arc<dyn Backend>,
    pub leader: Arc<dyn Coordination>,
}

/// Opens the database `options.url` names.
pub async fn open(options: &OpenOptions) -> Result<Opened, StoreError> {
    let (url, timeout, max) = (options.url.as_str(), options.busy_timeout, options.max_connections);
    match BackendKind::of(url) {
        Some(BackendKind::Sqlite) => Ok(Opened {
            store: Arc::new(sqlite::SqliteStore::open(url, timeout, max, options.auto_migrate).await?),
            leader: Arc::new(sqlite::SoleLeader),
        }),
        Some(BackendKind::Postgres) => Ok(Opened {
            store: Arc::new(
                postgres::PgStore::open(url, &options.application_name, timeout, max, options.auto_migrate).await?,
            ),
            leader: Arc::new(postgres::PgLeader::new(url, &options.application_name, timeout)?),
        }),
        None => Err(StoreError::Unavailable("database.url must start with sqlite:// or postgres://".into())),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::StoredId;

    proptest! {
        /// Every UUID written in canonical form is kept as its bytes and
        /// reads back as the same text.
        #[test]
        fn a_canonical_uuid_reads_back_unchanged(n in any::<u128>()) {
            let text = uuid::Uuid::from_u128(n).hyphenated().to_string();
            let bytes = StoredId::of(&text).uuid_bytes().expect("canonical");
            prop_assert_eq!(StoredId::from_uuid_bytes(&bytes).map(StoredId::into_string), Some(text));
        }

        /// Any other text is kept as text: whatever is kept as bytes would
        /// read back as itself.
        #[test]
        fn only_text_that_reads_back_unchanged_is_kept_as_bytes(text in "[0-9a-fA-F{}urn:-]{30,45}") {
            if let Some(bytes) = StoredId::of(&text).uuid_bytes() {
                prop_assert_eq!(StoredId::from_uuid_bytes(&bytes).map(StoredId::into_string), Some(text));
            }
        }
    }

    #[test]
    fn other_spellings_of_a_uuid_stay_text() {
        let canonical = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert!(StoredId::of(canonical).uuid_bytes().is_some());
        for other in [
            "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B",
            "0190a1b2c3d47e5f8a9b0c1d2e3f4a5b",
            "{0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b}",
            "urn:uuid:0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5",
            "",
        ] {
            assert_eq!(StoredId::of(other).uuid_bytes(), None, "{other}");
        }
        assert_eq!(StoredId::from_uuid_bytes(&[0; 15]), None);
    }

    proptest! {
        /// Packed into one byte string (PostgreSQL), every id reads back
        /// as the text it was, so no two ids share a packed form.
        #[test]
        fn every_packed_id_unpacks_to_itself(text in "\\PC{0,40}", n in any::<u128>()) {
            let uuid = uuid::Uuid::from_u128(n).hyphenated().to_string();
            for id in [text, uuid.clone(), uuid.to_uppercase(), format!("{:016}", n % 10_000)] {
                let packed = StoredId::of(&id).packed().into_owned();
                prop_assert_eq!(StoredId::unpack(&packed).map(StoredId::into_string), Ok(id));
            }
        }
    }

    #[test]
    fn packed_ids_take_sixteen_bytes_only_as_uuids() {
        let uuid = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(StoredId::of(uuid).packed().len(), 16);
        assert_eq!(&*StoredId::of("sixteen-chars-id").packed(), b"\xffsixteen-chars-id");
        assert_eq!(&*StoredId::of("attestation-7").packed(), b"attestation-7");
        assert!(StoredId::unpack(b"\xffshort").is_err());
        assert!(StoredId::unpack(&[0xC3, 0x28]).is_err());
    }
}
