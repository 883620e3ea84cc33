//! What the agent holds for each credential, shared by the task that
//! keeps it, the file sink, the local API and the metrics; and the views of
//! it the API and the files show.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::client::Login;
use super::config::CredentialSpec;
use super::dpop::DpopKey;

/// A credential the agent holds now.
pub struct Held {
    pub token: SecretString,
    pub token_type: String,
    pub issued_token_type: String,
    pub scope: String,
    pub login: Option<Login>,
    /// When the request that got it was sent: the broker issued it no
    /// earlier, so `expires` is no later than the broker's own expiry.
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub renew_at: OffsetDateTime,
    /// The monotonic deadline the credential is removed at.
    pub expires: Instant,
    /// The client certificate it was obtained with ([`super::client::BrokerClient::identity`]).
    pub identity: u64,
}

/// How the credential's keeping goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// No answer from the broker yet.
    Starting,
    /// Held, and renewed on schedule.
    Active,
    /// The last attempt failed for a reason that is no refusal (the broker
    /// unreachable, the attestation unreadable): retrying with backoff,
    /// keeping what is held until it expires.
    Retrying { why: String },
    /// The broker waits for a person's approval; asked again every
    /// `interval`.
    Pending { interval: Duration, description: String },
    /// Nothing is held: the broker refused (its error code and
    /// description), the credential expired (`expired`), or the broker
    /// reported it inactive (`revoked`). Retrying with backoff.
    Removed { code: String, description: String, at: OffsetDateTime },
}

impl Condition {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Active => "active",
            Self::Retrying { .. } => "retrying",
            Self::Pending { .. } => "authorization_pending",
            Self::Removed { .. } => "removed",
        }
    }
}

#[derive(Clone)]
pub struct Snapshot {
    pub held: Option<Arc<Held>>,
    pub condition: Condition,
}

/// One configured credential: its settings, its DPoP key (if bound) and
/// its current state.
pub struct Slot {
    pub spec: CredentialSpec,
    pub dpop: Option<DpopKey>,
    snapshot: RwLock<Snapshot>,
}

impl Slot {
    pub fn new(spec: CredentialSpec, dpop: Option<DpopKey>) -> Self {
        Self { spec, dpop, snapshot: RwLock::new(Snapshot { held: None, condition: Condition::Starting }) }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn held(&self) -> Option<Arc<Held>> {
        self.snapshot.read().unwrap_or_else(PoisonError::into_inner).held.clone()
    }

    pub fn set(&self, held: Option<Arc<Held>>, condition: Condition) {
        *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = Snapshot { held, condition };
    }

    pub fn set_condition(&self, condition: Condition) {
        self.snapshot.write().unwrap_or_else(PoisonError::into_inner).condition = condition;
    }
}

/// A held credential as the local API and a `json` file show it.
#[derive(Serialize)]
pub struct View<'a> {
    pub name: &'a str,
    pub state: &'static str,
    pub access_token: &'a str,
    pub token_type: &'a str,
    pub issued_token_type: &'a str,
    /// Whole seconds left at the moment of writing.
    pub expires_in: u64,
    pub expires_at: String,
    pub issued_at: String,
    pub renew_at: String,
    pub scope: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'a str>,
}

/// RFC 3339 with milliseconds: renewal and expiry times a client (or a
/// test) can compare closer than a second.
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(u32::from(t.millisecond()) * 1_000_000).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

impl Held {
    pub fn view<'a>(&'a self, name: &'a str, condition: &Condition, now: Instant) -> View<'a> {
        let token = self.token.expose_secret();
        let login = self.login.as_ref();
        View {
            name,
            state: match condition {
                Condition::Pending { .. } | Condition::Retrying { .. } => condition.name(),
                _ => "active",
            },
            access_token: token,
            token_type: &self.token_type,
            issued_token_type: &self.issued_token_type,
            expires_in: self.expires.saturating_duration_since(now).as_secs(),
            expires_at: timestamp(self.expires_at),
            issued_at: timestamp(self.issued_at),
            renew_at: timestamp(self.renew_at),
            scope: &self.scope,
            username: login.map(|l| l.username.as_str()),
            password: login.map(|_| token),
            host: login.map(|l| l.host.as_str()),
            port: login.map(|l| l.port),
            database: login.map(|l| l.database.as_str()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabel {
    pub credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub credential: String,
    pub reason: String,
}

/// The agent's metrics, `halflife_agent_*`, labelled by credential name
/// (from the configuration: a small fixed set) and a fixed reason.
pub struct Metrics {
    pub registry: Registry,
    renewals: Family<CredentialLabel, Counter>,
    failures: Family<ReasonLabels, Counter>,
    removals: Family<ReasonLabels, Counter>,
    status_checks: Family<ReasonLabels, Counter>,
    expiry: Family<CredentialLabel, Gauge<f64, AtomicU64>>,
}

/// Why an attempt failed (`halflife_agent_failures_total{reason}`).
#[derive(Debug, Clone, Copy)]
pub enum FailureReason {
    /// No usable answer from the broker.
    Unavailable,
    /// The broker refused.
    Refused,
    /// Waiting for approval.
    Pending,
    /// The attestation could not be read or run.
    Attestation,
    /// The credential file could not be written.
    File,
}

impl Metrics {
    pub fn new(names: &[&str]) -> Self {
        let mut registry = Registry::with_prefix("halflife_agent");
        let renewals = Family::<CredentialLabel, Counter>::default();
        registry.register("renewals", "Credentials obtained or renewed, by credential name", renewals.clone());
        let failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "failures",
            "Failed attempts: reason=unavailable (no usable answer), refused, pending (approval), attestation, file",
            failures.clone(),
        );
        let removals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "removals",
            "Credentials removed: reason=refused (renewal refused), expired, revoked (the broker reported it inactive)",
            removals.clone(),
        );
        let status_checks = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "status_checks",
            "Status queries of held credentials: reason=active, inactive or failed",
            status_checks.clone(),
        );
        let expiry = Family::<CredentialLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "expiry_seconds",
            "Seconds until the held credential expires; 0 when none is held",
            expiry.clone(),
        );
        let metrics = Self { registry, renewals, failures, removals, status_checks, expiry };
        for name in names {
            let label = CredentialLabel { credential: (*name).to_owned() };
            let _ = metrics.renewals.get_or_create(&label);
            let _ = metrics.expiry.get_or_create(&label);
        }
        metrics
    }

    pub fn renewed(&self, name: &str) {
        self.renewals.get_or_create(&CredentialLabel { credential: name.to_owned() }).inc();
    }

    pub fn failed(&self, name: &str, reason: FailureReason) {
        let reason = match reason {
            FailureReason::Unavailable => "unavailable",
            FailureReason::Refused => "refused",
            FailureReason::Pending => "pending",
            FailureReason::Attestation => "attestation",
            FailureReason::File => "file",
        };
        self.failures.get_or_create(&ReasonLabels { credential: name.to_owned(), reason: reason.to_owned() }).inc();
    }

    /// `reason`: `refused`, `expired` or `revoked`.
    pub fn removed(&self, name: &str, reason: &str) {
        self.removals.get_or_create(&ReasonLabels { credential: name.to_owned(), reason: reason.to_owned() }).inc();
    }

    /// `result`: `active`, `inactive` or `failed`.
    pub fn status_checked(&self, name: &str, result: &str) {
        self.status_checks
            .get_or_create(&ReasonLabels { credential: name.to_owned(), reason: result.to_owned() })
            .inc();
    }

    /// The OpenMetrics text, with each credential's time to expiry as of
    /// `now`.
    pub fn encode(&self, slots: &[Arc<Slot>], now: Instant) -> Result<String, std::fmt::Error> {
        for slot in slots {
            let left = slot.held().map_or(0.0, |h| h.expires.saturating_duration_since(now).as_secs_f64());
            self.expiry.get_or_create(&CredentialLabel { credential: slot.spec.name.clone() }).set(left);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
