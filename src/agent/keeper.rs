//! Keeping one credential: obtain it, renew it on schedule, check with the
//! broker that it is still active, and remove it the moment it is refused,
//! reported inactive or expires — then keep asking, so a reinstated system
//! gets its credentials back without a restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use super::attestation;
use super::client::Failure;
use super::config::{FileFormat, Kind};
use super::schedule::{next_poll, renewal_at, retry_at, sample};
use super::state::{Condition, FailureReason, Held, Slot};
use super::{Agent, until_stopped};
use crate::clock::{Clock, SystemClock};

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What one credential's keeper remembers between events.
struct Keeper {
    agent: Arc<Agent>,
    slot: Arc<Slot>,
    /// Consecutive failed attempts (the backoff's exponent).
    failures: u32,
    next_exchange: Instant,
    next_status: Option<Instant>,
    /// While approval is pending: the interval the broker asked for.
    poll_interval: Option<Duration>,
    /// The last failure: for the expiry message, and to log a failure
    /// that repeats only once.
    last_failure: Option<String>,
    /// The start line has been logged.
    reported: bool,
}

/// Keeps `slot` until `stop` turns true.
pub async fn keep(agent: Arc<Agent>, slot: Arc<Slot>, mut stop: watch::Receiver<bool>) {
    let mut keeper = Keeper {
        agent,
        slot,
        failures: 0,
        next_exchange: Instant::now(),
        next_status: None,
        poll_interval: None,
        last_failure: None,
        reported: false,
    };
    loop {
        let expires = keeper.slot.held().map(|h| h.expires);
        let event = tokio::select! {
            biased;
            () = until_stopped(&mut stop) => return,
            () = sleep_until_some(expires) => Event::Expired,
            () = sleep_until(keeper.next_exchange) => Event::Exchange,
            () = sleep_until_some(keeper.next_status) => Event::Status,
        };
        // A request in flight never holds a credential past its expiry:
        // the expiry wins the race and the request is dropped.
        let (agent, slot) = (Arc::clone(&keeper.agent), Arc::clone(&keeper.slot));
        match event {
            Event::Expired => keeper.expired().await,
            Event::Exchange => tokio::select! {
                biased;
                () = until_stopped(&mut stop) => return,
                () = sleep_until_some(expires) => keeper.expired().await,
                attempt = attempt(agent, slot) => keeper.settle(attempt).await,
            },
            Event::Status => {
                let Some(held) = keeper.slot.held() else {
                    keeper.next_status = None;
                    continue;
                };
                // A rotated X.509-SVID: the token is bound to a certificate
                // the workload no longer presents, so it is renewed now.
                if held.identity != agent.broker.identity() {
                    tracing::info!(credential = keeper.name(), "the client certificate was rotated; renewing now");
                    keeper.next_status = None;
                    keeper.next_exchange = Instant::now();
                    continue;
                }
                tokio::select! {
                    biased;
                    () = until_stopped(&mut stop) => return,
                    () = sleep_until_some(expires) => keeper.expired().await,
                    answer = async { agent.broker.status(&held.token, slot.dpop.as_ref()).await } => {
                        keeper.settle_status(answer).await;
                    }
                }
            }
        }
    }
}

enum Event {
    Expired,
    Exchange,
    Status,
}

/// One exchange: when it was sent (by the wall clock and the monotonic
/// one), whether the attestation could be had, and the broker's answer.
struct Attempt {
    sent_wall: time::OffsetDateTime,
    sent: Instant,
    identity: u64,
    attestation_failed: bool,
    result: Result<super::client::Issued, Failure>,
}

async fn attempt(agent: Arc<Agent>, slot: Arc<Slot>) -> Attempt {
    let settings = &agent.settings;
    let identity = agent.broker.identity();
    let sent_wall = SystemClock.now();
    let sent = Instant::now();
    let (attestation_failed, result) =
        match attestation::obtain(&settings.attestation, settings.broker.request_timeout).await {
            Err(e) => (true, Err(Failure::Unavailable { why: e.to_string(), retry_after: None })),
            Ok(presentation) => (false, agent.broker.exchange(&slot.spec, &presentation, slot.dpop.as_ref()).await),
        };
    Attempt { sent_wall, sent, identity, attestation_failed, result }
}

impl Keeper {
    fn name(&self) -> &str {
        &self.slot.spec.name
    }

    /// Acts on an exchange's outcome.
    async fn settle(&mut self, attempt: Attempt) {
        let Attempt { sent_wall, sent, identity, attestation_failed, result } = attempt;
        let settings = &self.agent.settings;
        match result {
            Ok(issued) => {
                let renew = renewal_at(sent, issued.expires_in, settings.renewal, sample());
                let lifetime = time::Duration::try_from(issued.expires_in).unwrap_or(time::Duration::ZERO);
                let held = Arc::new(Held {
                    token: issued.token,
                    token_type: issued.token_type,
                    issued_token_type: issued.issued_token_type,
                    scope: issued.scope,
                    login: issued.login,
                    issued_at: sent_wall,
                    expires_at: sent_wall + lifetime,
                    renew_at: sent_wall + time::Duration::try_from(renew - sent).unwrap_or(time::Duration::ZERO),
                    expires: sent + issued.expires_in,
                    identity,
                });
                let was_active = self.reported && self.slot.held().is_some();
                self.write_file(&held).await;
                self.slot.set(Some(Arc::clone(&held)), Condition::Active);
                self.agent.changed();
                self.agent.metrics.renewed(self.name());
                self.agent.renewed();
                self.failures = 0;
                self.poll_interval = None;
                self.last_failure = None;
                self.next_exchange = renew;
                // A login's password is no token the broker can look up:
                // the broker drops the role itself when the login is
                // revoked or its system stops.
                self.next_status =
                    (self.slot.spec.kind != Kind::PostgresLogin).then(|| Instant::now() + settings.status_interval);
                let expires_in = issued.expires_in.as_secs();
                let renew_in = renew.saturating_duration_since(Instant::now()).as_secs();
                if was_active {
                    tracing::info!(credential = self.name(), expires_in, renew_in, "credential renewed");
                } else {
                    // The start line, or the line saying it is back.
                    self.report(&format!("active, expires in {expires_in}s, renewal in {renew_in}s"));
                }
            }
            Err(Failure::Refused { code, description }) => {
                self.agent.metrics.failed(self.name(), FailureReason::Refused);
                self.failures = self.failures.saturating_add(1);
                self.next_exchange = retry_at(Instant::now(), self.failures, settings.retry, sample());
                if self.quiet(&format!("refused ({code}): {description}")) {
                    tracing::debug!(credential = self.name(), error = %code, "refused again");
                } else {
                    tracing::warn!(credential = self.name(), error = %code, description = %description, "the broker refused the credential; asking again with backoff");
                }
                self.remove(&code, &description, "refused").await;
                if !self.reported {
                    self.report(&format!("refused by the broker: {code}: {description}"));
                }
            }
            Err(Failure::Pending { interval, slow_down, description }) => {
                self.agent.metrics.failed(self.name(), FailureReason::Pending);
                let wait = next_poll(self.poll_interval, interval, slow_down);
                self.poll_interval = Some(wait);
                self.failures = 0;
                self.next_exchange = Instant::now() + wait;
                let message = format!("waiting for approval: {description}");
                if !self.quiet(&message) {
                    tracing::info!(credential = self.name(), interval = wait.as_secs(), description = %description, "waiting for approval; asking again at the broker's interval");
                }
                self.slot.set_condition(Condition::Pending { interval: wait, description: description.clone() });
                self.agent.changed();
                if !self.reported {
                    self.report(&format!("waiting for approval (asking every {}s): {description}", wait.as_secs()));
                }
            }
            Err(Failure::Unavailable { why, retry_after }) => {
                let reason = if attestation_failed { FailureReason::Attestation } else { FailureReason::Unavailable };
                self.agent.metrics.failed(self.name(), reason);
                self.failures = self.failures.saturating_add(1);
                let now = Instant::now();
                self.next_exchange =
                    retry_at(now, self.failures, settings.retry, sample()).max(now + retry_after.unwrap_or_default());
                let retry_in = self.next_exchange.saturating_duration_since(now).as_millis();
                if !self.quiet(&why) {
                    let held = self.slot.held().is_some();
                    tracing::warn!(credential = self.name(), error = %why, retry_in_ms = u64::try_from(retry_in).unwrap_or(u64::MAX), keeping_current = held, "could not get a credential; retrying with backoff");
                }
                // A removal's reason says more than "still unreachable".
                if !matches!(self.slot.snapshot().condition, Condition::Removed { .. }) {
                    self.slot.set_condition(Condition::Retrying { why: why.clone() });
                    self.agent.changed();
                }
                if !self.reported {
                    self.report(&format!("not yet obtained, retrying: {why}"));
                }
            }
        }
    }

    /// True when `message` repeats the last failure: it was logged at
    /// warning level already.
    fn quiet(&mut self, message: &str) -> bool {
        if self.last_failure.as_deref() == Some(message) {
            return true;
        }
        self.last_failure = Some(message.to_owned());
        false
    }

    /// The one line per credential at start, saying what became of it;
    /// also when it is obtained again after a removal.
    fn report(&mut self, status: &str) {
        self.reported = true;
        let spec = &self.slot.spec;
        let file = spec.file.as_ref().map(|f| f.path.display().to_string()).unwrap_or_else(|| "-".to_owned());
        tracing::info!(
            credential = %spec.name,
            kind = spec.kind.as_str(),
            audience = spec.audience.as_deref().unwrap_or("-"),
            dpop = spec.dpop,
            file = %file,
            api = spec.api && (self.agent.settings.api.socket.is_some() || self.agent.settings.api.listen.is_some()),
            "credential {}: {status}",
            spec.name
        );
    }

    /// Acts on a status query's answer.
    async fn settle_status(&mut self, answer: Result<bool, Failure>) {
        let interval = self.agent.settings.status_interval;
        match answer {
            Ok(true) => {
                self.agent.metrics.status_checked(self.name(), "active");
                self.next_status = Some(Instant::now() + interval);
            }
            Ok(false) => {
                self.agent.metrics.status_checked(self.name(), "inactive");
                self.remove(
                    "revoked",
                    "the broker reports the credential inactive: it was revoked, or its system may no longer operate",
                    "revoked",
                )
                .await;
                // Ask at once: a new credential if the system still
                // operates, or the broker's reason why not.
                self.next_exchange = Instant::now();
            }
            Err(failure) => {
                self.agent.metrics.status_checked(self.name(), "failed");
                tracing::warn!(credential = self.name(), error = %failure, "status check failed; keeping the credential and checking again later");
                self.next_status = Some(Instant::now() + interval);
            }
        }
    }

    async fn expired(&mut self) {
        let at = self.slot.held().map(|h| super::state::timestamp(h.expires_at)).unwrap_or_default();
        let why = self.last_failure.clone().unwrap_or_else(|| "no renewal succeeded in time".to_owned());
        self.remove("expired", &format!("expired at {at} and could not be renewed: {why}"), "expired").await;
    }

    /// Drops what is held: the local API stops serving it at once, then
    /// its file is deleted.
    async fn remove(&mut self, code: &str, description: &str, reason: &str) {
        let snapshot = self.slot.snapshot();
        let had = snapshot.held.is_some();
        // Asked again and refused again: the reason may change, the time
        // it was removed does not.
        let at = match snapshot.condition {
            Condition::Removed { at, .. } if !had => at,
            _ => SystemClock.now(),
        };
        self.slot.set(None, Condition::Removed { code: code.to_owned(), description: description.to_owned(), at });
        self.next_status = None;
        self.agent.changed();
        if let Some(file) = &self.slot.spec.file {
            let path = file.path.clone();
            match tokio::task::spawn_blocking(move || super::sink::remove(&path)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(credential = self.name(), error = %e, "could not delete the credential file")
                }
                Err(e) => tracing::error!(credential = self.name(), error = %e, "could not delete the credential file"),
            }
        }
        if had {
            self.agent.metrics.removed(self.name(), reason);
            tracing::warn!(credential = self.name(), reason = code, description, "credential removed");
        }
    }

    async fn write_file(&self, held: &Arc<Held>) {
        let Some(file) = self.slot.spec.file.clone() else { return };
        let contents = match file.format {
            FileFormat::Token => {
                zeroize::Zeroizing::new(secrecy::ExposeSecret::expose_secret(&held.token).as_bytes().to_vec())
            }
            FileFormat::Json => {
                let view = held.view(self.name(), &Condition::Active, Instant::now());
                match serde_json::to_vec(&view) {
                    Ok(mut bytes) => {
                        bytes.push(b'\n');
                        zeroize::Zeroizing::new(bytes)
                    }
                    Err(e) => {
                        tracing::error!(credential = self.name(), error = %e, "could not encode the credential file");
                        return;
                    }
                }
            }
        };
        let path = file.path.clone();
        match tokio::task::spawn_blocking(move || super::sink::write(&file, &contents)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.agent.metrics.failed(self.name(), FailureReason::File);
                tracing::error!(credential = self.name(), file = %path.display(), error = %e, "could not write the credential file; it is written again at the next renewal");
            }
            Err(e) => tracing::error!(credential = self.name(), error = %e, "could not write the credential file"),
        }
    }
}
