//! RFC 8693 token exchange: attested identity in, scoped short-lived JWT out.
//!
//! The hot path: one attestation verification, one grant lookup, one
//! signature, one durable write shared with concurrent requests through the
//! store's group commit. No credential leaves before its issuance record is
//! committed.

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use super::{Broker, Unavailable};
use crate::attest::jwt::Attestation;
use crate::crypto;
use crate::domain::model::GrantContext;
use crate::domain::policy::{Ask, Decision, Denial, DenyCode, decide};
use crate::mint::jwt::{ACCESS_TOKEN_TYP, AccessClaims};
use crate::store::{AuditEvent, Issuance, IssueOutcome, Outcome, ReplayGuard, RequestMeta};

/// The one message every forged, expired or untrusted subject token gets, so
/// the response is no oracle for which check failed. The precise reason is
/// in the audit log.
pub const INVALID_SUBJECT_TOKEN: &str =
    "subject_token is invalid, expired, or not issued by a trusted issuer for this audience";

pub struct ExchangeRequest {
    pub subject_token: SecretString,
    pub ask: Ask,
}

/// An issued credential, ready to return.
pub struct Issued {
    pub access_token: SecretString,
    pub jti: String,
    pub expires_in: i64,
    pub scope: String,
    pub system: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{}", .0.description)]
    Denied(Denial),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl Broker {
    pub async fn exchange(&self, request: ExchangeRequest, meta: &RequestMeta) -> Result<Issued, ExchangeError> {
        let now = self.clock.now();
        let token = request.subject_token.expose_secret();

        let attestation = match self.verifier.verify(token, now).await {
            Ok(a) => a,
            Err(rejection) => {
                let denial = Denial::with_reason(DenyCode::InvalidGrant, INVALID_SUBJECT_TOKEN, rejection.to_string());
                let mut event = self.denial_event(&denial, &request.ask, now, meta);
                event.attestation_id = Some(fingerprint(token));
                return Err(self.deny(denial, event).await);
            }
        };

        let grants = self.policy.grants_for_issuer(&attestation.issuer_name).await.map_err(Unavailable)?;
        let mut matching = grants.iter().filter(|g| g.grant.subject.matches(&attestation.subject));
        let ctx = match (matching.next(), matching.next()) {
            (Some(only), None) => only,
            (None, _) => {
                let denial = Denial::new(
                    DenyCode::UnauthorizedClient,
                    format!("no grant allows workload {} from issuer {}", attestation.subject, attestation.issuer_name),
                );
                let event = self.attested_denial(&denial, &request.ask, &attestation, None, now, meta);
                return Err(self.deny(denial, event).await);
            }
            (Some(first), Some(second)) => {
                let denial = Denial::new(
                    DenyCode::UnauthorizedClient,
                    format!(
                        "workload {} matches more than one grant ({}, {}, ...); an operator must make the grants disjoint",
                        attestation.subject, first.grant.id, second.grant.id
                    ),
                );
                let event = self.attested_denial(&denial, &request.ask, &attestation, None, now, meta);
                return Err(self.deny(denial, event).await);
            }
        };

        let decision = match decide(ctx, &request.ask, now, self.limits) {
            Ok(d) => d,
            Err(denial) => {
                let event = self.attested_denial(&denial, &request.ask, &attestation, Some(ctx), now, meta);
                return Err(self.deny(denial, event).await);
            }
        };

        self.issue(&attestation, ctx, decision, now, meta).await
    }

    async fn issue(
        &self,
        attestation: &Attestation,
        ctx: &GrantContext,
        decision: Decision,
        now: OffsetDateTime,
        meta: &RequestMeta,
    ) -> Result<Issued, ExchangeError> {
        let jti = new_jti(now);
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: attestation.subject.clone(),
            aud: decision.audience.to_string(),
            exp: decision.exp.unix_timestamp(),
            iat: decision.iat.unix_timestamp(),
            nbf: decision.iat.unix_timestamp(),
            jti: jti.clone(),
            scope: decision.scopes.joined(),
            client_id: attestation.subject.clone(),
            system: ctx.system.id.to_string(),
        };
        let access_token = self.keys.current().sign_jwt(ACCESS_TOKEN_TYP, &claims).map_err(|e| {
            tracing::error!(error = %e, "signing failed");
            ExchangeError::Unavailable(Unavailable(crate::store::StoreError::Unavailable("signing failed".into())))
        })?;

        let mut event = AuditEvent::new("credential.issued", Outcome::Success, now, meta);
        fill_attestation(&mut event, attestation, Some(ctx));
        event.jti = Some(jti.clone());
        event.audience = Some(claims.aud.clone());
        event.scopes = Some(claims.scope.clone());
        event.iat = Some(claims.iat);
        event.exp = Some(claims.exp);
        event.detail = Some(serde_json::json!({
            "kind": decision.kind.as_str(),
            "business_owner": ctx.system.business_owner,
            "technical_owner": ctx.system.technical_owner,
            "key_id": self.keys.current().kid(),
        }));
        let issuance = Issuance {
            jti: jti.clone(),
            kind: decision.kind,
            system_id: ctx.system.id.clone(),
            grant_id: ctx.grant.id.clone(),
            issuer: attestation.issuer_name.clone(),
            subject: attestation.subject.clone(),
            audience: claims.aud.clone(),
            scopes: claims.scope.clone(),
            iat: decision.iat,
            exp: decision.exp,
            replay: attestation.single_use.then(|| ReplayGuard {
                issuer: attestation.issuer_name.clone(),
                token_id: attestation.token_id.clone(),
                keep_until: attestation.replay_until,
            }),
            event,
        };
        match self.log.record_issuance(issuance).await.map_err(Unavailable)? {
            IssueOutcome::Committed => {
                // The audit trail is the record of every issuance; a log line
                // per issuance at info cost a fifth of the peak exchange rate
                // (an unbuffered write per request), so it is debug.
                tracing::debug!(
                    credential.jti = %jti,
                    system.id = %ctx.system.id,
                    grant.id = %ctx.grant.id,
                    workload.subject = %attestation.subject,
                    "credential issued"
                );
                Ok(Issued {
                    access_token: SecretString::from(access_token),
                    jti,
                    expires_in: claims.exp - claims.iat,
                    scope: claims.scope,
                    system: claims.system,
                })
            }
            IssueOutcome::Replayed => Err(ExchangeError::Denied(Denial::with_reason(
                DenyCode::InvalidGrant,
                "subject_token has already been used; its issuer is single-use, so fetch a fresh one",
                "single-use attestation was already used (replay)",
            ))),
            IssueOutcome::SystemStopped => Err(ExchangeError::Denied(Denial::new(
                DenyCode::AccessDenied,
                format!("system {} was suspended or retired while the request was decided", ctx.system.id),
            ))),
        }
    }

    /// Records an exchange refused before it could be evaluated (a
    /// malformed or unsupported request).
    pub async fn record_refused_request(
        &self,
        code: &str,
        description: &str,
        subject_token: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<(), Unavailable> {
        let mut event = AuditEvent::new("credential.denied", Outcome::Denied, self.clock.now(), meta);
        event.reason = Some(format!("{code}: {description}"));
        event.attestation_id = subject_token.map(fingerprint);
        self.log.record_event(event).await.map_err(Unavailable)
    }

    fn denial_event(&self, denial: &Denial, ask: &Ask, now: OffsetDateTime, meta: &RequestMeta) -> AuditEvent {
        let mut event = AuditEvent::new("credential.denied", Outcome::Denied, now, meta);
        event.reason = Some(format!("{}: {}", denial.code.as_str(), denial.reason));
        event.audience = ask.audience.as_ref().map(|a| a.to_string());
        event.scopes = ask.scopes.as_ref().map(|s| s.joined());
        event
    }

    fn attested_denial(
        &self,
        denial: &Denial,
        ask: &Ask,
        attestation: &Attestation,
        ctx: Option<&GrantContext>,
        now: OffsetDateTime,
        meta: &RequestMeta,
    ) -> AuditEvent {
        let mut event = self.denial_event(denial, ask, now, meta);
        fill_attestation(&mut event, attestation, ctx);
        event
    }

    /// Records a denial, then returns it. If the record cannot be written
    /// the caller gets 503: no decision goes unrecorded.
    async fn deny(&self, denial: Denial, event: AuditEvent) -> ExchangeError {
        tracing::info!(reason = %denial.reason, code = denial.code.as_str(), "exchange denied");
        match self.log.record_event(event).await {
            Ok(()) => ExchangeError::Denied(denial),
            Err(e) => ExchangeError::Unavailable(Unavailable(e)),
        }
    }
}

fn fill_attestation(event: &mut AuditEvent, attestation: &Attestation, ctx: Option<&GrantContext>) {
    event.actor = Some(format!("{} {}", attestation.issuer_name, attestation.subject));
    event.attestation_issuer = Some(attestation.iss.clone());
    event.subject = Some(attestation.subject.clone());
    event.attestation_id = Some(attestation.token_id.clone());
    if let Some(ctx) = ctx {
        event.system_id = Some(ctx.system.id.to_string());
        event.grant_id = Some(ctx.grant.id.to_string());
        event.owners = Some(ctx.system.owners_label());
    }
}

/// How a token that could not be verified is named in the audit log: its
/// SHA-256, never the token. Computed only on refusals, off the hot path.
fn fingerprint(token: &str) -> String {
    format!("sha256:{}", crypto::hex(&crypto::sha256(token.as_bytes())))
}

/// A UUIDv7 `jti` built from the injected clock: time-ordered (so its index
/// appends) with 74 random bits.
pub fn new_jti(now: OffsetDateTime) -> String {
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs, now.nanosecond());
    uuid::Uuid::new_v7(ts).to_string()
}
