//! The system lifecycle: tiers move sandbox → pilot → production through
//! gates; a system is suspended when its pilot ends or an owner lapses, and
//! only an operator can reinstate it. Pure rules, time is a parameter.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use super::model::{Owner, OwnerStatus, System, SystemState, Tier};
use super::rfc3339;

/// Lifecycle limits from configuration.
#[derive(Debug, Clone, Copy)]
pub struct LifecyclePolicy {
    /// Longest a sandbox or pilot may run before it must be promoted.
    pub max_pilot: Duration,
    /// How long an owner's recertification lasts.
    pub recertify_every: Duration,
    /// How far ahead owners are warned of a deadline.
    pub notice_window: Duration,
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        Self {
            max_pilot: Duration::from_secs(90 * 86400),
            recertify_every: Duration::from_secs(90 * 86400),
            notice_window: Duration::from_secs(7 * 86400),
        }
    }
}

/// A system with what its rules need: both owners and how many grants it has.
#[derive(Debug, Clone, Serialize)]
pub struct SystemView {
    #[serde(flatten)]
    pub system: System,
    #[serde(skip)]
    pub business_owner: Owner,
    #[serde(skip)]
    pub technical_owner: Owner,
    #[serde(skip)]
    pub grants: usize,
    /// The stored row's version: writes name it, so a stale copy can never
    /// overwrite a newer state.
    #[serde(skip)]
    pub version: i64,
}

/// A refused lifecycle step, with the reason phrased for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// A gate check failed; the list names every failed check.
    #[error("promotion refused: {}", .0.join("; "))]
    Gate(Vec<String>),
}

/// One check of a promotion gate, recorded with its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateCheck {
    pub check: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// Validates a sandbox/pilot end date: in the future, within the maximum
/// pilot length.
pub fn check_pilot_end(end: OffsetDateTime, now: OffsetDateTime, policy: &LifecyclePolicy) -> Result<(), String> {
    if end <= now {
        return Err(format!("pilot_ends_at {} is not in the future", rfc3339(end)));
    }
    if end > now + policy.max_pilot {
        return Err(format!(
            "pilot_ends_at {} is more than the maximum pilot length ({}) away",
            rfc3339(end),
            humantime::format_duration(policy.max_pilot)
        ));
    }
    Ok(())
}

fn owner_active(owner: &Owner, now: OffsetDateTime) -> bool {
    owner.lapse_reason(now).is_none()
}

/// Whether `who` (an operator's recorded name) is one of the system's owners.
fn is_owner(view: &SystemView, who: &str) -> bool {
    let who = who.trim().to_lowercase();
    [&view.business_owner, &view.technical_owner].iter().any(|o| o.id.as_str() == who || o.email.to_lowercase() == who)
}

/// Promotes one tier. Sandbox → pilot needs an end date (given or already
/// set) and both owners; pilot → production needs both owners active and
/// distinct, a data classification, at least one grant, and an approver who
/// is not an owner. Returns the promoted system and the checks made.
pub fn promote(
    view: &SystemView,
    approver: &str,
    pilot_ends_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
    policy: &LifecyclePolicy,
) -> Result<(System, Vec<GateCheck>), LifecycleError> {
    let system = &view.system;
    if system.state != SystemState::Active {
        return Err(LifecycleError::Conflict(format!(
            "system {} is {}; reinstate it before promoting",
            system.id, system.state
        )));
    }
    let mut checks = Vec::new();
    let mut check = |check: &'static str, passed: bool, detail: String| {
        checks.push(GateCheck { check, passed, detail });
    };
    let mut promoted = system.clone();
    match system.tier {
        Tier::Sandbox => {
            let end = pilot_ends_at.or(system.pilot_ends_at);
            match end {
                None => check("pilot_ends_at", false, "a pilot needs pilot_ends_at".into()),
                Some(end) => match check_pilot_end(end, now, policy) {
                    Ok(()) => check("pilot_ends_at", true, rfc3339(end)),
                    Err(why) => check("pilot_ends_at", false, why),
                },
            }
            let both = owner_active(&view.business_owner, now) && owner_active(&view.technical_owner, now);
            check("owners", both, if both { "both owners active".into() } else { "both owners must be active".into() });
            promoted.tier = Tier::Pilot;
            promoted.pilot_ends_at = end;
        }
        Tier::Pilot => {
            for (role, owner) in [("business_owner", &view.business_owner), ("technical_owner", &view.technical_owner)]
            {
                match owner.lapse_reason(now) {
                    None => check(role, true, format!("{} is active", owner.id)),
                    Some(why) => check(role, false, why),
                }
            }
            let distinct = view.business_owner.id != view.technical_owner.id
                && !view.business_owner.email.eq_ignore_ascii_case(&view.technical_owner.email);
            check(
                "distinct_owners",
                distinct,
                if distinct {
                    "business and technical owners are different people".into()
                } else {
                    "the business and technical owner must be different people".into()
                },
            );
            let classified = system.data_classification.as_deref().is_some_and(|c| !c.trim().is_empty());
            check(
                "data_classification",
                classified,
                if classified {
                    system.data_classification.clone().unwrap_or_default()
                } else {
                    "data_classification must be set".into()
                },
            );
            check(
                "grants",
                view.grants > 0,
                if view.grants > 0 {
                    format!("{} grant(s)", view.grants)
                } else {
                    "the system needs at least one grant".into()
                },
            );
            let independent = !is_owner(view, approver);
            check(
                "approver",
                independent,
                if independent {
                    format!("approved by {approver}")
                } else {
                    format!("{approver} owns this system and cannot approve its promotion")
                },
            );
            promoted.tier = Tier::Production;
            promoted.pilot_ends_at = None;
        }
        Tier::Production => {
            return Err(LifecycleError::Conflict(format!("system {} is already in production", system.id)));
        }
    }
    let failed: Vec<String> =
        checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.check, c.detail)).collect();
    if failed.is_empty() { Ok((promoted, checks)) } else { Err(LifecycleError::Gate(failed)) }
}

/// Suspends an active system.
pub fn suspend(system: &System, reason: &str) -> Result<System, LifecycleError> {
    match system.state {
        SystemState::Active => {
            let mut s = system.clone();
            s.state = SystemState::Suspended;
            s.suspended_reason = Some(reason.to_owned());
            Ok(s)
        }
        other => Err(LifecycleError::Conflict(format!("system {} is already {other}", system.id))),
    }
}

/// Retires a system for good (until an operator reinstates it).
pub fn retire(system: &System, reason: &str) -> Result<System, LifecycleError> {
    if system.state == SystemState::Retired {
        return Err(LifecycleError::Conflict(format!("system {} is already retired", system.id)));
    }
    let mut s = system.clone();
    s.state = SystemState::Retired;
    s.suspended_reason = Some(reason.to_owned());
    Ok(s)
}

/// Reinstates a suspended or retired system: both owners must be active,
/// and a sandbox or pilot needs a new end date in the future.
pub fn reinstate(
    view: &SystemView,
    pilot_ends_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
    policy: &LifecyclePolicy,
) -> Result<System, LifecycleError> {
    let system = &view.system;
    if system.state == SystemState::Active {
        return Err(LifecycleError::Conflict(format!("system {} is already active", system.id)));
    }
    for owner in [&view.business_owner, &view.technical_owner] {
        if let Some(why) = owner.lapse_reason(now) {
            return Err(LifecycleError::Invalid(format!(
                "cannot reinstate {}: {why}; recertify or replace the owner first",
                system.id
            )));
        }
    }
    let mut s = system.clone();
    if matches!(s.tier, Tier::Sandbox | Tier::Pilot) {
        let end = pilot_ends_at.ok_or_else(|| {
            LifecycleError::Invalid(format!("pilot_ends_at: reinstating {} {} needs a new end date", s.tier, s.id))
        })?;
        check_pilot_end(end, now, policy).map_err(|why| LifecycleError::Invalid(format!("pilot_ends_at: {why}")))?;
        s.pilot_ends_at = Some(end);
    }
    s.state = SystemState::Active;
    s.suspended_reason = None;
    Ok(s)
}

/// Why the reaper must suspend this active system now, if it must.
pub fn lapse(view: &SystemView, now: OffsetDateTime) -> Option<String> {
    let system = &view.system;
    if system.state != SystemState::Active {
        return None;
    }
    if let Some(end) = system.pilot_ends_at
        && end <= now
    {
        return Some(format!("pilot ended at {} without promotion", rfc3339(end)));
    }
    for (role, owner) in [("business owner", &view.business_owner), ("technical owner", &view.technical_owner)] {
        if owner.status == OwnerStatus::Departed {
            return Some(format!("{role} {} departed", owner.id));
        }
        if owner.attested_until <= now {
            return Some(format!(
                "{role} {}'s ownership attestation lapsed at {}",
                owner.id,
                rfc3339(owner.attested_until)
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::values::{OwnerId, SystemId};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);
    const DAY: Duration = Duration::from_secs(86400);

    fn owner(id: &str) -> Owner {
        Owner {
            id: OwnerId::parse(id).unwrap(),
            display_name: id.into(),
            email: format!("{id}@example.com"),
            status: OwnerStatus::Active,
            attested_until: NOW + 30 * DAY,
        }
    }

    fn pilot() -> SystemView {
        SystemView {
            system: System {
                id: SystemId::parse("s").unwrap(),
                name: "S".into(),
                purpose: "p".into(),
                business_owner: OwnerId::parse("biz").unwrap(),
                technical_owner: OwnerId::parse("tech").unwrap(),
                tier: Tier::Pilot,
                state: SystemState::Active,
                pilot_ends_at: Some(NOW + 10 * DAY),
                data_classification: Some("internal".into()),
                suspended_reason: None,
            },
            business_owner: owner("biz"),
            technical_owner: owner("tech"),
            grants: 1,
            version: 0,
        }
    }

    #[test]
    fn pilot_promotes_when_every_check_passes() {
        let (s, checks) = promote(&pilot(), "carol", None, NOW, &LifecyclePolicy::default()).unwrap();
        assert_eq!(s.tier, Tier::Production);
        assert_eq!(s.pilot_ends_at, None);
        assert!(checks.iter().all(|c| c.passed));
        assert!(checks.iter().any(|c| c.check == "approver" && c.detail.contains("carol")));
    }

    #[test]
    fn each_missing_condition_is_named() {
        let policy = LifecyclePolicy::default();
        let gate = |view: &SystemView, approver: &str| match promote(view, approver, None, NOW, &policy) {
            Err(LifecycleError::Gate(failed)) => failed.join("\n"),
            other => panic!("expected a gate refusal, got {other:?}"),
        };
        let mut v = pilot();
        v.system.data_classification = None;
        assert!(gate(&v, "carol").contains("data_classification"));
        let mut v = pilot();
        v.grants = 0;
        assert!(gate(&v, "carol").contains("grants"));
        let mut v = pilot();
        v.technical_owner = owner("biz");
        v.system.technical_owner = OwnerId::parse("biz").unwrap();
        assert!(gate(&v, "carol").contains("distinct_owners"));
        let mut v = pilot();
        v.business_owner.status = OwnerStatus::Departed;
        assert!(gate(&v, "carol").contains("business_owner"));
        assert!(gate(&pilot(), "tech").contains("approver"), "an owner cannot approve");
        assert!(gate(&pilot(), "BIZ@example.com").contains("approver"), "nor by email");
    }

    #[test]
    fn sandbox_to_pilot_needs_an_end_date_within_the_maximum() {
        let policy = LifecyclePolicy::default();
        let mut v = pilot();
        v.system.tier = Tier::Sandbox;
        v.system.pilot_ends_at = None;
        assert!(matches!(promote(&v, "x", None, NOW, &policy), Err(LifecycleError::Gate(_))));
        assert!(matches!(promote(&v, "x", Some(NOW + 91 * DAY), NOW, &policy), Err(LifecycleError::Gate(_))));
        let (s, _) = promote(&v, "x", Some(NOW + 30 * DAY), NOW, &policy).unwrap();
        assert_eq!(s.tier, Tier::Pilot);
        assert_eq!(s.pilot_ends_at, Some(NOW + 30 * DAY));
    }

    #[test]
    fn reinstatement_needs_active_owners_and_a_future_end() {
        let policy = LifecyclePolicy::default();
        let mut v = pilot();
        v.system = suspend(&v.system, "pilot ended").unwrap();
        assert!(reinstate(&v, None, NOW, &policy).is_err());
        assert!(reinstate(&v, Some(NOW - DAY), NOW, &policy).is_err());
        let s = reinstate(&v, Some(NOW + DAY), NOW, &policy).unwrap();
        assert_eq!(s.state, SystemState::Active);
        assert_eq!(s.suspended_reason, None);
        v.technical_owner.attested_until = NOW;
        assert!(reinstate(&v, Some(NOW + DAY), NOW, &policy).is_err());
    }

    #[test]
    fn lapse_finds_ended_pilots_and_lapsed_owners() {
        let v = pilot();
        assert_eq!(lapse(&v, NOW), None);
        assert!(lapse(&v, NOW + 10 * DAY).unwrap().contains("pilot ended"));
        let mut v = pilot();
        v.business_owner.status = OwnerStatus::Departed;
        assert!(lapse(&v, NOW).unwrap().contains("departed"));
        let mut v = pilot();
        v.system.state = SystemState::Suspended;
        assert_eq!(lapse(&v, NOW + 20 * DAY), None, "only active systems are suspended");
    }
}
