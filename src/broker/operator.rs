//! Operator use cases: systems, owners, grants, promotion, suspension,
//! reinstatement and revocation. Each records an event naming the operator.
//! Changes to the catalog go through [`super::catalog`], so the API follows
//! the same rules as `apply`, the bootstrap apply and the reaper.

use time::OffsetDateTime;

use super::admin::AdminCaller;
use super::catalog::{self, Actor, Applied, ChangeError};
use super::{Broker, Internal, Unavailable};
use crate::domain::catalog::{Change, NewSystem, Refusal, SystemPatch};
use crate::domain::lifecycle::{GateCheck, SystemView};
use crate::domain::model::{Grant, Owner, System};
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
    /// The change would leave a production system without what production
    /// requires; every failed check is listed.
    #[error("production requires: {}", .0.join("; "))]
    Invariant(Vec<String>),
    /// A catalog is invalid; every problem names its entry and field.
    #[error("the catalog is invalid: {}", .0.join("; "))]
    Problems(Vec<String>),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// Key generation or another part of the broker itself failed.
    #[error(transparent)]
    Internal(#[from] Internal),
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

impl From<Refusal> for OpError {
    fn from(e: Refusal) -> Self {
        match e {
            Refusal::NotFound(m) => Self::NotFound(m),
            Refusal::Invalid { field, message } => Self::Invalid { field, message },
            Refusal::Conflict(m) => Self::Conflict(m),
            Refusal::Gate(failed) => Self::Gate(failed),
            Refusal::Invariant(failed) => Self::Invariant(failed),
        }
    }
}

impl From<ChangeError> for OpError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Refused(r) => r.into(),
            ChangeError::Store(e) => Self::Unavailable(Unavailable(e)),
        }
    }
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

fn require_reason(reason: &str) -> Result<String, OpError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(OpError::invalid("reason", "a reason of 1-500 characters is required"));
    }
    Ok(reason.to_owned())
}

/// The system `id` as the plan left it.
fn system_in(applied: &Applied, id: &SystemId) -> Result<System, OpError> {
    applied.plan.state.systems.get(id).cloned().ok_or_else(|| OpError::NotFound(format!("system {id} does not exist")))
}

fn owner_in(applied: &Applied, id: &OwnerId) -> Result<Owner, OpError> {
    applied.plan.state.owners.get(id).cloned().ok_or_else(|| OpError::NotFound(format!("owner {id} does not exist")))
}

impl Broker {
    /// Plans and writes a catalog change on behalf of `actor` (see
    /// [`super::catalog`]).
    pub async fn change_catalog(
        &self,
        change: &Change,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<Applied, OpError> {
        let name = actor.actor();
        let actor = Actor { name: &name, meta };
        let now = self.clock.now();
        Ok(catalog::change(self.catalog.as_ref(), change, &self.lifecycle_policy, &actor, now, true).await?)
    }

    /// Applies a catalog (`POST /v1/catalog`, `halflife apply`): validated
    /// field by field, then planned and written like every other change,
    /// recorded under the caller's name. With `dry_run`, nothing is kept.
    pub async fn apply_catalog(
        &self,
        file: super::apply::ApplyFile,
        dry_run: bool,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<crate::domain::catalog::ApplyReport, OpError> {
        let now = self.clock.now();
        let limits = super::apply::Limits {
            issuers: self.issuer_names.to_vec(),
            backends: self.logins.backends(),
            ceiling: self.limits.ceiling,
            max_pilot: self.lifecycle_policy.max_pilot,
            recertify_every: self.lifecycle_policy.recertify_every,
        };
        let catalog = super::apply::validate(file, &limits, now).map_err(OpError::Problems)?;
        let name = actor.actor();
        let actor = Actor { name: &name, meta };
        let change = Change::Apply(catalog);
        let applied =
            catalog::change(self.catalog.as_ref(), &change, &self.lifecycle_policy, &actor, now, !dry_run).await?;
        Ok(applied.plan.report)
    }

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
        let id = input.id.clone();
        let applied = self.change_catalog(&Change::CreateSystem(input), actor, meta).await?;
        system_in(&applied, &id)
    }

    pub async fn update_system(
        &self,
        id: &SystemId,
        patch: SystemPatch,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<System, OpError> {
        let applied = self.change_catalog(&Change::UpdateSystem { id: id.clone(), patch }, actor, meta).await?;
        system_in(&applied, id)
    }

    pub async fn promote_system(
        &self,
        id: &SystemId,
        pilot_ends_at: Option<OffsetDateTime>,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<(System, Vec<GateCheck>), OpError> {
        let change = Change::Promote { id: id.clone(), pilot_ends_at, approver: actor.approver() };
        let applied = self.change_catalog(&change, actor, meta).await?;
        Ok((system_in(&applied, id)?, applied.plan.gate.clone()))
    }

    pub async fn suspend_system(
        &self,
        id: &SystemId,
        reason: &str,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<(System, RevocationOutcome), OpError> {
        let stopped = self.stop_system(id, reason, actor, meta, false).await?;
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
        let stopped = self.stop_system(id, reason, actor, meta, true).await?;
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
        retire: bool,
    ) -> Result<(System, RevocationOutcome), OpError> {
        let reason = require_reason(reason)?;
        let change = Change::Stop { id: id.clone(), reason, by: actor.name.clone(), retire };
        let applied = self.change_catalog(&change, actor, meta).await?;
        let revoked = applied.revoked_by_stop_of(id.as_str());
        let why = format!("system {id} was {}", if retire { "retired" } else { "suspended" });
        self.end_access_of_system(id.as_str(), &why, actor, meta).await?;
        Ok((system_in(&applied, id)?, RevocationOutcome { revoked }))
    }

    pub async fn reinstate_system(
        &self,
        id: &SystemId,
        pilot_ends_at: Option<OffsetDateTime>,
        reason: Option<String>,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<System, OpError> {
        let change = Change::Reinstate { id: id.clone(), pilot_ends_at, reason };
        let applied = self.change_catalog(&change, actor, meta).await?;
        system_in(&applied, id)
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
        self.end_access_of_system(id.as_str(), &format!("everything system {id} held was revoked"), actor, meta)
            .await?;
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
        let applied =
            self.change_catalog(&Change::CreateOwner { id: id.clone(), display_name, email }, actor, meta).await?;
        owner_in(&applied, &id)
    }

    /// The owner re-attests ownership for another period. A lapse that
    /// already happened is settled first: recertifying revives no
    /// credential; lapsed systems need reinstatement.
    pub async fn recertify_owner(
        &self,
        id: &OwnerId,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<Owner, OpError> {
        let applied = self.change_catalog(&Change::RecertifyOwner(id.clone()), actor, meta).await?;
        owner_in(&applied, id)
    }

    /// Marks the owner departed: their systems are suspended in the same
    /// transaction.
    pub async fn depart_owner(
        &self,
        id: &OwnerId,
        reason: Option<&str>,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<Owner, OpError> {
        let change = Change::DepartOwner { id: id.clone(), reason: reason.map(str::to_owned) };
        let applied = self.change_catalog(&change, actor, meta).await?;
        owner_in(&applied, id)
    }

    pub async fn grants_of(&self, id: &SystemId) -> Result<Vec<Grant>, OpError> {
        self.system_view(id).await?;
        Ok(self.lifecycle.grants(id).await?)
    }

    pub async fn create_grant(&self, grant: Grant, actor: &AdminCaller, meta: &RequestMeta) -> Result<Grant, OpError> {
        self.change_catalog(&Change::CreateGrant(grant.clone()), actor, meta).await?;
        Ok(grant)
    }

    /// Removes a grant and revokes what was issued under it; returns how
    /// many credentials that made inactive.
    pub async fn delete_grant(
        &self,
        system: &SystemId,
        grant: &GrantId,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<u64, OpError> {
        let change = Change::DeleteGrant { system: system.clone(), grant: grant.clone() };
        let applied = self.change_catalog(&change, actor, meta).await?;
        Ok(applied
            .plan
            .steps
            .iter()
            .zip(&applied.revoked)
            .filter(|(step, _)| matches!(step, crate::domain::catalog::Step::GrantDeleted(_)))
            .map(|(_, n)| n)
            .sum())
    }
}
