//! Rate limits on the token endpoint, by GCRA (`governor`), on the broker's
//! own clock so tests move time instead of waiting.
//!
//! - Per workload (issuer and subject, after attestation): a workload that
//!   asks too often is told when to come back; other workloads are not
//!   affected.
//! - Failed attestations per source address: a source that sends too many
//!   forged or invalid proofs is refused before any signature is checked,
//!   until its allowance refills. Successful exchanges never count.
//!
//! A throttled request issues nothing and is counted, not written to the
//! audit log: recording a flood one row per request would be the flood.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::Reference;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::clock::SharedClock;
use crate::config::RateLimitsConfig;

/// The broker's clock as `governor` sees it: time since the Unix epoch.
#[derive(Clone)]
pub struct GovernorClock(SharedClock);

impl governor::clock::Clock for GovernorClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        let nanos = self.0.now().unix_timestamp_nanos();
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
    }
}

type Keyed<K> = RateLimiter<K, HashMapStateStore<K>, GovernorClock, NoOpMiddleware<Duration>>;

/// The label of the refusal counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    limit: &'static str,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Workload,
    Source,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Source => "source",
        }
    }
}

/// A refusal: which limit, and how long until a retry can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited ({}); retry after {}s", .limit.as_str(), .retry_after.as_secs())]
pub struct Throttled {
    pub limit: Limit,
    /// Whole seconds, at least one.
    pub retry_after: Duration,
}

/// Exchanges per minute allowed to one workload, and failed attestations
/// per minute allowed to one source address; `None` turns a limit off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub per_workload: Option<NonZeroU32>,
    pub failures_per_source: Option<NonZeroU32>,
}

impl Limits {
    pub fn from_config(limits: &RateLimitsConfig) -> Self {
        Self {
            per_workload: NonZeroU32::new(limits.per_workload_per_minute),
            failures_per_source: NonZeroU32::new(limits.failures_per_source_per_minute),
        }
    }
}

struct SourceLimit {
    failures: Keyed<IpAddr>,
    /// Sources that ran out of allowance, and until when they are refused.
    blocked: Mutex<HashMap<IpAddr, Duration>>,
}

/// The token endpoint's rate limiters and their counters.
pub struct Throttle {
    clock: GovernorClock,
    /// Keyed by a hash of issuer and subject, so the hot path allocates
    /// nothing; the hasher's random key makes collisions unforgeable.
    per_workload: Option<Keyed<u64>>,
    workload_hasher: std::hash::RandomState,
    per_source: Option<SourceLimit>,
    /// Requests refused, by limit (exported at `/metrics`).
    refused: Family<LimitLabel, Counter>,
}

fn whole_seconds(wait: Duration) -> Duration {
    Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(Duration::from_secs(1))
}

impl Throttle {
    pub fn new(limits: Limits, clock: SharedClock) -> Self {
        let clock = GovernorClock(clock);
        Self {
            per_workload: limits
                .per_workload
                .map(|n| RateLimiter::hashmap_with_clock(Quota::per_minute(n), clock.clone())),
            per_source: limits.failures_per_source.map(|n| SourceLimit {
                failures: RateLimiter::hashmap_with_clock(Quota::per_minute(n), clock.clone()),
                blocked: Mutex::default(),
            }),
            clock,
            workload_hasher: std::hash::RandomState::new(),
            refused: Family::default(),
        }
    }

    /// Takes one exchange from the workload's allowance.
    pub fn workload(&self, issuer: &str, subject: &str) -> Result<(), Throttled> {
        let Some(limiter) = &self.per_workload else { return Ok(()) };
        let now = governor::clock::Clock::now(&self.clock);
        let key = std::hash::BuildHasher::hash_one(&self.workload_hasher, (issuer, subject));
        limiter.check_key(&key).map_err(|not_until| {
            self.count(Limit::Workload);
            Throttled { limit: Limit::Workload, retry_after: whole_seconds(not_until.wait_time_from(now)) }
        })
    }

    /// Refuses a source that has used up its allowance of failures.
    pub fn source(&self, source: Option<IpAddr>) -> Result<(), Throttled> {
        let (Some(limit), Some(ip)) = (&self.per_source, source) else { return Ok(()) };
        let now = governor::clock::Clock::now(&self.clock);
        let mut blocked = limit.blocked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match blocked.get(&ip) {
            Some(until) if *until > now => {
                self.count(Limit::Source);
                Err(Throttled { limit: Limit::Source, retry_after: whole_seconds(until.duration_since(now).into()) })
            }
            Some(_) => {
                blocked.remove(&ip);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failed attestation against its source; past the allowance
    /// the source is refused until it refills.
    pub fn failed(&self, source: Option<IpAddr>) {
        let (Some(limit), Some(ip)) = (&self.per_source, source) else { return };
        if let Err(not_until) = limit.failures.check_key(&ip) {
            let mut blocked = limit.blocked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            blocked.insert(ip, not_until.earliest_possible());
        }
    }

    /// Forgets keys whose allowance is full again, so memory stays bounded
    /// by the active set (called from the periodic jobs).
    pub fn prune(&self) {
        if let Some(limiter) = &self.per_workload {
            limiter.retain_recent();
        }
        if let Some(limit) = &self.per_source {
            limit.failures.retain_recent();
            let now = governor::clock::Clock::now(&self.clock);
            limit.blocked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|_, until| *until > now);
        }
    }

    fn count(&self, limit: Limit) {
        self.refused.get_or_create(&LimitLabel { limit: limit.as_str() }).inc();
    }

    /// Requests refused so far, by limit.
    pub fn refused(&self, limit: Limit) -> u64 {
        self.refused.get_or_create(&LimitLabel { limit: limit.as_str() }).get()
    }

    /// The refusal counter, for the metrics registry.
    pub fn refused_counter(&self) -> Family<LimitLabel, Counter> {
        self.refused.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;

    fn throttle(per_workload: u32, per_source: u32) -> (Throttle, ManualClock) {
        let clock = ManualClock::starting_now();
        let limits =
            Limits { per_workload: NonZeroU32::new(per_workload), failures_per_source: NonZeroU32::new(per_source) };
        (Throttle::new(limits, Arc::new(clock.clone())), clock)
    }

    #[test]
    fn the_workload_after_its_allowance_waits_and_others_do_not() {
        let (t, clock) = throttle(3, 0);
        for _ in 0..3 {
            t.workload("k8s", "a").unwrap();
        }
        let refused = t.workload("k8s", "a").unwrap_err();
        assert_eq!(refused, Throttled { limit: Limit::Workload, retry_after: Duration::from_secs(20) });
        t.workload("k8s", "b").unwrap();
        t.workload("spire", "a").unwrap();
        clock.advance(Duration::from_secs(19));
        assert_eq!(t.workload("k8s", "a").unwrap_err().retry_after, Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        t.workload("k8s", "a").unwrap();
        assert_eq!(t.refused(Limit::Workload), 2);
    }

    #[test]
    fn a_source_is_refused_only_after_its_failures_run_out() {
        let (t, clock) = throttle(0, 2);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..2 {
            t.source(Some(ip)).unwrap();
            t.failed(Some(ip));
        }
        t.source(Some(ip)).unwrap();
        t.failed(Some(ip));
        let refused = t.source(Some(ip)).unwrap_err();
        assert_eq!(refused, Throttled { limit: Limit::Source, retry_after: Duration::from_secs(30) });
        t.source(Some(other)).unwrap();
        t.source(None).unwrap();
        clock.advance(Duration::from_secs(30));
        t.source(Some(ip)).unwrap();
        t.prune();
        assert_eq!(t.refused(Limit::Source), 1);
        // Unlimited workloads.
        for _ in 0..1000 {
            t.workload("k8s", "a").unwrap();
        }
    }
}
