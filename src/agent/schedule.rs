//! When to renew and when to retry: pure functions of `now`, the policy
//! and a uniform sample `u` in `[0, 1)`, so every bound can be checked by a
//! test without waiting.

use std::time::Duration;

use tokio::time::Instant;

/// Renew at `fraction` of a credential's lifetime, moved by up to `jitter`
/// of the lifetime either way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewPolicy {
    pub fraction: f64,
    pub jitter: f64,
}

impl Default for RenewPolicy {
    /// Two thirds of the lifetime, ± a tenth: a credential is renewed
    /// between 57 % and 77 % of its life, leaving at least 23 % of it to
    /// retry in if the broker is away.
    fn default() -> Self {
        Self { fraction: 2.0 / 3.0, jitter: 0.1 }
    }
}

/// Failed attempts wait `initial`, doubled per consecutive failure, up to
/// `max`, each jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), max: Duration::from_secs(60) }
    }
}

/// When a credential obtained at `now` that lives `lifetime` is renewed:
/// at `fraction + jitter × (2u − 1)` of its lifetime, so agents that
/// started together (a fleet rolled out at once) spread their renewals
/// over a fifth of the lifetime instead of arriving in lock-step. The
/// result always lies in `[now, now + lifetime]`.
pub fn renewal_at(now: Instant, lifetime: Duration, policy: RenewPolicy, u: f64) -> Instant {
    let u = if u.is_finite() { u.clamp(0.0, 1.0) } else { 0.5 };
    let share = (policy.fraction + policy.jitter * (2.0 * u - 1.0)).clamp(0.0, 1.0);
    now + lifetime.mul_f64(share)
}

/// When to try again after `failures` consecutive failures (1 for the
/// first): the step `initial × 2^(failures − 1)`, capped at `max`, then
/// "equal jitter": a wait uniformly in the upper half of the step, so a
/// fleet that lost the broker together does not return together, yet
/// never retries faster than half its step.
pub fn retry_at(now: Instant, failures: u32, policy: RetryPolicy, u: f64) -> Instant {
    let u = if u.is_finite() { u.clamp(0.0, 1.0) } else { 0.5 };
    let doublings = failures.saturating_sub(1).min(32);
    let step = policy.initial.saturating_mul(1u32 << doublings.min(31)).min(policy.max);
    now + step.mul_f64(0.5 + 0.5 * u)
}

/// RFC 8628 §3.5: the wait when `authorization_pending` names no interval,
/// and what each `slow_down` adds to the interval.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// How long to wait before asking again while approval is pending: the
/// interval the broker names, else the one in use, else 5 s; `slow_down`
/// adds 5 s to the one in use "for this and all subsequent requests"
/// (RFC 8628 §3.5), and never lets the broker's number lower it.
pub fn next_poll(current: Option<Duration>, given: Option<Duration>, slow_down: bool) -> Duration {
    let wait = given.or(current).unwrap_or(DEFAULT_POLL_INTERVAL);
    if slow_down { wait.max(current.unwrap_or(DEFAULT_POLL_INTERVAL) + SLOW_DOWN_STEP) } else { wait }
}

/// A uniform sample in `[0, 1)` from the operating system's generator
/// (0.5 if it fails, which only removes the jitter).
pub fn sample() -> f64 {
    match crate::crypto::random_bytes::<8>() {
        // 53 random bits: every value an f64 in [0, 1) can hold evenly.
        Ok(bytes) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: u32 = 1000;

    fn samples() -> impl Iterator<Item = f64> {
        (0..=SAMPLES).map(|i| f64::from(i) / f64::from(SAMPLES))
    }

    #[test]
    fn renewal_falls_within_the_jitter_bounds_and_before_expiry() {
        let now = Instant::now();
        let policy = RenewPolicy::default();
        for lifetime in [Duration::from_secs(1), Duration::from_secs(300), Duration::from_secs(86_400)] {
            let low = now + lifetime.mul_f64(2.0 / 3.0 - 0.1);
            let high = now + lifetime.mul_f64(2.0 / 3.0 + 0.1);
            for u in samples() {
                let at = renewal_at(now, lifetime, policy, u);
                assert!(at >= low && at <= high, "u={u}: {:?} outside the bounds", at - now);
                assert!(at < now + lifetime, "u={u}: renewal at or after expiry");
            }
            // The ends of the range are reached: the jitter is real.
            let (first, last) = (renewal_at(now, lifetime, policy, 0.0), renewal_at(now, lifetime, policy, 1.0));
            assert_eq!(first - now, lifetime.mul_f64(2.0 / 3.0 - 0.1));
            assert_eq!(last - now, lifetime.mul_f64(2.0 / 3.0 + 0.1));
        }
    }

    #[test]
    fn a_fleet_spreads_its_renewals() {
        let now = Instant::now();
        let lifetime = Duration::from_secs(300);
        let policy = RenewPolicy::default();
        let mut times: Vec<Duration> = (0..200).map(|_| renewal_at(now, lifetime, policy, sample()) - now).collect();
        times.sort();
        times.dedup();
        assert!(times.len() > 190, "200 agents renewed at only {} distinct times", times.len());
        let spread = *times.last().unwrap() - times[0];
        assert!(spread > Duration::from_secs(30), "200 agents renewed within {spread:?} of each other");
    }

    #[test]
    fn renewal_without_jitter_and_out_of_range_samples_stay_in_bounds() {
        let now = Instant::now();
        let lifetime = Duration::from_secs(90);
        let fixed = RenewPolicy { fraction: 0.5, jitter: 0.0 };
        for u in [0.0, 0.3, 0.999] {
            assert_eq!(renewal_at(now, lifetime, fixed, u) - now, Duration::from_secs(45));
        }
        for u in [-1.0, 2.0, f64::NAN, f64::INFINITY] {
            let at = renewal_at(now, lifetime, RenewPolicy::default(), u);
            assert!(at >= now && at < now + lifetime, "u={u}");
        }
        assert_eq!(renewal_at(now, Duration::ZERO, RenewPolicy::default(), 0.5), now);
    }

    #[test]
    fn retries_double_up_to_the_cap_and_jitter_within_the_upper_half() {
        let now = Instant::now();
        let policy = RetryPolicy { initial: Duration::from_secs(1), max: Duration::from_secs(60) };
        for (failures, step) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (50, 60), (u32::MAX, 60)] {
            let step = Duration::from_secs(step);
            for u in samples() {
                let wait = retry_at(now, failures, policy, u) - now;
                assert!(wait >= step / 2 && wait <= step, "failures={failures} u={u}: {wait:?}, step {step:?}");
            }
        }
        // Zero failures is the first retry's step too.
        assert_eq!(retry_at(now, 0, policy, 1.0) - now, Duration::from_secs(1));
    }

    #[test]
    fn approval_polls_follow_the_broker_and_slow_down_adds_five_seconds() {
        let s = Duration::from_secs;
        assert_eq!(next_poll(None, None, false), s(5));
        assert_eq!(next_poll(None, Some(s(2)), false), s(2));
        assert_eq!(next_poll(Some(s(2)), None, false), s(2));
        assert_eq!(next_poll(Some(s(2)), Some(s(9)), false), s(9));
        assert_eq!(next_poll(Some(s(2)), None, true), s(7));
        assert_eq!(next_poll(None, None, true), s(10));
        assert_eq!(next_poll(Some(s(7)), Some(s(3)), true), s(12), "slow_down never shortens the wait");
        assert_eq!(next_poll(Some(s(7)), Some(s(20)), true), s(20));
    }

    #[test]
    fn samples_are_uniform_enough() {
        let n = 4000;
        let draws: Vec<f64> = (0..n).map(|_| sample()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let low = draws.iter().filter(|u| **u < 0.5).count();
        assert!((1700..2300).contains(&low), "{low} of {n} below one half");
    }
}
