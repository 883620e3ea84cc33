//! Every change to owners, systems and grants, from every path (the
//! operator API, `apply` through the server or on the database, the
//! bootstrap apply, the reaper): read the catalog under the write lock,
//! plan the change by the rules of [`crate::domain::catalog`], and write
//! the plan with its audit events in the same transaction. A refused
//! change still suspends whatever has lapsed, and is recorded itself
//! (`<entity>.refused`, or `system.promotion_refused` for a gate).

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::domain::catalog::{self, CatalogState, Change, Plan, Refusal, Step};
use crate::domain::identity;
use crate::domain::lifecycle::LifecyclePolicy;
use crate::domain::model::{Grant, Owner, System, SystemState};
use crate::store::{AuditEvent, CatalogStore, CatalogTx, Outcome, RequestMeta, StoreError};

/// The actor named in events the rules themselves cause (lapses).
pub const LIFECYCLE_ACTOR: &str = "lifecycle";

/// Who changes the catalog, as the audit trail names them.
#[derive(Debug, Clone)]
pub struct Actor<'a> {
    /// The recorded actor, e.g. `ci (operator; automation token 01a2…)`.
    pub name: &'a str,
    pub meta: &'a RequestMeta,
}

/// A change that was written.
#[derive(Debug, Clone)]
pub struct Applied {
    pub plan: Plan,
    /// Credentials each step made inactive, by step.
    pub revoked: Vec<u64>,
}

impl Applied {
    /// Credentials made inactive by the steps that stopped `system` on the
    /// caller's request (not by lapses of other systems).
    pub fn revoked_by_stop_of(&self, system: &str) -> u64 {
        self.plan
            .steps
            .iter()
            .zip(&self.revoked)
            .filter(|(step, _)| {
                matches!(step, Step::SystemStopped { system: s, lapse: false, .. } if s.id.as_str() == system)
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Systems suspended because something had lapsed, with why, and the
    /// credentials that made inactive.
    pub fn lapses(&self) -> Vec<(String, String, u64)> {
        self.plan
            .steps
            .iter()
            .zip(&self.revoked)
            .filter_map(|(step, n)| match step {
                Step::SystemStopped { system, reason, lapse: true, .. } => {
                    Some((system.id.to_string(), reason.clone(), *n))
                }
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Refused(Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Plans and writes `change` at `now`. With `commit: false` (a dry run)
/// everything is planned and written, then rolled back.
pub async fn change(
    store: &dyn CatalogStore,
    change: &Change,
    policy: &LifecyclePolicy,
    actor: &Actor<'_>,
    now: OffsetDateTime,
    commit: bool,
) -> Result<Applied, ChangeError> {
    let mut tx = store.begin_catalog(now).await?;
    let state = tx.state().await?;
    match catalog::plan(&state, change, now, policy) {
        Ok(plan) => {
            let revoked = write(tx.as_mut(), &plan.steps, &plan.state, actor, now).await?;
            if commit {
                tx.commit().await?;
            }
            Ok(Applied { plan, revoked })
        }
        Err(refusal) => {
            // What has lapsed is suspended whatever becomes of the change.
            let mut settled = state.clone();
            let mut steps = Vec::new();
            catalog::settle(&mut settled, &mut steps, now);
            write(tx.as_mut(), &steps, &settled, actor, now).await?;
            if commit {
                tx.event(&refusal_event(change, &refusal, &state, actor, now)).await?;
                tx.commit().await?;
            }
            Err(ChangeError::Refused(refusal))
        }
    }
}

fn base(kind: &str, actor: &Actor<'_>, now: OffsetDateTime) -> AuditEvent {
    let mut e = AuditEvent::new(kind, Outcome::Success, now, actor.meta);
    e.actor = Some(identity::visible(actor.name));
    e
}

/// The owners an event about `system` names: its owners now (business,
/// then technical), then any owner the change took away, so that an
/// auditor asking for either finds it.
fn owners_label(system: &System, was: Option<&System>) -> String {
    let mut label = system.owners_label();
    for old in was.iter().flat_map(|w| [&w.business_owner, &w.technical_owner]) {
        if *old != system.business_owner
            && *old != system.technical_owner
            && !label.split(' ').any(|o| o == old.as_str())
        {
            label.push(' ');
            label.push_str(old.as_str());
        }
    }
    label
}

fn system_detail(system: &System, was: Option<&System>) -> Value {
    let mut detail = json!({
        "system": system,
        "business_owner": system.business_owner,
        "technical_owner": system.technical_owner,
    });
    if let (Some(was), Value::Object(map)) = (was, &mut detail) {
        map.insert("was".into(), json!(was));
        map.insert("owners_before".into(), json!(was.owners_label()));
    }
    detail
}

fn system_event(
    kind: &str,
    system: &System,
    was: Option<&System>,
    actor: &Actor<'_>,
    now: OffsetDateTime,
) -> AuditEvent {
    let mut e = base(kind, actor, now);
    e.system_id = Some(system.id.to_string());
    e.owners = Some(owners_label(system, was));
    e.detail = Some(system_detail(system, was));
    e
}

fn owner_event(kind: &str, owner: &Owner, was: Option<&Owner>, actor: &Actor<'_>, now: OffsetDateTime) -> AuditEvent {
    let mut e = base(kind, actor, now);
    e.owners = Some(owner.id.to_string());
    let mut detail = json!(owner);
    if let (Some(was), Value::Object(map)) = (was, &mut detail) {
        map.insert("was".into(), json!(was));
    }
    e.detail = Some(detail);
    e
}

fn grant_event(kind: &str, grant: &Grant, was: Option<&Grant>, actor: &Actor<'_>, now: OffsetDateTime) -> AuditEvent {
    let mut e = base(kind, actor, now);
    e.system_id = Some(grant.system.to_string());
    e.grant_id = Some(grant.id.to_string());
    let mut detail = json!(grant);
    if let (Some(was), Value::Object(map)) = (was, &mut detail) {
        map.insert("was".into(), json!(was));
    }
    e.detail = Some(detail);
    e
}

/// Adds `key: value` to an event's detail object.
fn with(mut event: AuditEvent, key: &str, value: Value) -> AuditEvent {
    if let Some(Value::Object(map)) = &mut event.detail {
        map.insert(key.to_owned(), value);
    } else {
        event.detail = Some(json!({ key: value }));
    }
    event
}

/// The `credential.revoked` event of a revocation that `cause` (an event
/// kind) brought about.
fn revoked_event(cause: &AuditEvent, by: &str, revoked: u64) -> AuditEvent {
    let mut e = cause.clone();
    e.kind = "credential.revoked".into();
    with(with(e, "by", json!(by)), "revoked", json!(revoked))
}

/// Writes `steps` and their events; returns the credentials each step made
/// inactive.
async fn write(
    tx: &mut dyn CatalogTx,
    steps: &[Step],
    after: &CatalogState,
    actor: &Actor<'_>,
    now: OffsetDateTime,
) -> Result<Vec<u64>, StoreError> {
    // Grant events name their system's owners, as every event about a
    // system does.
    let grant_event = |kind: &str, grant: &Grant, was: Option<&Grant>| {
        let mut e = grant_event(kind, grant, was, actor, now);
        e.owners = after.systems.get(&grant.system).map(System::owners_label);
        e
    };
    let lifecycle = Actor { name: LIFECYCLE_ACTOR, meta: actor.meta };
    let mut revoked = Vec::with_capacity(steps.len());
    for step in steps {
        let mut n = 0;
        match step {
            Step::OwnerCreated(owner) => {
                tx.put_owner(owner, true).await?;
                tx.event(&owner_event("owner.created", owner, None, actor, now)).await?;
            }
            Step::OwnerChanged { owner, was } => {
                tx.put_owner(owner, false).await?;
                tx.event(&owner_event("owner.changed", owner, Some(was), actor, now)).await?;
            }
            Step::OwnerRecertified { owner, was } => {
                tx.put_owner(owner, false).await?;
                tx.event(&owner_event("owner.recertified", owner, Some(was), actor, now)).await?;
            }
            Step::OwnerDeparted { owner, was, reason } => {
                tx.put_owner(owner, false).await?;
                let mut e = owner_event("owner.departed", owner, Some(was), actor, now);
                e.reason = reason.clone();
                tx.event(&e).await?;
            }
            Step::SystemCreated(system) => {
                tx.put_system(system, true).await?;
                tx.event(&system_event("system.created", system, None, actor, now)).await?;
            }
            Step::SystemChanged { system, was } => {
                tx.put_system(system, false).await?;
                tx.event(&system_event("system.changed", system, Some(was), actor, now)).await?;
            }
            Step::SystemPromoted { system, was, gate } => {
                tx.put_system(system, false).await?;
                let mut e = system_event("system.promoted", system, Some(was), actor, now);
                e.reason =
                    Some(format!("{} → {} approved by {}", was.tier, system.tier, identity::visible(actor.name)));
                let e = with(with(e, "gate", json!(gate)), "approver", json!(identity::visible(actor.name)));
                tx.event(&e).await?;
            }
            Step::SystemStopped { system, was, reason, lapse } => {
                tx.put_system(system, false).await?;
                n = tx.revoke_system(system.id.as_str(), reason, now).await?.revoked;
                let kind = if system.state == SystemState::Retired { "system.retired" } else { "system.suspended" };
                let who = if *lapse { &lifecycle } else { actor };
                let mut e = system_event(kind, system, Some(was), who, now);
                e.reason = Some(reason.clone());
                if *lapse {
                    tracing::warn!(system.id = %system.id, reason = %reason, revoked = n, "system suspended");
                }
                tx.event(&revoked_event(&e, kind, n)).await?;
                tx.event(&with(e, "revoked", json!(n))).await?;
            }
            Step::SystemReinstated { system, was, reason, new_period } => {
                tx.put_system(system, false).await?;
                let mut e = system_event("system.reinstated", system, Some(was), actor, now);
                e.reason = reason.clone().or_else(|| was.suspended_reason.clone().map(|r| format!("was: {r}")));
                let e =
                    with(with(e, "was_suspended_for", json!(was.suspended_reason)), "new_period", json!(new_period));
                tx.event(&e).await?;
            }
            Step::GrantCreated(grant) => {
                tx.put_grant(grant, true).await?;
                tx.event(&grant_event("grant.created", grant, None)).await?;
            }
            Step::GrantChanged { grant, was, narrowed } => {
                tx.put_grant(grant, false).await?;
                let e = with(grant_event("grant.changed", grant, Some(was)), "narrowed", json!(narrowed));
                if *narrowed {
                    let reason = format!("grant {} was narrowed", grant.id);
                    n = tx.revoke_grant(was, &reason, now).await?.revoked;
                    let mut r = revoked_event(&e, "grant.changed", n);
                    r.reason = Some(reason);
                    tx.event(&r).await?;
                }
                tx.event(&e).await?;
            }
            Step::GrantDeleted(grant) => {
                tx.delete_grant(grant).await?;
                let reason = format!("grant {} was removed", grant.id);
                n = tx.revoke_grant(grant, &reason, now).await?.revoked;
                let e = grant_event("grant.deleted", grant, None);
                let mut r = revoked_event(&e, "grant.deleted", n);
                r.reason = Some(reason);
                tx.event(&r).await?;
                tx.event(&with(e, "revoked", json!(n))).await?;
            }
        }
        revoked.push(n);
    }
    Ok(revoked)
}

/// The record of a refused change.
fn refusal_event(
    change: &Change,
    refusal: &Refusal,
    state: &CatalogState,
    actor: &Actor<'_>,
    now: OffsetDateTime,
) -> AuditEvent {
    let kind = match (change, refusal) {
        (Change::Promote { .. }, Refusal::Gate(_)) => "system.promotion_refused".to_owned(),
        _ => format!("{}.refused", change.entity()),
    };
    let mut e = base(&kind, actor, now);
    e.outcome = Outcome::Denied;
    e.reason = Some(refusal.to_string());
    if let Some(id) = change.system() {
        e.system_id = Some(id.to_string());
        e.owners = state.systems.get(id).map(System::owners_label);
    }
    match change {
        Change::CreateGrant(g) => e.grant_id = Some(g.id.to_string()),
        Change::DeleteGrant { grant, .. } => e.grant_id = Some(grant.to_string()),
        Change::CreateOwner { id, .. } => e.owners = Some(id.to_string()),
        _ => {}
    }
    let mut detail = json!({"action": change.action()});
    if let (Refusal::Gate(failed) | Refusal::Invariant(failed), Value::Object(map)) = (refusal, &mut detail) {
        map.insert("failed_checks".into(), json!(failed));
    }
    if let (Change::RecertifyOwner(id) | Change::DepartOwner { id, .. }, Value::Object(map)) = (change, &mut detail) {
        map.insert("owner".into(), json!(id));
        e.owners = Some(id.to_string());
    }
    e.detail = Some(detail);
    e
}
