//! Operator use cases: systems, owners, grants, promotion, suspension,
//! reinstatement and revocation. Each records an event naming the operator.

use time::OffsetDateTime;

use super::admin::AdminCaller;
use super::{Broker, Unavailable};
use crate::domain::lifecycle::{self, GateCheck, LifecycleError, SystemView, check_pilot_end};
use crate::domain::model::{Grant, Owner, OwnerStatus, System, SystemState, Tier};
use crate::domain::values::{GrantId, OwnerId, SystemId};
use crate::store::{AuditEvent, CredentialSummary, Outcome, RequestMeta, RevocationOutcome, RevokeTarget, StoreError};

/// Why an operator request was refused.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    NotFound(String),
    /// A request value is invalid; `field` names it.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Conflict(String),
    /// The promotion gate refused; every failed check is listed.
    #[error("promotion refused: {}", .0.join("; "))]
    Gate(Vec<String>),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl OpError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.to_owned(), message: message.into() }
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::NotFound(m),
            StoreError::Conflict(m) => Self::Conflict(m),
            other => Self::Unavailable(Unavailable(other)),
        }
    }
}

impl From<LifecycleError> for OpError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Invalid(m) => match m.split_once(": ") {
                Some((field, rest)) if field == "pilot_ends_at" => Self::invalid(field, rest),
                _ => Self::Conflict(m),
            },
            LifecycleError::Conflict(m) => Self::Conflict(m),
            LifecycleError::Gate(failed) => Self::Gate(failed),
        }
    }
}

/// Input for a new system.
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

/// What a revocation did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Revocation {
    /// Credentials made inactive by this call.
    pub revoked: u64,
    /// Systems whose credentials were revoked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub systems: Vec<String>,
}

fn event(kind: &str, actor: &AdminCaller, now: OffsetDateTime, meta: &RequestMeta) -> AuditEvent {
    let mut e = AuditEvent::new(kind, Outcome::Success, now, meta);
    e.actor = Some(actor.actor());
    e
}

fn system_event(kind: &str, actor: &AdminCaller, view: &System, now: OffsetDateTime, meta: &RequestMeta) -> AuditEvent {
    let mut e = event(kind, actor, now, meta);
    e.system_id = Some(view.id.to_string());
    e.owners = Some(view.owners_label());
    e.detail = Some(serde_json::json!({
        "system": view,
        "business_owner": view.business_owner,
        "technical_owner": view.technical_owner,
    }));
    e
}

fn require_reason(reason: &str) -> Result<String, OpError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(OpError::invalid("reason", "a reason of 1-500 characters is required"));
    }
    Ok(reason.to_owned())
}

impl Broker {
    pub async fn systems(&self) -> Result<Vec<SystemView>, OpError> {
        Ok(self.lifecycle.list_systems().await?)
    }

    pub async fn system_view(&self, id: &SystemId) -> Result<SystemView, OpError> {
        self.lifecycle.system(id).await?.ok_or_else(|| OpError::NotFound(format!("system {id} does not exist")))
    }

    pub async fn create_system(
        &self,
        input: NewSystem,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<System, OpError> {
        let now = self.clock.now();
        match input.tier {
            Tier::Production => {
                return Err(OpError::invalid(
                    "tier",
                    "a system starts as sandbox or pilot and reaches production through promotion",
                ));
            }
            Tier::Sandbox | Tier::Pilot => {
                let end = input.pilot_ends_at.ok_or_else(|| {
                    OpError::invalid("pilot_ends_at", "sandbox and pilot systems need an end date (RFC 3339)")
                })?;
                check_pilot_end(end, now, &self.lifecycle_policy).map_err(|m| OpError::invalid("pilot_ends_at", m))?;
            }
        }
        let system = System {
            id: input.id,
            name: non_empty("name", input.name)?,
            purpose: non_empty("purpose", input.purpose)?,
            business_owner: input.business_owner,
            technical_owner: input.technical_owner,
            tier: input.tier,
            state: SystemState::Active,
            pilot_ends_at: input.pilot_ends_at,
            data_classification: input.data_classification.filter(|d| !d.trim().is_empty()),
            suspended_reason: None,
        };
        self.lifecycle.create_system(&system, system_event("system.created", actor, &system, now, meta)).await?;
        Ok(system)
    }

    pub async fn update_system(
        &self,
        id: &SystemId,
        patch: SystemPatch,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<System, OpError> {
        let now = self.clock.now();
        self.suspend_lapsed(now).await?;
        let view = self.system_view(id).await?;
        let version = view.version;
        let mut system = view.system;
        if let Some(name) = patch.name {
            system.name = non_empty("name", name)?;
        }
        if let Some(purpose) = patch.purpose {
            system.purpose = non_empty("purpose", purpose)?;
        }
        if let Some(o) = patch.business_owner {
            system.business_owner = o;
        }
        if let Some(o) = patch.technical_owner {
            system.technical_owner = o;
        }
        if let Some(end) = patch.pilot_ends_at {
            if system.tier == Tier::Production {
                return Err(OpError::invalid("pilot_ends_at", "a production system has no pilot end"));
            }
            check_pilot_end(end, now, &self.lifecycle_policy).map_err(|m| OpError::invalid("pilot_ends_at", m))?;
            system.pilot_ends_at = Some(end);
        }
        if let Some(c) = patch.data_classification {
            system.data_classification = Some(c).filter(|d| !d.trim().is_empty());
        }
        let event = system_event("system.changed", actor, &system, now, meta);
        self.lifecycle.save_system(&system, version, None, event).await?;
        Ok(system)
    }

    pub async fn promote_system(
        &self,
        id: &SystemId,
        pilot_ends_at: Option<OffsetDateTime>,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<(System, Vec<GateCheck>), OpError> {
        let now = self.clock.now();
        self.suspend_lapsed(now).await?;
        let view = self.system_view(id).await?;
        let (promoted, checks) =
            match lifecycle::promote(&view, &actor.name, pilot_ends_at, now, &self.lifecycle_policy) {
                Ok(done) => done,
                Err(e) => {
                    // A refused gate is a decision too: record it.
                    let mut refused = system_event("system.promotion_refused", actor, &view.system, now, meta);
                    refused.outcome = Outcome::Denied;
                    refused.reason = Some(e.to_string());
                    self.log.record_event(refused).await.map_err(Unavailable)?;
                    return Err(e.into());
                }
            };
        let mut e = system_event("system.promoted", actor, &promoted, now, meta);
        e.reason = Some(format!("{} → {} approved by {}", view.system.tier, promoted.tier, actor.actor()));
        if let Some(serde_json::Value::Object(map)) = &mut e.detail {
            map.insert("gate".into(), serde_json::json!(checks));
            map.insert("approver".into(), serde_json::json!(actor.actor()));
        }
        self.lifecycle.save_system(&promoted, view.version, None, e).await?;
        Ok((promoted, checks))
    }

    pub async fn suspend_system(
        &self,
        id: &SystemId,
        reason: &str,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<(System, RevocationOutcome), OpError> {
        let stopped = self.stop_system(id, reason, actor, meta, "system.suspended", lifecycle::suspend).await?;
        self.stats.revoked(super::stats::RevocationKind::Suspension);
        Ok(stopped)
    }

    pub async fn retire_system(
        &self,
        id: &SystemId,
        reason: &str,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<(System, RevocationOutcome), OpError> {
        let stopped = self.stop_system(id, reason, actor, meta, "system.retired", lifecycle::retire).await?;
        self.stats.revoked(super::stats::RevocationKind::Retirement);
        Ok(stopped)
    }

    /// Suspends or retires a system and revokes everything it holds.
    async fn stop_system(
        &self,
        id: &SystemId,
        reason: &str,
        actor: &AdminCaller,
        meta: &RequestMeta,
        kind: &str,
        transition: fn(&System, &str) -> Result<System, LifecycleError>,
    ) -> Result<(System, RevocationOutcome), OpError> {
        let reason = require_reason(reason)?;
        let now = self.clock.now();
        let view = self.system_view(id).await?;
        let stopped = transition(&view.system, &format!("{reason} (by {})", actor.name))?;
        let mut e = system_event(kind, actor, &stopped, now, meta);
        e.reason = Some(reason.clone());
        let outcome = self.lifecycle.save_system(&stopped, view.version, Some(&reason), e).await?;
        Ok((stopped, outcome))
    }

    pub async fn reinstate_system(
        &self,
        id: &SystemId,
        pilot_ends_at: Option<OffsetDateTime>,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<System, OpError> {
        let now = self.clock.now();
        let view = self.system_view(id).await?;
        let reinstated = lifecycle::reinstate(&view, pilot_ends_at, now, &self.lifecycle_policy)?;
        let mut e = system_event("system.reinstated", actor, &reinstated, now, meta);
        e.reason = view.system.suspended_reason.clone().map(|r| format!("was: {r}"));
        self.lifecycle.save_system(&reinstated, view.version, None, e).await?;
        Ok(reinstated)
    }

    /// Revokes every credential a system holds, without suspending it.
    pub async fn revoke_system(
        &self,
        id: &SystemId,
        reason: &str,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<Revocation, OpError> {
        let reason = require_reason(reason)?;
        let view = self.system_view(id).await?;
        let now = self.clock.now();
        let mut e = event("credential.revoked", actor, now, meta);
        e.system_id = Some(id.to_string());
        e.owners = Some(view.system.owners_label());
        e.reason = Some(reason.clone());
        e.detail = Some(serde_json::json!({"by": "system"}));
        let target = RevokeTarget::System { system_id: id.to_string() };
        let outcome = self.lifecycle.revoke(&target, &reason, e).await?;
        self.stats.revoked(super::stats::RevocationKind::System);
        Ok(Revocation { revoked: outcome.revoked, systems: vec![id.to_string()] })
    }

    /// Revokes every credential of one workload identity.
    pub async fn revoke_workload(
        &self,
        issuer: &str,
        subject: &str,
        reason: &str,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<Revocation, OpError> {
        let reason = require_reason(reason)?;
        if issuer.is_empty() || subject.is_empty() {
            return Err(OpError::invalid("subject", "name the workload by issuer and subject"));
        }
        let now = self.clock.now();
        let mut e = event("credential.revoked", actor, now, meta);
        // Events name attestation issuers by their `iss`, as issuances do.
        e.attestation_issuer = Some(
            self.verifier.issuers().find(|i| i.name == issuer).map_or_else(|| issuer.to_owned(), |i| i.iss.clone()),
        );
        e.subject = Some(subject.to_owned());
        e.reason = Some(reason.clone());
        e.detail = Some(serde_json::json!({"by": "workload"}));
        let target = RevokeTarget::Workload { issuer: issuer.to_owned(), subject: subject.to_owned() };
        let outcome = self.lifecycle.revoke(&target, &reason, e).await?;
        self.stats.revoked(super::stats::RevocationKind::Workload);
        Ok(Revocation { revoked: outcome.revoked, systems: Vec::new() })
    }

    /// Revokes one credential by `jti`.
    pub async fn revoke_jti(
        &self,
        jti: &str,
        reason: &str,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<Revocation, OpError> {
        let reason = require_reason(reason)?;
        let now = self.clock.now();
        let record = self.credentials.credential(jti).await?;
        let Some(record) = record else {
            return Err(OpError::NotFound(format!("no credential with jti {jti}")));
        };
        let mut e = event("credential.revoked", actor, now, meta);
        e.jti = Some(jti.to_owned());
        e.system_id = Some(record.system.id.to_string());
        e.owners = Some(record.system.owners_label());
        e.reason = Some(reason.clone());
        let active = !record.is_revoked();
        let done = self.log.revoke_credential(jti, &reason, e).await.map_err(Unavailable)?;
        self.stats.revoked(super::stats::RevocationKind::Jti);
        Ok(Revocation { revoked: u64::from(done && active), systems: vec![record.system.id.to_string()] })
    }

    /// Revokes every credential of every system the owner owns.
    pub async fn revoke_owner(
        &self,
        id: &OwnerId,
        reason: &str,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<Revocation, OpError> {
        let reason = require_reason(reason)?;
        self.owner(id).await?;
        let mut total = Revocation { revoked: 0, systems: Vec::new() };
        for view in self.systems().await? {
            let s = &view.system;
            if s.business_owner == *id || s.technical_owner == *id {
                let now = self.clock.now();
                let mut e = event("credential.revoked", actor, now, meta);
                e.system_id = Some(s.id.to_string());
                e.owners = Some(s.owners_label());
                e.reason = Some(reason.clone());
                e.detail = Some(serde_json::json!({"by": "owner", "owner": id}));
                let target = RevokeTarget::System { system_id: s.id.to_string() };
                total.revoked += self.lifecycle.revoke(&target, &reason, e).await?.revoked;
                total.systems.push(s.id.to_string());
            }
        }
        self.stats.revoked(super::stats::RevocationKind::Owner);
        Ok(total)
    }

    pub async fn credentials_of(&self, id: &SystemId) -> Result<Vec<CredentialSummary>, OpError> {
        self.system_view(id).await?;
        Ok(self.lifecycle.outstanding_credentials(id, self.clock.now()).await?)
    }

    pub async fn owners(&self) -> Result<Vec<Owner>, OpError> {
        Ok(self.lifecycle.list_owners().await?)
    }

    pub async fn owner(&self, id: &OwnerId) -> Result<Owner, OpError> {
        self.lifecycle.owner(id).await?.ok_or_else(|| OpError::NotFound(format!("owner {id} does not exist")))
    }

    pub async fn create_owner(
        &self,
        id: OwnerId,
        display_name: String,
        email: String,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<Owner, OpError> {
        let now = self.clock.now();
        if !email.contains('@') || email.chars().any(char::is_whitespace) || email.len() > 254 {
            return Err(OpError::invalid("email", "must be an email address"));
        }
        let owner = Owner {
            id,
            display_name: non_empty("display_name", display_name)?,
            email,
            status: OwnerStatus::Active,
            attested_until: now + self.lifecycle_policy.recertify_every,
        };
        let mut e = event("owner.created", actor, now, meta);
        e.owners = Some(owner.id.to_string());
        e.detail = Some(serde_json::json!(owner));
        self.lifecycle.create_owner(&owner, e).await?;
        Ok(owner)
    }

    /// The owner re-attests ownership for another period.
    pub async fn recertify_owner(
        &self,
        id: &OwnerId,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<Owner, OpError> {
        let now = self.clock.now();
        // A lapse that already happened is settled first: recertifying
        // revives no credential; lapsed systems need reinstatement.
        self.suspend_lapsed(now).await?;
        let mut owner = self.owner(id).await?;
        if owner.status == OwnerStatus::Departed {
            return Err(OpError::Conflict(format!("owner {id} has departed and cannot be recertified")));
        }
        owner.attested_until = now + self.lifecycle_policy.recertify_every;
        let mut e = event("owner.recertified", actor, now, meta);
        e.owners = Some(owner.id.to_string());
        e.detail = Some(serde_json::json!(owner));
        self.lifecycle.save_owner(&owner, e).await?;
        Ok(owner)
    }

    /// Marks the owner departed: their systems stop operating at once (the
    /// exchange and introspection check owners) and the reaper suspends them.
    pub async fn depart_owner(
        &self,
        id: &OwnerId,
        reason: Option<&str>,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<Owner, OpError> {
        let now = self.clock.now();
        let mut owner = self.owner(id).await?;
        if owner.status == OwnerStatus::Departed {
            return Err(OpError::Conflict(format!("owner {id} has already departed")));
        }
        owner.status = OwnerStatus::Departed;
        let mut e = event("owner.departed", actor, now, meta);
        e.owners = Some(owner.id.to_string());
        e.reason = reason.map(str::to_owned);
        e.detail = Some(serde_json::json!(owner));
        self.lifecycle.save_owner(&owner, e).await?;
        // Their systems stop at once, not at the next reaper tick.
        self.suspend_lapsed(now).await?;
        Ok(owner)
    }

    pub async fn grants_of(&self, id: &SystemId) -> Result<Vec<Grant>, OpError> {
        self.system_view(id).await?;
        Ok(self.lifecycle.grants(id).await?)
    }

    pub async fn create_grant(&self, grant: Grant, actor: &AdminCaller, meta: &RequestMeta) -> Result<Grant, OpError> {
        let view = self.system_view(&grant.system).await?;
        let now = self.clock.now();
        let mut e = event("grant.created", actor, now, meta);
        e.owners = Some(view.system.owners_label());
        e.system_id = Some(grant.system.to_string());
        e.grant_id = Some(grant.id.to_string());
        e.detail = Some(serde_json::json!(grant));
        self.lifecycle.create_grant(&grant, e).await?;
        Ok(grant)
    }

    pub async fn delete_grant(
        &self,
        system: &SystemId,
        grant: &GrantId,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<(), OpError> {
        let now = self.clock.now();
        let view = self.system_view(system).await?;
        let mut e = event("grant.deleted", actor, now, meta);
        e.owners = Some(view.system.owners_label());
        e.system_id = Some(system.to_string());
        e.grant_id = Some(grant.to_string());
        if self.lifecycle.delete_grant(system, grant, e).await? {
            Ok(())
        } else {
            Err(OpError::NotFound(format!("system {system} has no grant {grant}")))
        }
    }
}

fn non_empty(field: &str, value: String) -> Result<String, OpError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.len() > 500 {
        return Err(OpError::invalid(field, "must be 1-500 characters"));
    }
    Ok(trimmed.to_owned())
}
