//! The catalog's rules, in one place. Every path that changes owners,
//! systems or grants — the operator API, `halflife apply` (through the
//! server or on the database), the bootstrap apply at start, and the
//! lifecycle reaper — states its change as a [`Change`], and [`plan`] turns
//! it into [`Step`]s against the catalog as it is under the write lock.
//! Storage executes the steps and knows no rules.
//!
//! Every plan follows the same order:
//! 1. whatever has lapsed is suspended first ([`settle`]): a pilot past its
//!    end, an owner departed or past their attestation, a production system
//!    that no longer has what production requires. So no change can cure a
//!    lapse quietly: credentials issued before it stay revoked, and the
//!    system waits for an operator's reinstatement;
//! 2. the change itself, refused whole if any part breaks a rule;
//! 3. whatever the change made lapse is suspended at once (an owner marked
//!    departed, in a catalog file as through the API);
//! 4. no production system may lose what production requires (two
//!    distinct owners, a classification, a grant) through the change: such
//!    a change is refused, naming the failed checks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use super::identity;
use super::lifecycle::{self, GateCheck, LifecycleError, LifecyclePolicy, SystemView};
use super::model::{Binding, Grant, Owner, OwnerStatus, System, SystemState, Tier};
use super::values::{GrantId, OwnerId, SystemId};

/// Owners, systems and grants as they are now.
#[derive(Debug, Clone, Default)]
pub struct CatalogState {
    pub owners: BTreeMap<OwnerId, Owner>,
    pub systems: BTreeMap<SystemId, System>,
    pub grants: BTreeMap<GrantId, Grant>,
}

impl CatalogState {
    /// A system with its owners and grant count, if it and its owners exist.
    pub fn view(&self, id: &SystemId) -> Option<SystemView> {
        let system = self.systems.get(id)?;
        Some(SystemView {
            business_owner: self.owners.get(&system.business_owner)?.clone(),
            technical_owner: self.owners.get(&system.technical_owner)?.clone(),
            grants: self.grants.values().filter(|g| g.system == *id).count(),
            system: system.clone(),
        })
    }

    fn system(&self, id: &SystemId) -> Result<&System, Refusal> {
        self.systems.get(id).ok_or_else(|| Refusal::NotFound(format!("system {id} does not exist")))
    }

    fn owner(&self, id: &OwnerId) -> Result<&Owner, Refusal> {
        self.owners.get(id).ok_or_else(|| Refusal::NotFound(format!("owner {id} does not exist")))
    }
}

/// A date in a catalog file: given, or set when the entry is created and
/// then left alone by later applies (so re-applying a file changes nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateSpec {
    At(OffsetDateTime),
    OnCreate(Duration),
}

impl DateSpec {
    /// The date this spec means for an entry that has `existing` (or none).
    fn resolve(self, existing: Option<OffsetDateTime>, now: OffsetDateTime) -> OffsetDateTime {
        match (self, existing) {
            (Self::At(t), _) => t,
            (Self::OnCreate(_), Some(current)) => current,
            (Self::OnCreate(d), None) => now.checked_add(d.try_into().unwrap_or(time::Duration::MAX)).unwrap_or(now),
        }
    }
}

/// Declarative input of `halflife apply`, already validated field by field.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub owners: Vec<OwnerSpec>,
    pub systems: Vec<SystemSpec>,
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone)]
pub struct OwnerSpec {
    pub id: OwnerId,
    pub display_name: String,
    pub email: String,
    pub status: OwnerStatus,
    pub attested_until: DateSpec,
}

#[derive(Debug, Clone)]
pub struct SystemSpec {
    pub id: SystemId,
    pub name: String,
    pub purpose: String,
    pub business_owner: OwnerId,
    pub technical_owner: OwnerId,
    pub tier: Tier,
    pub pilot_ends_at: Option<DateSpec>,
    pub data_classification: Option<String>,
}

/// What an apply changed, by entry (`system/summarizer`), and which
/// systems it suspended because something had lapsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub suspended: Vec<String>,
}

/// A new system from the operator API.
#[derive(Debug, Clone)]
pub struct NewSystem {
    pub id: SystemId,
    pub name: String,
    pub purpose: String,
    pub business_owner: OwnerId,
    pub technical_owner: OwnerId,
    pub tier: Tier,
    pub pilot_ends_at: Option<OffsetDateTime>,
    pub data_classification: Option<String>,
}

/// Changes to a system's descriptive fields; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct SystemPatch {
    pub name: Option<String>,
    pub purpose: Option<String>,
    pub business_owner: Option<OwnerId>,
    pub technical_owner: Option<OwnerId>,
    pub pilot_ends_at: Option<OffsetDateTime>,
    pub data_classification: Option<String>,
}

/// One change to the catalog, from any path.
#[derive(Debug, Clone)]
pub enum Change {
    /// Only suspend what has lapsed (the reaper).
    Settle,
    CreateOwner {
        id: OwnerId,
        display_name: String,
        email: String,
    },
    RecertifyOwner(OwnerId),
    DepartOwner {
        id: OwnerId,
        reason: Option<String>,
    },
    CreateSystem(NewSystem),
    UpdateSystem {
        id: SystemId,
        patch: SystemPatch,
    },
    /// `approver` is who approves: a person, for production.
    Promote {
        id: SystemId,
        pilot_ends_at: Option<OffsetDateTime>,
        approver: lifecycle::Approver,
    },
    /// Suspend (`retire: false`) or retire; `by` names who, for the
    /// system's recorded reason.
    Stop {
        id: SystemId,
        reason: String,
        by: String,
        retire: bool,
    },
    Reinstate {
        id: SystemId,
        pilot_ends_at: Option<OffsetDateTime>,
        reason: Option<String>,
    },
    CreateGrant(Grant),
    DeleteGrant {
        system: SystemId,
        grant: GrantId,
    },
    Apply(Catalog),
}

impl Change {
    /// The kind of entity the change is about, for refusal records
    /// (`system.refused`, …).
    pub fn entity(&self) -> &'static str {
        match self {
            Self::Settle => "lifecycle",
            Self::CreateOwner { .. } | Self::RecertifyOwner(_) | Self::DepartOwner { .. } => "owner",
            Self::CreateSystem(_)
            | Self::UpdateSystem { .. }
            | Self::Promote { .. }
            | Self::Stop { .. }
            | Self::Reinstate { .. } => "system",
            Self::CreateGrant(_) | Self::DeleteGrant { .. } => "grant",
            Self::Apply(_) => "catalog",
        }
    }

    /// What the change does, in a word, for refusal records.
    pub fn action(&self) -> &'static str {
        match self {
            Self::Settle => "settle",
            Self::CreateOwner { .. } | Self::CreateSystem(_) | Self::CreateGrant(_) => "create",
            Self::RecertifyOwner(_) => "recertify",
            Self::DepartOwner { .. } => "depart",
            Self::UpdateSystem { .. } => "update",
            Self::Promote { .. } => "promote",
            Self::Stop { retire: false, .. } => "suspend",
            Self::Stop { retire: true, .. } => "retire",
            Self::Reinstate { .. } => "reinstate",
            Self::DeleteGrant { .. } => "delete",
            Self::Apply(_) => "apply",
        }
    }

    /// The system the change is about, if one.
    pub fn system(&self) -> Option<&SystemId> {
        match self {
            Self::CreateSystem(s) => Some(&s.id),
            Self::UpdateSystem { id, .. }
            | Self::Promote { id, .. }
            | Self::Stop { id, .. }
            | Self::Reinstate { id, .. }
            | Self::DeleteGrant { system: id, .. } => Some(id),
            Self::CreateGrant(g) => Some(&g.system),
            _ => None,
        }
    }
}

/// One write of a plan, with what it replaces (`was`).
#[derive(Debug, Clone)]
pub enum Step {
    OwnerCreated(Owner),
    OwnerChanged {
        owner: Owner,
        was: Owner,
    },
    OwnerRecertified {
        owner: Owner,
        was: Owner,
    },
    OwnerDeparted {
        owner: Owner,
        was: Owner,
        reason: Option<String>,
    },
    SystemCreated(System),
    SystemChanged {
        system: System,
        was: System,
    },
    SystemPromoted {
        system: System,
        was: System,
        gate: Vec<GateCheck>,
    },
    /// Suspended or retired (by `system.state`); everything it holds is
    /// revoked. `lapse`: the rules did it (a lapse), not a person.
    SystemStopped {
        system: System,
        was: System,
        reason: String,
        lapse: bool,
    },
    /// `new_period`: a sandbox or pilot starts a new `max_pilot` period.
    SystemReinstated {
        system: System,
        was: System,
        reason: Option<String>,
        new_period: bool,
    },
    GrantCreated(Grant),
    /// `narrowed`: the grant allows less than before, so what was issued
    /// under it is revoked.
    GrantChanged {
        grant: Grant,
        was: Grant,
        narrowed: bool,
    },
    /// What was issued under it is revoked.
    GrantDeleted(Grant),
}

/// What a change does: its steps in order, the catalog after them, and
/// what the caller asked for.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub state: CatalogState,
    /// The promotion gate's checks, for a promotion.
    pub gate: Vec<GateCheck>,
    /// For an apply.
    pub report: ApplyReport,
}

/// Why a change was refused. Nothing of it is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotFound(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Conflict(String),
    /// The promotion gate refused; every failed check is listed.
    #[error("promotion refused: {}", .0.join("; "))]
    Gate(Vec<String>),
    /// The change would leave a production system without what production
    /// requires; every failed check is listed.
    #[error("production requires: {}", .0.join("; "))]
    Invariant(Vec<String>),
}

impl Refusal {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.to_owned(), message: message.into() }
    }
}

impl From<LifecycleError> for Refusal {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Invalid { field, message } => Self::invalid(field, message),
            LifecycleError::Conflict(m) => Self::Conflict(m),
            LifecycleError::Gate(failed) => Self::Gate(failed),
            LifecycleError::Invariant(failed) => Self::Invariant(failed),
        }
    }
}

/// Suspends every active system that has lapsed at `now` in `state`,
/// recording a step for each.
pub fn settle(state: &mut CatalogState, steps: &mut Vec<Step>, now: OffsetDateTime) {
    let lapsed: Vec<(SystemId, String)> = state
        .systems
        .keys()
        .filter_map(|id| state.view(id).and_then(|view| lifecycle::lapse(&view, now)).map(|why| (id.clone(), why)))
        .collect();
    for (id, why) in lapsed {
        let Some(was) = state.systems.get(&id).cloned() else { continue };
        if let Ok(suspended) = lifecycle::suspend(&was, &why) {
            state.systems.insert(id, suspended.clone());
            steps.push(Step::SystemStopped { system: suspended, was, reason: why, lapse: true });
        }
    }
}

/// Plans `change` against `state` at `now`: the steps to write, in order,
/// or why nothing may be written.
pub fn plan(
    state: &CatalogState,
    change: &Change,
    now: OffsetDateTime,
    policy: &LifecyclePolicy,
) -> Result<Plan, Refusal> {
    let mut plan = Plan { state: state.clone(), ..Plan::default() };
    settle(&mut plan.state, &mut plan.steps, now);
    let planner = Planner { now, policy };
    match change {
        Change::Settle => {}
        Change::CreateOwner { id, display_name, email } => planner.create_owner(&mut plan, id, display_name, email)?,
        Change::RecertifyOwner(id) => planner.recertify(&mut plan, id)?,
        Change::DepartOwner { id, reason } => planner.depart(&mut plan, id, reason.clone())?,
        Change::CreateSystem(new) => planner.create_system(&mut plan, new)?,
        Change::UpdateSystem { id, patch } => planner.update_system(&mut plan, id, patch)?,
        Change::Promote { id, pilot_ends_at, approver } => planner.promote(&mut plan, id, *pilot_ends_at, approver)?,
        Change::Stop { id, reason, by, retire } => planner.stop(&mut plan, id, reason, by, *retire)?,
        Change::Reinstate { id, pilot_ends_at, reason } => {
            planner.reinstate(&mut plan, id, *pilot_ends_at, reason.as_deref())?;
        }
        Change::CreateGrant(grant) => planner.create_grant(&mut plan, grant)?,
        Change::DeleteGrant { system, grant } => planner.delete_grant(&mut plan, system, grant)?,
        Change::Apply(catalog) => planner.apply(&mut plan, catalog)?,
    }
    settle(&mut plan.state, &mut plan.steps, now);
    keep_production_whole(state, &plan.state)?;
    plan.report.suspended = plan
        .steps
        .iter()
        .filter_map(|step| match step {
            Step::SystemStopped { system, reason, lapse: true, .. } => Some(format!("system/{}: {reason}", system.id)),
            _ => None,
        })
        .collect();
    Ok(plan)
}

/// Refuses a change after which a production system (not retired) fails a
/// check of [`lifecycle::structural_checks`] that it passed before.
fn keep_production_whole(before: &CatalogState, after: &CatalogState) -> Result<(), Refusal> {
    let mut failed = Vec::new();
    for (id, system) in &after.systems {
        if system.tier != Tier::Production || system.state == SystemState::Retired {
            continue;
        }
        let Some(view) = after.view(id) else { continue };
        let passed_before: BTreeSet<&'static str> = before
            .view(id)
            .filter(|v| v.system.tier == Tier::Production)
            .map(|v| lifecycle::structural_checks(&v).into_iter().filter(|c| c.passed).map(|c| c.check).collect())
            .unwrap_or_default();
        for check in lifecycle::structural_checks(&view) {
            if !check.passed && (passed_before.contains(check.check) || !before.systems.contains_key(id)) {
                failed.push(format!("{id}: {}: {}", check.check, check.detail));
            }
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(Refusal::Invariant(failed)) }
}

/// Whether `new` takes away anything `old` allowed (an issuer or subject,
/// an audience, a scope, a kind, lifetime, or a way of presenting the
/// token), so that credentials issued under `old` may hold more than the
/// grant allows now.
pub fn narrows(old: &Grant, new: &Grant) -> bool {
    // How a token may be presented under each binding.
    let presentations = |b: Binding| -> &'static [&'static str] {
        match b {
            Binding::Optional => &["bearer", "dpop", "mtls"],
            Binding::Required => &["dpop", "mtls"],
            Binding::Dpop => &["dpop"],
            Binding::Mtls => &["mtls"],
        }
    };
    old.issuer != new.issuer
        || old.subject != new.subject
        || old.audiences.iter().any(|a| !new.audiences.contains(a))
        || !old.scopes.is_subset(&new.scopes)
        || old.kinds.iter().any(|k| !new.kinds.contains(k))
        || new.max_ttl < old.max_ttl
        || new.max_audiences < old.max_audiences
        || old.on_behalf_of.iter().any(|entry| !new.on_behalf_of.contains(entry))
        || presentations(old.binding).iter().any(|p| !presentations(new.binding).contains(p))
}

struct Planner<'a> {
    now: OffsetDateTime,
    policy: &'a LifecyclePolicy,
}

fn non_empty(field: &str, value: &str) -> Result<String, Refusal> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.len() > 500 {
        return Err(Refusal::invalid(field, "must be 1-500 characters"));
    }
    if let Some(c) = trimmed.chars().find(|c| c.is_control()) {
        return Err(Refusal::invalid(field, format!("contains a control character (U+{:04X})", u32::from(c))));
    }
    Ok(trimmed.to_owned())
}

/// Checks an owner's email address: an address, readable (no invisible or
/// mixed-script characters).
fn check_email(field: &str, email: &str) -> Result<(), Refusal> {
    if !email.contains('@') || email.chars().any(char::is_whitespace) || email.len() > 254 {
        return Err(Refusal::invalid(field, "must be an email address"));
    }
    identity::check_readable("the email address", email).map_err(|m| Refusal::invalid(field, m))
}

fn check_display_name(field: &str, name: &str) -> Result<String, Refusal> {
    let name = non_empty(field, name)?;
    if let Some(c) = name.chars().find(|c| identity::is_invisible(*c)) {
        return Err(Refusal::invalid(
            field,
            format!("contains an invisible character (U+{:04X}); write it with visible characters only", u32::from(c)),
        ));
    }
    Ok(name)
}

impl Planner<'_> {
    fn create_owner(&self, plan: &mut Plan, id: &OwnerId, display_name: &str, email: &str) -> Result<(), Refusal> {
        if plan.state.owners.contains_key(id) {
            return Err(Refusal::Conflict(format!("owner {id} already exists")));
        }
        check_email("email", email)?;
        let owner = Owner {
            id: id.clone(),
            display_name: check_display_name("display_name", display_name)?,
            email: email.to_owned(),
            status: OwnerStatus::Active,
            attested_until: self.now + self.policy.recertify_every,
        };
        plan.state.owners.insert(id.clone(), owner.clone());
        plan.steps.push(Step::OwnerCreated(owner));
        Ok(())
    }

    fn recertify(&self, plan: &mut Plan, id: &OwnerId) -> Result<(), Refusal> {
        let was = plan.state.owner(id)?.clone();
        if was.status == OwnerStatus::Departed {
            return Err(Refusal::Conflict(format!("owner {id} has departed and cannot be recertified")));
        }
        let owner = Owner { attested_until: self.now + self.policy.recertify_every, ..was.clone() };
        plan.state.owners.insert(id.clone(), owner.clone());
        plan.steps.push(Step::OwnerRecertified { owner, was });
        Ok(())
    }

    fn depart(&self, plan: &mut Plan, id: &OwnerId, reason: Option<String>) -> Result<(), Refusal> {
        let was = plan.state.owner(id)?.clone();
        if was.status == OwnerStatus::Departed {
            return Err(Refusal::Conflict(format!("owner {id} has already departed")));
        }
        let owner = Owner { status: OwnerStatus::Departed, ..was.clone() };
        plan.state.owners.insert(id.clone(), owner.clone());
        plan.steps.push(Step::OwnerDeparted { owner, was, reason });
        Ok(())
    }

    /// Refuses an owner who does not exist or who has lapsed, for a system
    /// being given them as `field`.
    fn assignable(&self, state: &CatalogState, field: &str, id: &OwnerId) -> Result<(), Refusal> {
        let owner =
            state.owners.get(id).ok_or_else(|| Refusal::NotFound(format!("{field}: owner {id} does not exist")))?;
        match owner.lapse_reason(self.now) {
            None => Ok(()),
            Some(why) => Err(Refusal::Conflict(format!(
                "{field}: {why}; a system cannot be given an owner who no longer vouches for it"
            ))),
        }
    }

    fn create_system(&self, plan: &mut Plan, new: &NewSystem) -> Result<(), Refusal> {
        if plan.state.systems.contains_key(&new.id) {
            return Err(Refusal::Conflict(format!("system {} already exists", new.id)));
        }
        if new.tier == Tier::Production {
            return Err(Refusal::invalid(
                "tier",
                "a system starts as sandbox or pilot and reaches production through promotion",
            ));
        }
        let end = new.pilot_ends_at.ok_or_else(|| {
            Refusal::invalid("pilot_ends_at", "sandbox and pilot systems need an end date (RFC 3339)")
        })?;
        lifecycle::check_pilot_end(end, self.now, self.now, self.policy)
            .map_err(|m| Refusal::invalid("pilot_ends_at", m))?;
        self.assignable(&plan.state, "business_owner", &new.business_owner)?;
        self.assignable(&plan.state, "technical_owner", &new.technical_owner)?;
        let system = System {
            id: new.id.clone(),
            name: non_empty("name", &new.name)?,
            purpose: non_empty("purpose", &new.purpose)?,
            business_owner: new.business_owner.clone(),
            technical_owner: new.technical_owner.clone(),
            tier: new.tier,
            state: SystemState::Active,
            pilot_ends_at: Some(end),
            data_classification: classification(new.data_classification.as_deref())?,
            suspended_reason: None,
            tier_started_at: self.now,
        };
        plan.state.systems.insert(system.id.clone(), system.clone());
        plan.steps.push(Step::SystemCreated(system));
        Ok(())
    }

    fn update_system(&self, plan: &mut Plan, id: &SystemId, patch: &SystemPatch) -> Result<(), Refusal> {
        let was = plan.state.system(id)?.clone();
        let mut system = was.clone();
        if let Some(name) = &patch.name {
            system.name = non_empty("name", name)?;
        }
        if let Some(purpose) = &patch.purpose {
            system.purpose = non_empty("purpose", purpose)?;
        }
        if let Some(o) = &patch.business_owner
            && *o != was.business_owner
        {
            self.assignable(&plan.state, "business_owner", o)?;
            system.business_owner = o.clone();
        }
        if let Some(o) = &patch.technical_owner
            && *o != was.technical_owner
        {
            self.assignable(&plan.state, "technical_owner", o)?;
            system.technical_owner = o.clone();
        }
        if let Some(end) = patch.pilot_ends_at {
            if system.tier == Tier::Production {
                return Err(Refusal::invalid("pilot_ends_at", "a production system has no pilot end"));
            }
            if was.state != SystemState::Active && Some(end) != was.pilot_ends_at {
                return Err(Refusal::Conflict(format!(
                    "system {id} is {}; `halflife systems reinstate` sets its new end date",
                    was.state
                )));
            }
            lifecycle::check_pilot_end(end, self.now, system.tier_started_at, self.policy)
                .map_err(|m| Refusal::invalid("pilot_ends_at", m))?;
            system.pilot_ends_at = Some(end);
        }
        if let Some(c) = &patch.data_classification {
            system.data_classification = classification(Some(c))?;
        }
        if system != was {
            plan.state.systems.insert(id.clone(), system.clone());
            plan.steps.push(Step::SystemChanged { system, was });
        }
        Ok(())
    }

    fn promote(
        &self,
        plan: &mut Plan,
        id: &SystemId,
        pilot_ends_at: Option<OffsetDateTime>,
        approver: &lifecycle::Approver,
    ) -> Result<(), Refusal> {
        plan.state.system(id)?;
        let view = plan.state.view(id).ok_or_else(|| Refusal::NotFound(format!("system {id} has no owners")))?;
        let (promoted, gate) = lifecycle::promote(&view, approver, pilot_ends_at, self.now, self.policy)?;
        plan.state.systems.insert(id.clone(), promoted.clone());
        plan.steps.push(Step::SystemPromoted { system: promoted, was: view.system, gate: gate.clone() });
        plan.gate = gate;
        Ok(())
    }

    fn stop(&self, plan: &mut Plan, id: &SystemId, reason: &str, by: &str, retire: bool) -> Result<(), Refusal> {
        let reason = non_empty("reason", reason)?;
        let was = plan.state.system(id)?.clone();
        let recorded = format!("{reason} (by {by})");
        let stopped = if retire { lifecycle::retire(&was, &recorded)? } else { lifecycle::suspend(&was, &recorded)? };
        plan.state.systems.insert(id.clone(), stopped.clone());
        plan.steps.push(Step::SystemStopped { system: stopped, was, reason, lapse: false });
        Ok(())
    }

    fn reinstate(
        &self,
        plan: &mut Plan,
        id: &SystemId,
        pilot_ends_at: Option<OffsetDateTime>,
        reason: Option<&str>,
    ) -> Result<(), Refusal> {
        plan.state.system(id)?;
        let reason = reason.map(|r| non_empty("reason", r)).transpose()?;
        let view = plan.state.view(id).ok_or_else(|| Refusal::NotFound(format!("system {id} has no owners")))?;
        let reinstated = lifecycle::reinstate(&view, pilot_ends_at, reason.as_deref(), self.now, self.policy)?;
        plan.state.systems.insert(id.clone(), reinstated.system.clone());
        plan.steps.push(Step::SystemReinstated {
            system: reinstated.system,
            was: view.system,
            reason,
            new_period: reinstated.new_period,
        });
        Ok(())
    }

    fn create_grant(&self, plan: &mut Plan, grant: &Grant) -> Result<(), Refusal> {
        plan.state.system(&grant.system)?;
        if plan.state.grants.contains_key(&grant.id) {
            return Err(Refusal::Conflict(format!("grant {} already exists", grant.id)));
        }
        plan.state.grants.insert(grant.id.clone(), grant.clone());
        plan.steps.push(Step::GrantCreated(grant.clone()));
        Ok(())
    }

    fn delete_grant(&self, plan: &mut Plan, system: &SystemId, id: &GrantId) -> Result<(), Refusal> {
        plan.state.system(system)?;
        let grant = match plan.state.grants.get(id) {
            Some(g) if g.system == *system => g.clone(),
            _ => return Err(Refusal::NotFound(format!("system {system} has no grant {id}"))),
        };
        plan.state.grants.remove(id);
        plan.steps.push(Step::GrantDeleted(grant));
        Ok(())
    }

    /// A catalog file: every entry created or updated under the same rules
    /// as the API, every problem reported (not only the first).
    fn apply(&self, plan: &mut Plan, catalog: &Catalog) -> Result<(), Refusal> {
        let mut problems = Vec::new();
        for o in &catalog.owners {
            if let Err(e) = self.apply_owner(plan, o) {
                problems.push(format!("owner {}: {e}", o.id));
            }
        }
        for s in &catalog.systems {
            if let Err(e) = self.apply_system(plan, s) {
                problems.push(format!("system {}: {e}", s.id));
            }
        }
        for g in &catalog.grants {
            if let Err(e) = self.apply_grant(plan, g) {
                problems.push(format!("grant {}: {e}", g.id));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(Refusal::Conflict(problems.join("; "))) }
    }

    fn apply_owner(&self, plan: &mut Plan, o: &OwnerSpec) -> Result<(), Refusal> {
        let label = format!("owner/{}", o.id);
        check_email("email", &o.email)?;
        let display_name = check_display_name("display_name", &o.display_name)?;
        let Some(was) = plan.state.owners.get(&o.id).cloned() else {
            let owner = Owner {
                id: o.id.clone(),
                display_name,
                email: o.email.clone(),
                status: o.status,
                attested_until: o.attested_until.resolve(None, self.now),
            };
            plan.state.owners.insert(o.id.clone(), owner.clone());
            plan.steps.push(Step::OwnerCreated(owner));
            plan.report.created.push(label);
            return Ok(());
        };
        let owner = Owner {
            id: o.id.clone(),
            display_name,
            email: o.email.clone(),
            status: o.status,
            attested_until: o.attested_until.resolve(Some(was.attested_until), self.now),
        };
        if owner == was {
            plan.report.unchanged.push(label);
            return Ok(());
        }
        // Apply describes; it does not vouch. A departure is final, and only
        // `owners recertify` extends an attestation.
        if was.status == OwnerStatus::Departed && owner.status != OwnerStatus::Departed {
            return Err(Refusal::Conflict(
                "departed owners cannot return through apply; register a new owner".to_owned(),
            ));
        }
        if owner.attested_until > was.attested_until {
            return Err(Refusal::Conflict(format!(
                "attested_until can only move later through `halflife owners recertify {}`",
                o.id
            )));
        }
        plan.state.owners.insert(o.id.clone(), owner.clone());
        plan.steps.push(if was.status != OwnerStatus::Departed && owner.status == OwnerStatus::Departed {
            Step::OwnerDeparted { owner, was, reason: Some("marked departed in a catalog file".into()) }
        } else {
            Step::OwnerChanged { owner, was }
        });
        plan.report.updated.push(label);
        Ok(())
    }

    fn apply_system(&self, plan: &mut Plan, s: &SystemSpec) -> Result<(), Refusal> {
        let label = format!("system/{}", s.id);
        let name = non_empty("name", &s.name)?;
        let purpose = non_empty("purpose", &s.purpose)?;
        let data_classification = classification(s.data_classification.as_deref())?;
        let Some(was) = plan.state.systems.get(&s.id).cloned() else {
            if s.tier == Tier::Production {
                return Err(Refusal::invalid(
                    "tier",
                    "apply cannot create a system in production; create it as a pilot and promote it \
                     (`halflife systems promote`), which checks its gate and records its approver",
                ));
            }
            let end = s
                .pilot_ends_at
                .map(|d| d.resolve(None, self.now))
                .ok_or_else(|| Refusal::invalid("pilot_ends_at", "sandbox and pilot systems must have an end date"))?;
            lifecycle::check_pilot_end(end, self.now, self.now, self.policy)
                .map_err(|m| Refusal::invalid("pilot_ends_at", m))?;
            self.assignable(&plan.state, "business_owner", &s.business_owner)?;
            self.assignable(&plan.state, "technical_owner", &s.technical_owner)?;
            let system = System {
                id: s.id.clone(),
                name,
                purpose,
                business_owner: s.business_owner.clone(),
                technical_owner: s.technical_owner.clone(),
                tier: s.tier,
                state: SystemState::Active,
                pilot_ends_at: Some(end),
                data_classification,
                suspended_reason: None,
                tier_started_at: self.now,
            };
            plan.state.systems.insert(system.id.clone(), system.clone());
            plan.steps.push(Step::SystemCreated(system));
            plan.report.created.push(label);
            return Ok(());
        };
        // Tiers move up through promotion gates, never through a catalog
        // file; a file that still names the tier a system started at (before
        // its promotion) describes it all the same, and its end date no
        // longer applies.
        if s.tier > was.tier {
            return Err(Refusal::Conflict(format!(
                "tier {} cannot change to {} through apply; use `halflife systems promote`, which checks the gate \
                 and records the approver",
                was.tier, s.tier
            )));
        }
        let pilot_ends_at = match (s.tier == was.tier, was.tier, s.pilot_ends_at) {
            (true, Tier::Production, Some(_)) => {
                return Err(Refusal::invalid("pilot_ends_at", "a production system has no pilot end"));
            }
            (false, _, _) | (_, _, None) => was.pilot_ends_at,
            (true, _, Some(spec)) => Some(spec.resolve(was.pilot_ends_at, self.now)),
        };
        if pilot_ends_at != was.pilot_ends_at
            && let Some(end) = pilot_ends_at
        {
            if was.state != SystemState::Active || was.pilot_ends_at.is_some_and(|old| old <= self.now) {
                return Err(Refusal::Conflict(
                    "its pilot ended or it is not active; `halflife systems reinstate` sets a new end date".into(),
                ));
            }
            if end > self.now {
                lifecycle::check_pilot_end(end, self.now, was.tier_started_at, self.policy)
                    .map_err(|m| Refusal::invalid("pilot_ends_at", m))?;
            }
        }
        let system = System {
            name,
            purpose,
            business_owner: s.business_owner.clone(),
            technical_owner: s.technical_owner.clone(),
            pilot_ends_at,
            data_classification,
            ..was.clone()
        };
        if system.business_owner != was.business_owner {
            self.assignable(&plan.state, "business_owner", &system.business_owner)?;
        }
        if system.technical_owner != was.technical_owner {
            self.assignable(&plan.state, "technical_owner", &system.technical_owner)?;
        }
        if system == was {
            plan.report.unchanged.push(label);
            return Ok(());
        }
        plan.state.systems.insert(system.id.clone(), system.clone());
        plan.steps.push(Step::SystemChanged { system, was });
        plan.report.updated.push(label);
        Ok(())
    }

    fn apply_grant(&self, plan: &mut Plan, g: &Grant) -> Result<(), Refusal> {
        let label = format!("grant/{}", g.id);
        if !plan.state.systems.contains_key(&g.system) {
            return Err(Refusal::NotFound(format!("system {} does not exist", g.system)));
        }
        let Some(was) = plan.state.grants.get(&g.id).cloned() else {
            plan.state.grants.insert(g.id.clone(), g.clone());
            plan.steps.push(Step::GrantCreated(g.clone()));
            plan.report.created.push(label);
            return Ok(());
        };
        if was.system != g.system {
            return Err(Refusal::Conflict(format!(
                "belongs to system {}; a grant cannot move to another system (create a new grant id)",
                was.system
            )));
        }
        if was == *g {
            plan.report.unchanged.push(label);
            return Ok(());
        }
        plan.state.grants.insert(g.id.clone(), g.clone());
        plan.steps.push(Step::GrantChanged { grant: g.clone(), narrowed: narrows(&was, g), was });
        plan.report.updated.push(label);
        Ok(())
    }
}

/// A data classification: blank means none; otherwise printable text.
fn classification(value: Option<&str>) -> Result<Option<String>, Refusal> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(c) => non_empty("data_classification", c).map(Some),
    }
}
