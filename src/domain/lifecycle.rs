//! The system lifecycle: tiers move sandbox → pilot → production through
//! gates; a system is suspended when its pilot ends or an owner lapses, and
//! only an operator can reinstate it. Pure rules, time is a parameter.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use super::identity;
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
}

/// A refused lifecycle step, with the reason phrased for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// A request value is wrong; `field` names it.
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("{0}")]
    Conflict(String),
    /// A gate check failed; the list names every failed check.
    #[error("promotion refused: {}", .0.join("; "))]
    Gate(Vec<String>),
    /// The step would leave a production system without what production
    /// requires; the list names every failed check.
    #[error("production requires: {}", .0.join("; "))]
    Invariant(Vec<String>),
}

impl LifecycleError {
    fn pilot_end(message: String) -> Self {
        Self::Invalid { field: "pilot_ends_at", message }
    }
}

/// One check of a promotion gate, recorded with its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateCheck {
    pub check: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// The latest end a sandbox or pilot that entered its tier at `started`
/// may have: its whole length is at most `lifecycle.max_pilot`, however
/// often its end date is moved.
pub fn pilot_allowance(started: OffsetDateTime, policy: &LifecyclePolicy) -> OffsetDateTime {
    started.checked_add(policy.max_pilot.try_into().unwrap_or(time::Duration::MAX)).unwrap_or(started)
}

/// Validates a sandbox/pilot end date: in the future, and within
/// `lifecycle.max_pilot` of the moment the system entered its tier.
pub fn check_pilot_end(
    end: OffsetDateTime,
    now: OffsetDateTime,
    tier_started_at: OffsetDateTime,
    policy: &LifecyclePolicy,
) -> Result<(), String> {
    if end <= now {
        return Err(format!("pilot_ends_at {} is not in the future", rfc3339(end)));
    }
    let allowance = pilot_allowance(tier_started_at, policy);
    if end > allowance {
        return Err(format!(
            "pilot_ends_at {} is beyond {}: a sandbox or pilot lasts at most lifecycle.max_pilot ({}) from the \
             moment it entered its tier ({}); promote it, or reinstate it with a reason to start a new period",
            rfc3339(end),
            rfc3339(allowance),
            humantime::format_duration(policy.max_pilot),
            rfc3339(tier_started_at)
        ));
    }
    Ok(())
}

fn owner_active(owner: &Owner, now: OffsetDateTime) -> bool {
    owner.lapse_reason(now).is_none()
}

/// Whether `who` (an operator's recorded name, or an email address) is one
/// of the system's owners, compared as people read names (see
/// [`identity`]): a look-alike spelling is the same person.
fn is_owner(view: &SystemView, who: &str) -> bool {
    [&view.business_owner, &view.technical_owner].iter().any(|o| {
        identity::same(who, o.id.as_str())
            || identity::same_email(who, &o.email)
            || (identity::email_key(who).is_none() && identity::same(who, &o.display_name))
    })
}

/// Whether the two owners are different people: different ids and
/// different email addresses, compared as people read them.
pub fn distinct_owners(a: &Owner, b: &Owner) -> bool {
    a.id != b.id && !identity::same(a.id.as_str(), b.id.as_str()) && !identity::same_email(&a.email, &b.email)
}

/// What a production system must have for as long as it is in production,
/// not only when it is promoted: two active owners who are different
/// people, a data classification, and at least one grant.
pub fn production_checks(view: &SystemView, now: OffsetDateTime) -> Vec<GateCheck> {
    let mut checks = Vec::new();
    for (role, owner) in [("business_owner", &view.business_owner), ("technical_owner", &view.technical_owner)] {
        checks.push(match owner.lapse_reason(now) {
            None => GateCheck { check: role, passed: true, detail: format!("{} is active", owner.id) },
            Some(why) => GateCheck { check: role, passed: false, detail: why },
        });
    }
    checks.extend(structural_checks(view));
    checks
}

/// The production checks a change can break (the owners' activity is
/// broken by time and the outside world instead).
pub fn structural_checks(view: &SystemView) -> Vec<GateCheck> {
    let distinct = distinct_owners(&view.business_owner, &view.technical_owner);
    let classified = view.system.data_classification.as_deref().is_some_and(|c| !c.trim().is_empty());
    vec![
        GateCheck {
            check: "distinct_owners",
            passed: distinct,
            detail: if distinct {
                "business and technical owners are different people".into()
            } else {
                format!(
                    "the business owner ({}, {}) and the technical owner ({}, {}) must be different people",
                    view.business_owner.id,
                    identity::visible(&view.business_owner.email),
                    view.technical_owner.id,
                    identity::visible(&view.technical_owner.email)
                )
            },
        },
        GateCheck {
            check: "data_classification",
            passed: classified,
            detail: if classified {
                view.system.data_classification.clone().unwrap_or_default()
            } else {
                "data_classification must be set".into()
            },
        },
        GateCheck {
            check: "grants",
            passed: view.grants > 0,
            detail: if view.grants > 0 {
                format!("{} grant(s)", view.grants)
            } else {
                "the system needs at least one grant".into()
            },
        },
    ]
}

/// The failed checks, as `check: detail`.
pub fn failures(checks: &[GateCheck]) -> Vec<String> {
    checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.check, c.detail)).collect()
}

/// Who approves a change that needs separation of duties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approver {
    /// A person signed in with the organisation's identity provider, as it
    /// vouched for them.
    Person {
        issuer: String,
        subject: String,
        email: Option<String>,
        /// The owners linked to this person (by a verified email at an
        /// earlier sign-in).
        owns: Vec<String>,
    },
    /// An automation token, by its name: it never satisfies separation of
    /// duties, whatever it is called.
    Token { name: String },
}

impl Approver {
    /// How the approver is recorded: a person's email (their subject
    /// without one), a token's name.
    pub fn label(&self) -> String {
        match self {
            Self::Person { email, subject, .. } => identity::visible(email.as_deref().unwrap_or(subject)),
            Self::Token { name } => format!("automation token {}", identity::visible(name)),
        }
    }

    /// Whether the approver is independent of the system's owners: a
    /// person who is neither owner (by email, or by an owner id that is
    /// their subject or email, compared as people read them).
    pub fn independent_of(&self, view: &SystemView) -> Result<(), String> {
        match self {
            Self::Token { .. } => Err(format!(
                "{} cannot approve: separation of duties needs a person signed in with the identity provider \
                 (halflife login)",
                self.label()
            )),
            Self::Person { subject, email, owns, .. } => {
                let linked = [&view.business_owner, &view.technical_owner]
                    .iter()
                    .any(|o| owns.iter().any(|id| id == o.id.as_str()));
                let owns = linked || is_owner(view, subject) || email.as_deref().is_some_and(|e| is_owner(view, e));
                if owns { Err(format!("{} owns this system and cannot approve it", self.label())) } else { Ok(()) }
            }
        }
    }
}

/// Promotes one tier. Sandbox → pilot needs an end date (given or already
/// set) within `max_pilot` from now, and both owners; pilot → production
/// needs everything production requires ([`production_checks`]) and an
/// approver who is not an owner. The promoted system enters its new tier
/// now. Returns the promoted system and the checks made.
pub fn promote(
    view: &SystemView,
    approver: &Approver,
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
    let mut promoted = system.clone();
    match system.tier {
        Tier::Sandbox => {
            let end = pilot_ends_at.or(system.pilot_ends_at);
            let (passed, detail) = match end {
                None => (false, "a pilot needs pilot_ends_at".into()),
                Some(end) => match check_pilot_end(end, now, now, policy) {
                    Ok(()) => (true, rfc3339(end)),
                    Err(why) => (false, why),
                },
            };
            checks.push(GateCheck { check: "pilot_ends_at", passed, detail });
            let both = owner_active(&view.business_owner, now) && owner_active(&view.technical_owner, now);
            checks.push(GateCheck {
                check: "owners",
                passed: both,
                detail: if both { "both owners active".into() } else { "both owners must be active".into() },
            });
            promoted.tier = Tier::Pilot;
            promoted.pilot_ends_at = end;
        }
        Tier::Pilot => {
            checks.extend(production_checks(view, now));
            let independent = approver.independent_of(view);
            checks.push(GateCheck {
                check: "approver",
                passed: independent.is_ok(),
                detail: match independent {
                    Ok(()) => format!("approved by {}", approver.label()),
                    Err(why) => why,
                },
            });
            promoted.tier = Tier::Production;
            promoted.pilot_ends_at = None;
        }
        Tier::Production => {
            return Err(LifecycleError::Conflict(format!("system {} is already in production", system.id)));
        }
    }
    promoted.tier_started_at = now;
    let failed = failures(&checks);
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

/// A reinstated system, and whether the reinstatement started a new
/// sandbox or pilot period.
#[derive(Debug, Clone)]
pub struct Reinstated {
    pub system: System,
    pub new_period: bool,
}

/// Reinstates a suspended or retired system: both owners must be active; a
/// production system must have everything production requires; a sandbox
/// or pilot needs a new end date in the future. An end date within the
/// period's allowance ([`pilot_allowance`]) continues the period; one
/// beyond it starts a new period (from now), which needs a `reason`.
pub fn reinstate(
    view: &SystemView,
    pilot_ends_at: Option<OffsetDateTime>,
    reason: Option<&str>,
    now: OffsetDateTime,
    policy: &LifecyclePolicy,
) -> Result<Reinstated, LifecycleError> {
    let system = &view.system;
    if system.state == SystemState::Active {
        return Err(LifecycleError::Conflict(format!("system {} is already active", system.id)));
    }
    for owner in [&view.business_owner, &view.technical_owner] {
        if let Some(why) = owner.lapse_reason(now) {
            return Err(LifecycleError::Conflict(format!(
                "cannot reinstate {}: {why}; recertify or replace the owner first",
                system.id
            )));
        }
    }
    let mut s = system.clone();
    let mut new_period = false;
    match s.tier {
        Tier::Sandbox | Tier::Pilot => {
            let end = pilot_ends_at.ok_or_else(|| {
                LifecycleError::pilot_end(format!("reinstating {} {} needs a new end date", s.tier, s.id))
            })?;
            if check_pilot_end(end, now, s.tier_started_at, policy).is_err() {
                // Beyond this period's allowance: a new period, from now,
                // decided by a person who says why.
                check_pilot_end(end, now, now, policy).map_err(LifecycleError::pilot_end)?;
                if reason.is_none_or(|r| r.trim().is_empty()) {
                    return Err(LifecycleError::Invalid {
                        field: "reason",
                        message: format!(
                            "{} would run past {} (lifecycle.max_pilot from when its {} began); reinstating it \
                             for a new period needs a reason",
                            s.id,
                            rfc3339(pilot_allowance(s.tier_started_at, policy)),
                            s.tier
                        ),
                    });
                }
                s.tier_started_at = now;
                new_period = true;
            }
            s.pilot_ends_at = Some(end);
        }
        Tier::Production => {
            if pilot_ends_at.is_some() {
                return Err(LifecycleError::pilot_end("a production system has no pilot end".into()));
            }
            let failed = failures(&structural_checks(view));
            if !failed.is_empty() {
                return Err(LifecycleError::Invariant(failed));
            }
        }
    }
    s.state = SystemState::Active;
    s.suspended_reason = None;
    Ok(Reinstated { system: s, new_period })
}

/// Why this active system must be suspended now, if it must: its pilot
/// ended, an owner departed or lapsed, or (in production) it no longer has
/// what production requires.
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
    if system.tier == Tier::Production {
        let failed = failures(&structural_checks(view));
        if !failed.is_empty() {
            return Some(format!("production requires what it no longer has: {}", failed.join("; ")));
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

    /// A person signed in with `email`, whose subject is an opaque id.
    fn person(email: &str) -> Approver {
        Approver::Person {
            issuer: "https://idp.example".into(),
            subject: "248289761001".into(),
            email: Some(email.into()),
            owns: vec![],
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
                tier_started_at: NOW - 20 * DAY,
            },
            business_owner: owner("biz"),
            technical_owner: owner("tech"),
            grants: 1,
        }
    }

    #[test]
    fn pilot_promotes_when_every_check_passes() {
        let (s, checks) =
            promote(&pilot(), &person("carol@example.com"), None, NOW, &LifecyclePolicy::default()).unwrap();
        assert_eq!(s.tier, Tier::Production);
        assert_eq!(s.pilot_ends_at, None);
        assert!(checks.iter().all(|c| c.passed));
        assert!(checks.iter().any(|c| c.check == "approver" && c.detail.contains("carol")));
    }

    #[test]
    fn each_missing_condition_is_named() {
        let policy = LifecyclePolicy::default();
        let gate = |view: &SystemView, approver: &str| match promote(view, &person(approver), None, NOW, &policy) {
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
        let by_subject = Approver::Person {
            issuer: "https://idp.example".into(),
            subject: "tech".into(),
            email: None,
            owns: vec![],
        };
        assert!(matches!(promote(&pilot(), &by_subject, None, NOW, &policy), Err(LifecycleError::Gate(_))));
        let linked = Approver::Person {
            issuer: "https://idp.example".into(),
            subject: "u-77".into(),
            email: Some("new-address@corp.example".into()),
            owns: vec!["biz".into()],
        };
        assert!(
            matches!(promote(&pilot(), &linked, None, NOW, &policy), Err(LifecycleError::Gate(_))),
            "a linked owner, whatever their email is now"
        );
        for alike in ["b\u{200b}iz", "ｂｉｚ", "biz+approve@example.com", "t\u{0435}ch", "tech\u{00ad}"] {
            assert!(gate(&pilot(), alike).contains("approver"), "{alike:?} is an owner by another spelling");
        }
        let mut v = pilot();
        v.technical_owner.email = "biz+tech@example.com".into();
        assert!(gate(&v, "carol").contains("distinct_owners"), "one person with a tagged address");
        let mut v = pilot();
        v.technical_owner.email = "b\u{0456}z@example.com".into();
        assert!(gate(&v, "carol").contains("distinct_owners"), "one person with a look-alike address");
    }

    #[test]
    fn an_automation_token_never_approves_whatever_its_name() {
        let token = Approver::Token { name: "carol@example.com".into() };
        match promote(&pilot(), &token, None, NOW, &LifecyclePolicy::default()) {
            Err(LifecycleError::Gate(failed)) => {
                assert!(
                    failed.iter().any(|f| f.starts_with("approver:") && f.contains("needs a person")),
                    "{failed:?}"
                );
            }
            other => panic!("expected a gate refusal, got {other:?}"),
        }
    }

    #[test]
    fn sandbox_to_pilot_needs_an_end_date_within_the_maximum() {
        let policy = LifecyclePolicy::default();
        let mut v = pilot();
        v.system.tier = Tier::Sandbox;
        v.system.pilot_ends_at = None;
        assert!(matches!(promote(&v, &person("x@example.com"), None, NOW, &policy), Err(LifecycleError::Gate(_))));
        assert!(matches!(
            promote(&v, &person("x@example.com"), Some(NOW + 91 * DAY), NOW, &policy),
            Err(LifecycleError::Gate(_))
        ));
        let (s, _) = promote(&v, &person("x@example.com"), Some(NOW + 30 * DAY), NOW, &policy).unwrap();
        assert_eq!(s.tier, Tier::Pilot);
        assert_eq!(s.pilot_ends_at, Some(NOW + 30 * DAY));
    }

    #[test]
    fn reinstatement_needs_active_owners_and_a_future_end() {
        let policy = LifecyclePolicy::default();
        let mut v = pilot();
        v.system = suspend(&v.system, "pilot ended").unwrap();
        assert!(reinstate(&v, None, None, NOW, &policy).is_err());
        assert!(reinstate(&v, Some(NOW - DAY), None, NOW, &policy).is_err());
        let r = reinstate(&v, Some(NOW + DAY), None, NOW, &policy).unwrap();
        assert_eq!(r.system.state, SystemState::Active);
        assert_eq!(r.system.suspended_reason, None);
        assert!(!r.new_period);
        v.technical_owner.attested_until = NOW;
        assert!(reinstate(&v, Some(NOW + DAY), None, NOW, &policy).is_err());
    }

    #[test]
    fn a_pilot_lasts_max_pilot_from_its_start_unless_a_reinstatement_with_a_reason_starts_a_new_period() {
        let policy = LifecyclePolicy::default();
        let v = pilot();
        let started = v.system.tier_started_at;
        assert!(check_pilot_end(started + 90 * DAY, NOW, started, &policy).is_ok());
        let beyond = check_pilot_end(started + 91 * DAY, NOW, started, &policy).unwrap_err();
        assert!(beyond.contains("max_pilot"), "{beyond}");

        let mut v = pilot();
        v.system = suspend(&v.system, "paused").unwrap();
        let within = reinstate(&v, Some(started + 90 * DAY), None, NOW, &policy).unwrap();
        assert!(!within.new_period);
        assert_eq!(within.system.tier_started_at, started);
        match reinstate(&v, Some(NOW + 80 * DAY), None, NOW, &policy) {
            Err(LifecycleError::Invalid { field: "reason", .. }) => {}
            other => panic!("a new period needs a reason, got {other:?}"),
        }
        let renewed = reinstate(&v, Some(NOW + 80 * DAY), Some("second phase approved"), NOW, &policy).unwrap();
        assert!(renewed.new_period);
        assert_eq!(renewed.system.tier_started_at, NOW);
        assert!(reinstate(&v, Some(NOW + 91 * DAY), Some("too long"), NOW, &policy).is_err());
    }

    #[test]
    fn production_requires_its_invariants_for_as_long_as_it_lasts() {
        let mut v = pilot();
        v.system.tier = Tier::Production;
        v.system.pilot_ends_at = None;
        assert_eq!(lapse(&v, NOW), None);
        v.system.data_classification = Some(" ".into());
        assert!(lapse(&v, NOW).unwrap().contains("data_classification"));
        let mut stopped = v.clone();
        stopped.system = suspend(&v.system, "x").unwrap();
        assert!(matches!(reinstate(&stopped, None, None, NOW, &LifecyclePolicy::default()),
            Err(LifecycleError::Invariant(failed)) if failed.join(" ").contains("data_classification")));
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
