//! Approvals for sensitive grants (just-in-time access), in the pattern of
//! the device grant (RFC 8628) and OpenID CIBA: an exchange under a grant
//! that needs a person's approval opens an access request and is answered
//! `authorization_pending` with the request's id; asking again while it is
//! pending finds the same request; once a person approves it, the exchange
//! succeeds for as long as the approval lasts; `access_denied` after a
//! denial; `expired_token` when nobody decided in time. Revoking an approval
//! revokes the credentials issued under it.

use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use super::admin::AdminCaller;
use super::exchange::ExchangeError;
use super::{Broker, Unavailable};
use crate::attest::jwt::Attestation;
use crate::domain::approval::{
    self, AccessRequest, AccessState, ApprovalRule, DEFAULT_MAX_APPROVAL, Decider, DeciderPerson, Decision,
};
use crate::domain::model::{GrantContext, SystemState};
use crate::domain::policy::{Decision as Terms, Denial, DenyCode};
use crate::store::{AccessDecision, AuditEvent, JobSpec, Outcome, RequestMeta};

/// The approvals configuration.
#[derive(Debug, Clone)]
pub struct ApprovalPolicy {
    /// Data classifications whose systems' grants all need approval.
    pub required_for: Vec<String>,
    /// How long a request waits for a decision.
    pub pending_for: Duration,
    /// How often a waiting client should ask again.
    pub interval: Duration,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        Self { required_for: Vec::new(), pending_for: Duration::from_secs(900), interval: Duration::from_secs(5) }
    }
}

/// The answer to an exchange that waits for approval.
#[derive(Debug)]
pub struct Pending {
    pub access_request: String,
    pub interval: u64,
    pub expires_in: i64,
    pub description: String,
}

/// An approval an issuance goes ahead under.
pub struct Approved {
    pub id: String,
    pub until: OffsetDateTime,
}

/// What an exchange asks, for its access request.
pub struct Asked<'a> {
    pub attestation: &'a Attestation,
    pub ctx: &'a GrantContext,
    pub decision: &'a Terms,
    /// On whose behalf (issuer name and subject), when delegated.
    pub principal: Option<&'a (String, String)>,
}

/// A person's decision on an access request. `duration` and `break_glass`
/// apply to approvals; `reason` is required for denials, revocations and
/// break glass.
pub struct Ruling {
    pub decision: Decision,
    pub duration: Option<Duration>,
    pub reason: Option<String>,
    pub break_glass: bool,
}

/// Why a decision on an access request was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("{0}")]
    NotFound(String),
    /// The caller may not take this decision (403).
    #[error("{0}")]
    Forbidden(String),
    /// The request is not in a state the decision applies to (409).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl Broker {
    /// The rule an exchange under `ctx` must satisfy: the grant's own, or,
    /// when the system's data classification requires approval, the
    /// default rule.
    pub fn approval_rule(&self, ctx: &GrantContext) -> Option<ApprovalRule> {
        if let Some(rule) = &ctx.grant.approval {
            return Some(rule.clone());
        }
        let class = ctx.system.data_classification.as_deref()?;
        self.approvals.required_for.iter().any(|c| c.eq_ignore_ascii_case(class)).then(|| ApprovalRule {
            approvers: Vec::new(),
            max_duration: DEFAULT_MAX_APPROVAL,
            allow_owner_approval: false,
        })
    }

    /// Finds or opens the access request for `asked`: `Ok` when an approval
    /// allows issuance now, otherwise the answer the workload gets.
    pub(super) async fn approval_gate(
        &self,
        asked: &Asked<'_>,
        now: OffsetDateTime,
        meta: &RequestMeta,
    ) -> Result<Approved, ExchangeError> {
        let d = asked.decision;
        let audiences: Vec<String> = d.audiences.iter().map(ToString::to_string).collect();
        let scopes = d.scopes.to_vec();
        let kind = d.kind.to_string();
        let principal = asked.principal.map(|(issuer, subject)| format!("{issuer} {subject}"));
        let a = asked.attestation;
        let key = approval::request_key(
            asked.ctx.grant.id.as_str(),
            &a.issuer_name,
            &a.subject,
            principal.as_deref(),
            &audiences,
            &scopes,
            &kind,
        );
        let latest = self.access.latest_access_request(&key).await.map_err(Unavailable)?;
        if let Some(request) = &latest {
            if request.allows(now) {
                let until = request.approved_until.unwrap_or(now);
                return Ok(Approved { id: request.id.clone(), until });
            }
            if request.waiting(now) {
                return Err(ExchangeError::Pending(self.pending(request, now)));
            }
            match request.state {
                AccessState::Pending | AccessState::Expired => {
                    // Lapsed undecided: say so once; the next ask opens a
                    // new request.
                    if request.state == AccessState::Pending {
                        self.expire(request, now).await.map_err(ExchangeError::Unavailable)?;
                    }
                    self.access.close_access_request(&request.id).await.map_err(Unavailable)?;
                    let denial = Denial::with_reason(
                        DenyCode::ExpiredToken,
                        format!("access request {} lapsed without a decision; ask again to open a new one", request.id),
                        format!("access request {} expired", request.id),
                    );
                    return Err(self.refuse_pending(denial, asked, now, meta).await);
                }
                AccessState::Denied if request.expires_at > now => {
                    let why = request.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                    let denial = Denial::with_reason(
                        DenyCode::AccessDenied,
                        format!("access request {} was denied{why}", request.id),
                        format!("access request {} denied", request.id),
                    );
                    return Err(self.refuse_pending(denial, asked, now, meta).await);
                }
                AccessState::Revoked => {
                    // Say so once; the next ask opens a new request.
                    self.access.close_access_request(&request.id).await.map_err(Unavailable)?;
                    let denial = Denial::with_reason(
                        DenyCode::AccessDenied,
                        format!(
                            "the approval of access request {} was revoked; ask again to open a new one",
                            request.id
                        ),
                        format!("access request {} revoked", request.id),
                    );
                    return Err(self.refuse_pending(denial, asked, now, meta).await);
                }
                // A denial whose request has lapsed, an approval whose window
                // has passed: a new request.
                _ => {}
            }
        }
        let pending_for = time::Duration::try_from(self.approvals.pending_for).unwrap_or(time::Duration::minutes(15));
        let request = AccessRequest {
            id: super::exchange::new_jti(now),
            request_key: key,
            system_id: asked.ctx.system.id.to_string(),
            grant_id: asked.ctx.grant.id.to_string(),
            issuer: a.issuer_name.clone(),
            subject: a.subject.clone(),
            on_behalf_of: principal,
            asked: json!({"audiences": audiences, "scopes": scopes, "kind": kind}),
            state: AccessState::Pending,
            created_at: now,
            expires_at: now + pending_for,
            decided_at: None,
            decided_by: None,
            reason: None,
            approved_until: None,
            break_glass: false,
            reviewed_at: None,
            reviewed_by: None,
        };
        let mut event = self.request_event("access_request.created", &request, now, meta);
        event.actor = Some(format!("{} {}", a.issuer_name, a.subject));
        event.attestation_issuer = Some(a.iss.clone());
        event.subject = Some(a.subject.clone());
        event.attestation_id = Some(a.token_id.clone());
        let job = self.notify("access_request.created", &request);
        let request = self.access.open_access_request(request, event, job).await.map_err(Unavailable)?;
        if request.allows(now) {
            let until = request.approved_until.unwrap_or(now);
            return Ok(Approved { id: request.id, until });
        }
        Err(ExchangeError::Pending(self.pending(&request, now)))
    }

    fn pending(&self, request: &AccessRequest, now: OffsetDateTime) -> Pending {
        Pending {
            access_request: request.id.clone(),
            interval: self.approvals.interval.as_secs().max(1),
            expires_in: (request.expires_at - now).whole_seconds().max(0),
            description: format!(
                "access request {} awaits a person's approval; ask again every {} s",
                request.id,
                self.approvals.interval.as_secs().max(1)
            ),
        }
    }

    /// Records a refused exchange of a workload whose request was decided
    /// against it (`credential.denied`).
    async fn refuse_pending(
        &self,
        denial: Denial,
        asked: &Asked<'_>,
        now: OffsetDateTime,
        meta: &RequestMeta,
    ) -> ExchangeError {
        let a = asked.attestation;
        let mut event = AuditEvent::new("credential.denied", Outcome::Denied, now, meta);
        event.actor = Some(format!("{} {}", a.issuer_name, a.subject));
        event.attestation_issuer = Some(a.iss.clone());
        event.subject = Some(a.subject.clone());
        event.attestation_id = Some(a.token_id.clone());
        event.system_id = Some(asked.ctx.system.id.to_string());
        event.grant_id = Some(asked.ctx.grant.id.to_string());
        event.owners = Some(asked.ctx.system.owners_label());
        event.reason = Some(format!("{}: {}", denial.code.as_str(), denial.reason));
        match self.log.record_event(event).await {
            Ok(()) => ExchangeError::Denied(denial),
            Err(e) => ExchangeError::Unavailable(Unavailable(e)),
        }
    }

    fn request_event(
        &self,
        kind: &str,
        request: &AccessRequest,
        now: OffsetDateTime,
        meta: &RequestMeta,
    ) -> AuditEvent {
        let mut event = AuditEvent::new(kind, Outcome::Success, now, meta);
        event.system_id = Some(request.system_id.clone());
        event.grant_id = Some(request.grant_id.clone());
        event.detail = Some(json!({
            "access_request": request.id, "workload": format!("{} {}", request.issuer, request.subject),
            "on_behalf_of": request.on_behalf_of, "asked": request.asked,
        }));
        event
    }

    /// The webhook job announcing `event` about `request`, if a webhook is
    /// configured: the request and a link to it.
    fn notify(&self, event: &str, request: &AccessRequest) -> Option<JobSpec> {
        self.webhook.as_ref().map(|_| JobSpec::Webhook {
            body: json!({
                "event": event,
                "access_request": request,
                "link": format!("{}/v1/access-requests/{}", self.issuer, request.id),
            }),
        })
    }

    /// Marks a lapsed pending request expired (`access_request.expired`).
    async fn expire(&self, request: &AccessRequest, now: OffsetDateTime) -> Result<(), Unavailable> {
        let decision = AccessDecision {
            state: AccessState::Expired,
            at: now,
            by: super::catalog::LIFECYCLE_ACTOR.to_owned(),
            reason: Some("nobody decided in time".into()),
            approved_until: None,
            break_glass: false,
        };
        let mut event = self.request_event("access_request.expired", request, now, &RequestMeta::default());
        event.actor = Some(super::catalog::LIFECYCLE_ACTOR.to_owned());
        let job = self.notify("access_request.expired", request);
        self.access
            .decide_access_request(
                &request.id,
                &[AccessState::Pending],
                decision,
                vec![event],
                job.into_iter().collect(),
            )
            .await
            .map_err(Unavailable)?;
        Ok(())
    }

    /// The reaper's pass over access requests: pending ones that lapsed
    /// expire; open ones of systems that stopped operating end. Returns how
    /// many requests changed.
    pub async fn settle_access_requests(&self, now: OffsetDateTime) -> Result<usize, Unavailable> {
        let mut changed = 0;
        let pending = self.access.access_requests(Some(AccessState::Pending), 10_000).await.map_err(Unavailable)?;
        for request in pending.iter().filter(|r| r.expires_at <= now) {
            self.expire(request, now).await?;
            changed += 1;
        }
        let approved = self.access.access_requests(Some(AccessState::Approved), 10_000).await.map_err(Unavailable)?;
        let open: Vec<&AccessRequest> =
            pending.iter().filter(|r| r.expires_at > now).chain(approved.iter().filter(|r| r.allows(now))).collect();
        if open.is_empty() {
            return Ok(changed);
        }
        let systems = self.lifecycle.list_systems().await.map_err(Unavailable)?;
        for request in open {
            let state = systems.iter().find(|v| v.system.id.as_str() == request.system_id).map(|v| v.system.state);
            if state != Some(SystemState::Active) {
                let why = format!("system {} is no longer active", request.system_id);
                self.end_access(request, &why, super::catalog::LIFECYCLE_ACTOR, &RequestMeta::default(), now).await?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Ends every open request of `system` (it was suspended, retired or
    /// had everything revoked).
    pub async fn end_access_of_system(
        &self,
        system: &str,
        why: &str,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<usize, Unavailable> {
        let now = self.clock.now();
        let mut ended = 0;
        for state in [AccessState::Pending, AccessState::Approved] {
            let requests = self.access.access_requests(Some(state), 10_000).await.map_err(Unavailable)?;
            for request in requests.iter().filter(|r| r.system_id == system && (r.waiting(now) || r.allows(now))) {
                self.end_access(request, why, &actor.actor(), meta, now).await?;
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Revokes an open request (`access_request.revoked`) and the
    /// credentials issued under it.
    async fn end_access(
        &self,
        request: &AccessRequest,
        why: &str,
        actor: &str,
        meta: &RequestMeta,
        now: OffsetDateTime,
    ) -> Result<Option<AccessRequest>, Unavailable> {
        let decision = AccessDecision {
            state: AccessState::Revoked,
            at: now,
            by: actor.to_owned(),
            reason: Some(why.to_owned()),
            approved_until: request.approved_until.map(|until| until.min(now)),
            break_glass: false,
        };
        let mut event = self.request_event("access_request.revoked", request, now, meta);
        event.actor = Some(actor.to_owned());
        event.reason = Some(why.to_owned());
        let job = self.notify("access_request.revoked", request);
        let ended = self
            .access
            .decide_access_request(
                &request.id,
                &[AccessState::Pending, AccessState::Approved],
                decision,
                vec![event],
                job.into_iter().collect(),
            )
            .await
            .map_err(Unavailable)?;
        if ended.is_some() {
            for jti in self.access.approval_credentials(&request.id).await.map_err(Unavailable)? {
                let mut event = AuditEvent::new("credential.revoked", Outcome::Success, now, meta);
                event.actor = Some(actor.to_owned());
                event.jti = Some(jti.clone());
                event.system_id = Some(request.system_id.clone());
                event.reason = Some(format!("approval {} revoked: {why}", request.id));
                self.log
                    .revoke_credential(&jti, &format!("approval revoked: {why}"), event)
                    .await
                    .map_err(Unavailable)?;
            }
        }
        Ok(ended)
    }

    pub async fn access_requests(
        &self,
        state: Option<AccessState>,
        limit: i64,
    ) -> Result<Vec<AccessRequest>, Unavailable> {
        self.access.access_requests(state, limit).await.map_err(Unavailable)
    }

    pub async fn access_request(&self, id: &str) -> Result<Option<AccessRequest>, Unavailable> {
        self.access.access_request(id).await.map_err(Unavailable)
    }

    /// Approves, denies or revokes access request `id` on behalf of
    /// `caller` (see [`approval::may_decide`]).
    pub async fn decide_access(
        &self,
        id: &str,
        ruling: Ruling,
        caller: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<AccessRequest, DecideError> {
        let Ruling { decision, duration, reason, break_glass } = ruling;
        let now = self.clock.now();
        let request =
            self.access_request(id).await?.ok_or_else(|| DecideError::NotFound(format!("no access request {id}")))?;
        let reason = reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
        if reason.as_ref().is_some_and(|r| r.len() > 500 || r.chars().any(char::is_control)) {
            return Err(DecideError::Invalid("reason: at most 500 printable characters".into()));
        }
        let needs_reason = break_glass || decision != Decision::Approve;
        if needs_reason && reason.is_none() {
            return Err(DecideError::Invalid("reason: required for a denial, a revocation and break glass".into()));
        }
        // The grant's rule and the system's owners, as they are now.
        let grants = self.policy.grants_for_issuer(&request.issuer).await.map_err(Unavailable)?;
        let ctx = grants.iter().find(|g| g.grant.id.as_str() == request.grant_id);
        let systems = self.lifecycle.list_systems().await.map_err(Unavailable)?;
        let view = systems.iter().find(|v| v.system.id.as_str() == request.system_id);
        let (Some(ctx), Some(view)) = (ctx, view) else {
            return Err(DecideError::Conflict(format!(
                "grant {} of system {} no longer exists; the request can only lapse",
                request.grant_id, request.system_id
            )));
        };
        let rule = self
            .approval_rule(ctx)
            .ok_or_else(|| DecideError::Conflict(format!("grant {} no longer needs approval", request.grant_id)))?;
        let groups = self.session_groups(caller).await?;
        let decider = Decider {
            person: caller.person.as_ref().map(|p| DeciderPerson {
                issuer: &p.issuer,
                subject: &p.subject,
                email: p.email.as_deref(),
                groups: &groups,
                owns: &p.owns,
            }),
            roles: &caller.roles,
        };
        approval::may_decide(&decider, &rule, view, &request, decision, break_glass).map_err(DecideError::Forbidden)?;
        let actor = caller.actor();
        match decision {
            Decision::Revoke => {
                if !request.allows(now) {
                    return Err(DecideError::Conflict(format!(
                        "access request {id} is {}; nothing to revoke",
                        request.state
                    )));
                }
                let why = reason.unwrap_or_default();
                self.end_access(&request, &why, &actor, meta, now)
                    .await?
                    .ok_or_else(|| DecideError::Conflict(format!("access request {id} changed meanwhile")))
            }
            Decision::Approve | Decision::Deny => {
                if !request.waiting(now) {
                    return Err(DecideError::Conflict(format!(
                        "access request {id} is {}; only a pending request is decided",
                        if request.state == AccessState::Pending { "expired" } else { request.state.as_str() }
                    )));
                }
                let approve = decision == Decision::Approve;
                let (state, kind, until) = if approve {
                    let length = approval::approval_duration(&rule, duration)
                        .map_err(|e| DecideError::Invalid(format!("duration: {e}")))?;
                    let length = time::Duration::try_from(length).unwrap_or(time::Duration::HOUR);
                    (AccessState::Approved, "access_request.approved", Some(now + length))
                } else {
                    (AccessState::Denied, "access_request.denied", None)
                };
                let mut event = self.request_event(kind, &request, now, meta);
                event.actor = Some(actor.clone());
                event.reason = reason.clone();
                if let (Some(detail), Some(until)) = (event.detail.as_mut(), until) {
                    detail["approved_until"] = json!(crate::domain::rfc3339(until));
                    detail["break_glass"] = json!(break_glass);
                }
                let mut events = vec![event];
                let mut jobs: Vec<JobSpec> = self.notify(kind, &request).into_iter().collect();
                if break_glass {
                    // Recorded on its own and announced at once: a second
                    // person must review it (`GET /v1/reviews`).
                    let mut glass = self.request_event("access.break_glass", &request, now, meta);
                    glass.actor = Some(actor.clone());
                    glass.reason = reason.clone();
                    events.push(glass);
                    jobs.extend(self.notify("access.break_glass", &request));
                }
                let outcome = AccessDecision { state, at: now, by: actor, reason, approved_until: until, break_glass };
                self.access
                    .decide_access_request(id, &[AccessState::Pending], outcome, events, jobs)
                    .await
                    .map_err(Unavailable)?
                    .ok_or_else(|| DecideError::Conflict(format!("access request {id} was decided meanwhile")))
            }
        }
    }

    /// The caller's groups at sign-in (for grants whose approvers are
    /// groups); none for an automation token.
    async fn session_groups(&self, caller: &AdminCaller) -> Result<Vec<String>, Unavailable> {
        if caller.person.is_none() {
            return Ok(Vec::new());
        }
        Ok(self.sessions.session(&caller.id).await.map_err(Unavailable)?.map(|s| s.groups).unwrap_or_default())
    }

    /// Break-glass approvals awaiting a second person's review.
    pub async fn reviews(&self) -> Result<Vec<AccessRequest>, Unavailable> {
        self.access.unreviewed_access().await.map_err(Unavailable)
    }

    /// Marks a break-glass approval reviewed by `caller`, who must be a
    /// person other than the one who approved it.
    pub async fn review_access(
        &self,
        id: &str,
        note: Option<String>,
        caller: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<AccessRequest, DecideError> {
        let Some(person) = &caller.person else {
            return Err(DecideError::Forbidden("a review is a person's: sign in (halflife login)".into()));
        };
        let request = self
            .access_request(id)
            .await?
            .filter(|r| r.break_glass && r.reviewed_at.is_none())
            .ok_or_else(|| DecideError::NotFound(format!("no break-glass approval {id} awaits review")))?;
        // Actors are recorded as `email (roles; person SUBJECT at ISSUER)`.
        let visible = crate::domain::identity::visible;
        let marker = format!("; person {} at {})", visible(&person.subject), visible(&person.issuer));
        let same = request.decided_by.as_deref().is_some_and(|by| by.ends_with(&marker));
        if same {
            return Err(DecideError::Forbidden(
                "the person who broke the glass cannot review it; a second person must".into(),
            ));
        }
        let now = self.clock.now();
        let actor = caller.actor();
        let mut event = self.request_event("access_request.reviewed", &request, now, meta);
        event.actor = Some(actor.clone());
        event.reason = note;
        if !self.access.review_access_request(id, &actor, now, event).await.map_err(Unavailable)? {
            return Err(DecideError::Conflict(format!("break-glass approval {id} was reviewed meanwhile")));
        }
        self.access_request(id).await?.ok_or_else(|| DecideError::NotFound(format!("no access request {id}")))
    }
}
