//! The only place that reads the system time.
//!
//! Everything that depends on time (exchange, introspection, expiry, the
//! replay cache) takes `now` from a [`Clock`], so tests move time instantly
//! and deterministically. `clippy.toml` forbids reading the clock elsewhere.

use std::sync::{Arc, Mutex, PoisonError};

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[expect(clippy::disallowed_methods, reason = "this is the one sanctioned reader")]
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to; for tests and simulations.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
}

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        Self { now: Arc::new(Mutex::new(start)) }
    }

    /// Starts at the current wall-clock time, truncated to whole seconds.
    pub fn starting_now() -> Self {
        let now = SystemClock.now();
        let whole = now.replace_nanosecond(0).unwrap_or(now);
        Self::new(whole)
    }

    pub fn set(&self, to: OffsetDateTime) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }

    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub type SharedClock = Arc<dyn Clock>;
