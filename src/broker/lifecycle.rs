//! The lifecycle reaper and the durable job runner.
//!
//! The reaper suspends systems whose pilot ended unpromoted or whose owner
//! lapsed, revokes everything they hold, records why, and warns owners ahead
//! of deadlines. It is idempotent and takes `now`, so tests call `run_once`
//! instead of waiting for a tick.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use super::catalog::{self, Actor, ChangeError};
use super::{Broker, Unavailable};
use crate::domain::catalog::Change;
use crate::domain::lifecycle;
use crate::domain::model::{OwnerStatus, SystemState};
use crate::domain::rfc3339;
use crate::store::{AuditEvent, Job, JobSpec, Notice, Outcome, RequestMeta};

/// Most jobs run per pass.
const JOBS_PER_PASS: u32 = 50;
/// Rows one revocation job marks per statement, and statements per pass.
const MARK_BATCH: u32 = 1000;
const MARK_BATCHES_PER_PASS: u32 = 100;
/// After this many failed attempts a job is reported as failing.
pub const FAILING_AFTER: i64 = 3;
pub use super::catalog::LIFECYCLE_ACTOR;

/// What one reaper pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReaperReport {
    /// Systems suspended, with why.
    pub suspended: Vec<(String, String)>,
    /// Credentials those suspensions made inactive.
    pub revoked: u64,
    pub notices: usize,
    /// Database logins whose destruction was queued.
    pub logins_queued: usize,
    /// Access requests that lapsed, or ended because their system stopped.
    pub access_requests: usize,
    pub jobs_done: usize,
    pub jobs_failed: usize,
}

/// An upcoming deadline.
#[derive(Debug, Clone, Serialize)]
pub struct Deadline {
    pub kind: &'static str,
    pub subject_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    pub systems: Vec<String>,
    pub message: String,
}

/// Retry delay after `attempts` failures: 5 s doubling, at most an hour.
pub fn backoff(attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 10)).unwrap_or(10);
    Duration::from_secs(5u64.saturating_mul(2u64.saturating_pow(exp))).min(Duration::from_secs(3600))
}

impl Broker {
    /// One reaper pass at `now`: suspensions, notices, then due jobs.
    pub async fn run_lifecycle_once(&self, now: OffsetDateTime) -> Result<ReaperReport, Unavailable> {
        let mut report = self.run_reaper_once(now).await?;
        let (done, failed) = self.run_jobs_once(now).await?;
        report.jobs_done = done;
        report.jobs_failed = failed;
        Ok(report)
    }

    /// Suspensions and notices, without running jobs (the server runs jobs
    /// in their own task, so a slow webhook never delays a suspension).
    pub async fn run_reaper_once(&self, now: OffsetDateTime) -> Result<ReaperReport, Unavailable> {
        let mut report = self.suspend_lapsed(now).await?;
        report.notices = self.record_notices(now).await?;
        report.access_requests = self.settle_access_requests(now).await?;
        // Database logins that are revoked or expired get a drop_login job.
        report.logins_queued = self.jobs.queue_login_drops(now).await.map_err(Unavailable)?;
        self.stats.reaper_ran(report.suspended.len());
        Ok(report)
    }

    /// Suspends every active system that has lapsed at `now` (pilot ended,
    /// owner departed or lapsed, production without what it requires),
    /// revoking what it holds, through the same catalog transaction every
    /// change takes (see [`super::catalog`]). Most passes find nothing and
    /// take no write lock.
    pub async fn suspend_lapsed(&self, now: OffsetDateTime) -> Result<ReaperReport, Unavailable> {
        let mut report = ReaperReport::default();
        let systems = self.lifecycle.list_systems().await.map_err(Unavailable)?;
        if !systems.iter().any(|view| lifecycle::lapse(view, now).is_some()) {
            return Ok(report);
        }
        let meta = RequestMeta::default();
        let actor = Actor { name: LIFECYCLE_ACTOR, meta: &meta };
        let applied =
            match catalog::change(self.catalog.as_ref(), &Change::Settle, &self.lifecycle_policy, &actor, now, true)
                .await
            {
                Ok(applied) => applied,
                Err(ChangeError::Store(e)) => return Err(Unavailable(e)),
                // Settling refuses nothing; a refusal would be a bug, and
                // the next pass tries again.
                Err(ChangeError::Refused(refusal)) => {
                    tracing::error!(%refusal, "settling lapsed systems was refused");
                    return Ok(report);
                }
            };
        for (system, why, revoked) in applied.lapses() {
            report.revoked += revoked;
            report.suspended.push((system, why));
        }
        Ok(report)
    }

    /// Records notices for deadlines within the window (once each).
    async fn record_notices(&self, now: OffsetDateTime) -> Result<usize, Unavailable> {
        let mut recorded = 0;

        for deadline in self.deadlines(now).await? {
            let lapsed = deadline.due_at <= now;
            if lapsed && deadline.kind != "owner.lapsed" {
                continue;
            }
            let notice = Notice {
                kind: deadline.kind.to_owned(),
                subject_id: deadline.subject_id.clone(),
                due_at: deadline.due_at,
                message: deadline.message.clone(),
                created_at: now,
            };
            let kind = if lapsed { "owner.lapsed" } else { "lifecycle.notice" };
            let mut event = AuditEvent::new(kind, Outcome::Success, now, &RequestMeta::default());
            event.actor = Some(LIFECYCLE_ACTOR.into());
            event.reason = Some(deadline.message.clone());
            event.detail = Some(serde_json::json!(deadline));
            let job = self
                .webhook
                .as_ref()
                .map(|_| JobSpec::Webhook { body: serde_json::json!({"notice": notice, "systems": deadline.systems}) });
            if self.lifecycle.record_notice(&notice, event, job).await.map_err(Unavailable)? {
                recorded += 1;
            }
        }

        Ok(recorded)
    }

    /// Pilot ends and attestation lapses within the notice window, and
    /// owners whose attestation has already lapsed.
    pub async fn deadlines(&self, now: OffsetDateTime) -> Result<Vec<Deadline>, Unavailable> {
        let horizon = now + self.lifecycle_policy.notice_window;
        let systems = self.lifecycle.list_systems().await.map_err(Unavailable)?;
        let owners = self.lifecycle.list_owners().await.map_err(Unavailable)?;
        let mut out = Vec::new();
        for view in &systems {
            let s = &view.system;
            if s.state != SystemState::Active {
                continue;
            }
            if let Some(end) = s.pilot_ends_at
                && end > now
                && end <= horizon
            {
                out.push(Deadline {
                    kind: "pilot.ending",
                    subject_id: s.id.to_string(),
                    due_at: end,
                    systems: vec![s.id.to_string()],
                    message: format!(
                        "the {} of system {} ends at {}; promote it or it will be suspended",
                        s.tier,
                        s.id,
                        rfc3339(end)
                    ),
                });
            }
        }
        for owner in &owners {
            if owner.status == OwnerStatus::Departed || owner.attested_until > horizon {
                continue;
            }
            let owned: Vec<String> = systems
                .iter()
                .filter(|v| v.system.business_owner == owner.id || v.system.technical_owner == owner.id)
                .map(|v| v.system.id.to_string())
                .collect();
            let (kind, message) = if owner.attested_until <= now {
                (
                    "owner.lapsed",
                    format!("owner {}'s ownership attestation lapsed at {}", owner.id, rfc3339(owner.attested_until)),
                )
            } else {
                (
                    "attestation.expiring",
                    format!(
                        "owner {} must recertify by {} (halflife owners recertify {}) or their systems will be suspended",
                        owner.id,
                        rfc3339(owner.attested_until),
                        owner.id
                    ),
                )
            };
            out.push(Deadline {
                kind,
                subject_id: owner.id.to_string(),
                due_at: owner.attested_until,
                systems: owned,
                message,
            });
        }
        out.sort_by_key(|d| d.due_at);
        Ok(out)
    }

    /// Drops every role with the halflife prefix on every backend that no
    /// live or dropping login record names: roles a crash left between
    /// creation and record. Run once at start by the leader. Returns how
    /// many were dropped; a backend that cannot be reached is skipped.
    pub async fn sweep_logins(&self) -> Result<usize, Unavailable> {
        let kept: std::collections::HashSet<String> =
            self.jobs.kept_login_roles().await.map_err(Unavailable)?.into_iter().collect();
        let mut dropped = 0;
        for backend in self.logins.backends() {
            let roles = match self.logins.prefixed_roles(&backend).await {
                Ok(roles) => roles,
                Err(e) => {
                    tracing::warn!(error = %e, "login sweep skipped a backend");
                    continue;
                }
            };
            for role in roles.iter().filter(|r| !kept.contains(*r)) {
                match self.logins.drop_login(&backend, role).await {
                    Ok(()) => {
                        tracing::warn!(db.role = %role, db.backend = %backend, "dropped a database login without a record");
                        dropped += 1;
                    }
                    Err(e) => tracing::warn!(error = %e, db.role = %role, "login sweep could not drop a role"),
                }
            }
        }
        Ok(dropped)
    }

    /// Pending jobs by kind, failing or not (for metrics).
    pub async fn job_stats(&self) -> Result<Vec<crate::store::JobStat>, Unavailable> {
        self.jobs.job_stats(FAILING_AFTER).await.map_err(Unavailable)
    }

    /// Runs due jobs once; returns (done, failed).
    pub async fn run_jobs_once(&self, now: OffsetDateTime) -> Result<(usize, usize), Unavailable> {
        let jobs = self.jobs.due_jobs(now, JOBS_PER_PASS).await.map_err(Unavailable)?;
        let (mut done, mut failed) = (0, 0);
        for job in jobs {
            match self.run_job(&job).await {
                Ok(None) => {
                    self.jobs.job_done(job.id, now).await.map_err(Unavailable)?;
                    done += 1;
                }
                // Progress, not failure: save the cursor, continue next pass.
                Ok(Some(next)) => self.jobs.job_continue(job.id, &next, now).await.map_err(Unavailable)?,
                Err(error) => {
                    let retry_at = now + backoff(job.attempts);
                    tracing::warn!(job.id = job.id, job.kind = %job.kind, attempts = job.attempts + 1, error = %error, "job failed; will retry");
                    self.jobs.job_failed(job.id, &error, retry_at, now).await.map_err(Unavailable)?;
                    failed += 1;
                }
            }
        }
        Ok((done, failed))
    }

    /// Runs one job step: `Ok(None)` when finished, `Ok(Some(next))` when
    /// it made progress and should continue from `next`.
    async fn run_job(&self, job: &Job) -> Result<Option<JobSpec>, String> {
        let Some(spec) = &job.spec else {
            return Err(format!("job {} has an unreadable payload", job.id));
        };
        match spec {
            JobSpec::MarkRevoked { target, through, after, reason, at } => {
                let mut cursor = *after;
                for _ in 0..MARK_BATCHES_PER_PASS {
                    let step = self
                        .jobs
                        .mark_revoked(target, *through, cursor, reason, *at, MARK_BATCH)
                        .await
                        .map_err(|e| e.to_string())?;
                    match step {
                        Some(last) => cursor = last,
                        None => return Ok(None),
                    }
                }
                Ok(Some(JobSpec::MarkRevoked {
                    target: target.clone(),
                    through: *through,
                    after: cursor,
                    reason: reason.clone(),
                    at: *at,
                }))
            }
            JobSpec::DropLogin { backend, role, jti } => {
                self.logins.drop_login(backend, role).await.map_err(|e| e.to_string())?;
                self.jobs.login_dropped(jti).await.map_err(|e| e.to_string())?;
                tracing::info!(credential.jti = %jti, db.role = %role, db.backend = %backend, "database login dropped");
                Ok(None)
            }
            JobSpec::Webhook { body } => {
                let Some(webhook) = &self.webhook else {
                    return Ok(None);
                };
                let response = webhook
                    .client
                    .post(webhook.url.clone())
                    .json(body)
                    .send()
                    .await
                    .map_err(|e| format!("webhook: {e}"))?;
                if response.status().is_success() {
                    Ok(None)
                } else {
                    Err(format!("webhook answered HTTP {}", response.status()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(100), Duration::from_secs(3600));
    }
}
