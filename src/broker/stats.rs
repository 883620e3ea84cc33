//! Counters the use cases keep about themselves, exported at `/metrics`.
//! Labels come from small fixed sets (outcomes, OAuth error codes, kinds):
//! never a jti, subject or token.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExchangeLabels {
    /// `issued`, `denied`, `unavailable` or `rate_limited`.
    pub outcome: &'static str,
    /// The OAuth error code of a refusal; empty when issued.
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// What a revocation was aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationKind {
    /// RFC 7009, by the token's holder.
    Holder,
    Jti,
    Workload,
    System,
    Owner,
    Suspension,
    Retirement,
}

impl RevocationKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Holder => "holder",
            Self::Jti => "jti",
            Self::Workload => "workload",
            Self::System => "system",
            Self::Owner => "owner",
            Self::Suspension => "suspension",
            Self::Retirement => "retirement",
        }
    }
}

/// The broker's own counters.
#[derive(Debug)]
pub struct Stats {
    exchanges: Family<ExchangeLabels, Counter>,
    /// From the request reaching the broker to its issuance record being
    /// committed, for issued credentials.
    issuance_seconds: Histogram,
    introspections: Family<ResultLabel, Counter>,
    revocations: Family<KindLabel, Counter>,
    reaper_runs: Counter,
    reaper_suspensions: Counter,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            exchanges: Family::default(),
            // 0.5 ms to about 4 s.
            issuance_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            introspections: Family::default(),
            revocations: Family::default(),
            reaper_runs: Counter::default(),
            reaper_suspensions: Counter::default(),
        }
    }
}

impl Stats {
    pub fn issued(&self, took: Duration) {
        self.exchanges.get_or_create(&ExchangeLabels { outcome: "issued", code: "" }).inc();
        self.issuance_seconds.observe(took.as_secs_f64());
    }

    pub fn refused(&self, outcome: &'static str, code: &'static str) {
        self.exchanges.get_or_create(&ExchangeLabels { outcome, code }).inc();
    }

    pub fn introspected(&self, active: bool) {
        let result = if active { "active" } else { "inactive" };
        self.introspections.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn revoked(&self, kind: RevocationKind) {
        self.revocations.get_or_create(&KindLabel { kind: kind.as_str() }).inc();
    }

    pub fn reaper_ran(&self, suspended: usize) {
        self.reaper_runs.inc();
        self.reaper_suspensions.inc_by(u64::try_from(suspended).unwrap_or(u64::MAX));
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "exchanges",
            "Token requests by outcome (issued, denied, unavailable, rate_limited) and OAuth error code",
            self.exchanges.clone(),
        );
        registry.register_with_unit(
            "issuance_duration",
            "Time from a token request reaching the broker to its issuance record being committed",
            prometheus_client::registry::Unit::Seconds,
            self.issuance_seconds.clone(),
        );
        registry.register("introspections", "Introspections by result (active, inactive)", self.introspections.clone());
        registry.register(
            "revocations",
            "Revocation requests by what they aimed at (holder, jti, workload, system, owner, suspension, retirement)",
            self.revocations.clone(),
        );
        registry.register("reaper_runs", "Lifecycle reaper passes", self.reaper_runs.clone());
        registry.register(
            "reaper_suspensions",
            "Systems the reaper suspended (pilot ended, owner departed or lapsed)",
            self.reaper_suspensions.clone(),
        );
    }
}
