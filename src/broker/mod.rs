//! Use cases: exchange, introspect, revoke, apply, admin tokens. They take
//! `now` from the clock, apply policy and call attest/mint/store; they know
//! nothing of HTTP.

pub mod admin;
pub mod apply;
pub mod approvals;
pub mod audit;
pub mod catalog;
pub mod exchange;
pub mod introspect;
pub mod keys;
pub mod lifecycle;
pub mod operator;
pub mod people;
pub mod stats;
pub mod throttle;

use std::sync::Arc;

use crate::attest::jwt::Verifier;
use crate::attest::x509::TrustBundles;
use crate::clock::SharedClock;
use crate::domain::lifecycle::LifecyclePolicy;
use crate::domain::policy::TtlPolicy;
use crate::keys::KeyringHandle;
use crate::store::AccessRequestStore;
use crate::store::{
    AdminTokenStore, AuditReader, CatalogStore, CheckpointStore, CredentialStore, IssuanceLog, JobStore,
    LifecycleStore, PolicyStore, SessionStore, StoreError,
};

/// Everything the use cases need, cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pub clock: SharedClock,
    pub verifier: Arc<Verifier>,
    pub keys: Arc<KeyringHandle>,
    pub policy: Arc<dyn PolicyStore>,
    pub log: Arc<dyn IssuanceLog>,
    pub credentials: Arc<dyn CredentialStore>,
    pub admin_tokens: Arc<dyn AdminTokenStore>,
    /// When each automation token was last recorded as used.
    pub token_uses: Arc<std::sync::Mutex<std::collections::HashMap<String, time::OffsetDateTime>>>,
    pub sessions: Arc<dyn SessionStore>,
    /// The organisation's identity provider, when people sign in.
    pub people: Option<Arc<people::People>>,
    /// Access requests of grants that need a person's approval.
    pub access: Arc<dyn AccessRequestStore>,
    pub approvals: approvals::ApprovalPolicy,
    pub lifecycle: Arc<dyn LifecycleStore>,
    /// Owners, systems and grants are changed only through this.
    pub catalog: Arc<dyn CatalogStore>,
    pub jobs: Arc<dyn JobStore>,
    /// Read-only audit access.
    pub audit: Arc<dyn AuditReader>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// The `iss` of issued tokens (the public URL).
    pub issuer: String,
    pub limits: TtlPolicy,
    pub lifecycle_policy: LifecyclePolicy,
    /// Where lifecycle notices are POSTed, if anywhere.
    pub webhook: Option<Webhook>,
    /// Issuer names grants may refer to.
    pub issuer_names: Arc<Vec<String>>,
    /// Issued tokens already verified (introspection's fast path).
    pub verified: Arc<introspect::VerifiedTokens>,
    /// DPoP proofs presented to the token-status endpoint (replay guard).
    pub seen_proofs: Arc<introspect::SeenProofs>,
    /// SPIFFE trust bundles for X.509-SVID attestation over mTLS, if
    /// configured.
    pub bundles: Option<Arc<TrustBundles>>,
    /// How far a DPoP proof's `iat` may be from now.
    pub dpop_window: std::time::Duration,
    /// `tokens.max_delegation_depth`.
    pub max_delegation_depth: usize,
    /// Keys the stored hashes of opaque secrets (derived from the KEK).
    pub secret_key: Arc<ring::hmac::Key>,
    /// The database backends on which logins are created.
    pub logins: Arc<dyn crate::mint::login::DatabaseLogins>,
    /// Token-endpoint rate limits.
    pub throttle: Arc<throttle::Throttle>,
    /// Where signing keys are stored, the key that seals them, and the
    /// rotation schedule.
    pub key_store: Arc<dyn crate::store::KeyStore>,
    pub kek: Arc<crate::keys::Kek>,
    pub key_policy: keys::KeyPolicy,
    /// Counters exported at `/metrics`.
    pub stats: Arc<stats::Stats>,
}

/// A notice webhook and the client that calls it.
#[derive(Clone)]
pub struct Webhook {
    pub url: url::Url,
    pub client: reqwest::Client,
}

/// A use case's storage call failed, and nothing was issued. Mostly the
/// database could not be reached or could not commit (503); the
/// [`StoreError`] inside says, and the HTTP layer answers by it.
#[derive(Debug, thiserror::Error)]
#[error("storage unavailable")]
pub struct Unavailable(#[source] pub StoreError);

/// A failure of the broker's own machinery rather than of storage or of
/// the request: signing, the system random number generator, key
/// generation. Nothing was issued or changed; the HTTP layer answers 500
/// and logs what failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed: {cause}")]
pub struct Internal {
    pub what: &'static str,
    pub cause: String,
}

impl Internal {
    pub fn new(what: &'static str, cause: impl std::fmt::Display) -> Self {
        Self { what, cause: cause.to_string() }
    }
}

/// A use case that failed without refusing anything: its storage, or the
/// broker's own machinery.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("storage: {}", .0.0)]
    Unavailable(#[from] Unavailable),
    #[error(transparent)]
    Internal(#[from] Internal),
}

impl Unavailable {
    /// Whether this is an outage: the database could not be reached or
    /// could not commit.
    pub fn is_outage(&self) -> bool {
        matches!(self.0, StoreError::Unavailable(_))
    }
}
