//! RFC 8693 token exchange: attested identity in, scoped short-lived JWT out.
//!
//! The hot path: one attestation verification, one grant lookup, one
//! signature, one durable write shared with concurrent requests through the
//! store's group commit. No credential leaves before its issuance record is
//! committed.

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use url::Url;

use super::throttle::Throttled;
use super::{Broker, Internal, Unavailable};
use crate::attest::dpop::{self, DpopProof};
use crate::attest::jwt::{self, Attestation};
use crate::attest::x509::{PeerCertificates, X509Rejection};
use crate::crypto;
use crate::domain::delegation::{self, Identity, Principal};
use crate::domain::model::{Binding, GrantContext};
use crate::domain::policy::{Ask, Decision, Denial, DenyCode, decide, operating_refusal};
use crate::domain::values::CredentialKind;
use crate::mint;
use crate::mint::jwt::{ACCESS_TOKEN_TYP, AccessClaims, Confirmation};
use crate::mint::login::LoginTarget;
use crate::store::{AuditEvent, Issuance, IssueOutcome, Outcome, ReplayGuard, ReplayKind, RequestMeta};

/// The one message every forged, expired or untrusted subject token gets, so
/// the response is no oracle for which check failed. The precise reason is
/// in the audit log.
pub const INVALID_SUBJECT_TOKEN: &str =
    "subject_token is invalid, expired, or not issued by a trusted issuer for this audience";

/// The one message every forged, expired or untrusted actor token gets.
pub const INVALID_ACTOR_TOKEN: &str =
    "actor_token is invalid, expired, or not issued by a trusted issuer for this audience";

/// The one message every client certificate that does not attest a
/// workload gets; the precise reason is in the audit log.
pub const INVALID_CLIENT_CERTIFICATE: &str =
    "the client certificate is not a valid X.509-SVID of a trusted SPIFFE trust domain";

/// How the workload proves who it is.
pub enum Proof {
    /// RFC 8693: a JWT from a trusted issuer.
    SubjectToken(SecretString),
    /// RFC 8705 `tls_client_auth`: the X.509-SVID the connection presented,
    /// and the `client_id` the request named, if any (it must be the
    /// certificate's SPIFFE ID).
    ClientCertificate { client_id: Option<String> },
    /// RFC 8693 §2.1 delegation: the acting workload's attestation
    /// (`actor_token`), and the token of the party it acts for
    /// (`subject_token`).
    Delegated { subject_token: SecretString, subject_kind: SubjectKind, actor_token: SecretString },
}

/// What a delegation's subject token is said to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    /// An ID token or other JWT from a trusted issuer.
    Jwt,
    /// An access token: one of halflife's own (a chain), or a trusted
    /// issuer's JWT access token.
    AccessToken,
}

/// On whose behalf a delegated exchange asks, as its verified subject
/// token says.
struct OnBehalf {
    principal: Principal,
    expires_at: OffsetDateTime,
    /// How the audit trail names the subject token (its `jti` or
    /// fingerprint; a halflife token's `jti`).
    token_id: String,
    /// For a single-use issuer's token: its replay record.
    guard: Option<ReplayGuard>,
}

impl OnBehalf {
    /// The audit record of a delegation: both identities, and for an
    /// issued token its whole chain.
    fn detail(&self, actor: &Attestation, act: Option<&serde_json::Value>) -> serde_json::Value {
        let p = &self.principal;
        let mut detail = serde_json::json!({
            "subject": {"issuer": p.issuer, "iss": p.iss, "sub": p.subject, "token": self.token_id},
            "actor": {"issuer": actor.issuer_name, "iss": actor.iss, "sub": actor.subject},
            "on_behalf_of": {"issuer": p.origin.0, "subject": p.origin.1},
        });
        if let Some(act) = act {
            detail["depth"] = serde_json::json!(delegation::depth(Some(act)));
            detail["chain"] = serde_json::Value::Array(delegation::chain(act));
        }
        detail
    }
}

pub struct ExchangeRequest {
    pub proof: Proof,
    pub ask: Ask,
    /// The certificates presented on the mTLS listener, if the request came
    /// over it: the token is then bound to the leaf (`cnf.x5t#S256`).
    pub peer: Option<PeerCertificates>,
    /// The request's `DPoP` header and the endpoint URL it must name.
    pub dpop: Option<(String, Url)>,
}

/// An issued credential, ready to return.
pub struct Issued {
    pub access_token: SecretString,
    pub jti: String,
    pub expires_in: i64,
    pub scope: String,
    pub system: String,
    /// `DPoP` for a DPoP-bound token, `Bearer` otherwise (an mTLS-bound
    /// token is still presented as a bearer token, over mTLS).
    pub token_type: &'static str,
    /// For a database login: where and as whom to connect (the password
    /// is `access_token`).
    pub login: Option<IssuedLogin>,
}

/// A dynamic database login, without its password.
#[derive(Debug, Clone)]
pub struct IssuedLogin {
    pub username: String,
    pub backend: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{}", .0.description)]
    Denied(Denial),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// Over a rate limit: nothing checked further, nothing issued.
    #[error(transparent)]
    Throttled(#[from] Throttled),
    /// Signing or randomness failed: nothing was issued.
    #[error(transparent)]
    Internal(#[from] Internal),
    /// The grant needs a person's approval, which the access request
    /// awaits (`authorization_pending`): ask again after `interval`.
    #[error("{}", .0.description)]
    Pending(super::approvals::Pending),
}

impl Broker {
    /// Decides, records and issues; counts the outcome.
    pub async fn exchange(&self, request: ExchangeRequest, meta: &RequestMeta) -> Result<Issued, ExchangeError> {
        let started = std::time::Instant::now();
        let result = self.exchange_uncounted(request, meta).await;
        match &result {
            Ok(_) => self.stats.issued(started.elapsed()),
            Err(ExchangeError::Denied(denial)) => self.stats.refused("denied", denial.code.as_str()),
            Err(ExchangeError::Unavailable(u)) if u.is_outage() => {
                self.stats.refused("unavailable", "temporarily_unavailable")
            }
            Err(ExchangeError::Unavailable(u)) => match u.0 {
                crate::store::StoreError::InvalidValue(_) => self.stats.refused("denied", "invalid_request"),
                _ => self.stats.refused("failed", "server_error"),
            },
            Err(ExchangeError::Throttled(_)) => self.stats.refused("rate_limited", "rate_limited"),
            Err(ExchangeError::Pending(_)) => self.stats.refused("pending", "authorization_pending"),
            Err(ExchangeError::Internal(_)) => self.stats.refused("failed", "server_error"),
        }
        result
    }

    async fn exchange_uncounted(&self, request: ExchangeRequest, meta: &RequestMeta) -> Result<Issued, ExchangeError> {
        let now = self.clock.now();
        let source = meta.source.as_deref().and_then(|s| s.parse::<std::net::IpAddr>().ok());
        self.throttle.source(source)?;
        let (attestation, on_behalf) = match &request.proof {
            Proof::SubjectToken(token) => {
                let token = token.expose_secret();
                match self.verifier.verify(token, now).await {
                    Ok(a) => (a, None),
                    Err(rejection) => {
                        self.throttle.failed(source);
                        let denial =
                            Denial::with_reason(DenyCode::InvalidGrant, INVALID_SUBJECT_TOKEN, rejection.to_string());
                        let mut event = self.denial_event(&denial, &request.ask, now, meta);
                        event.attestation_id = Some(fingerprint(token));
                        return Err(self.deny(denial, event).await);
                    }
                }
            }
            Proof::Delegated { subject_token, subject_kind, actor_token } => {
                let actor_token = actor_token.expose_secret();
                let actor = match self.verifier.verify(actor_token, now).await {
                    Ok(a) => a,
                    Err(rejection) => {
                        self.throttle.failed(source);
                        let reason = format!("actor_token: {rejection}");
                        let denial = Denial::with_reason(DenyCode::InvalidGrant, INVALID_ACTOR_TOKEN, reason);
                        let mut event = self.denial_event(&denial, &request.ask, now, meta);
                        event.attestation_id = Some(fingerprint(actor_token));
                        return Err(self.deny(denial, event).await);
                    }
                };
                match self.verify_subject(subject_token.expose_secret(), *subject_kind, now).await? {
                    Ok(on_behalf) => (actor, Some(on_behalf)),
                    Err(reason) => {
                        self.throttle.failed(source);
                        let reason = format!("subject_token: {reason}");
                        let denial = Denial::with_reason(DenyCode::InvalidGrant, INVALID_SUBJECT_TOKEN, reason);
                        let event = self.attested_denial(&denial, &request.ask, &actor, None, now, meta);
                        return Err(self.deny(denial, event).await);
                    }
                }
            }
            Proof::ClientCertificate { client_id } => {
                let attested = match &self.bundles {
                    Some(bundles) => bundles.attest(request.peer.as_ref(), now),
                    None => Err((X509Rejection::NoCertificate, None)),
                }
                .and_then(|attestation| match client_id {
                    Some(id) if *id != attestation.subject => Err((
                        X509Rejection::ClientIdMismatch(crate::domain::values::truncate(id, 80)),
                        Some(attestation.token_id),
                    )),
                    _ => Ok(attestation),
                });
                match attested {
                    Ok(attestation) => (attestation, None),
                    Err((rejection, cert_fingerprint)) => {
                        self.throttle.failed(source);
                        let denial = Denial::with_reason(
                            DenyCode::InvalidClient,
                            INVALID_CLIENT_CERTIFICATE,
                            rejection.to_string(),
                        );
                        let mut event = self.denial_event(&denial, &request.ask, now, meta);
                        event.attestation_id = cert_fingerprint;
                        return Err(self.deny(denial, event).await);
                    }
                }
            }
        };

        self.throttle.workload(&attestation.issuer_name, &attestation.subject)?;

        let dpop = match &request.dpop {
            None => None,
            Some((proof, endpoint)) => match dpop::verify_proof(proof, "POST", endpoint, now, self.dpop_window) {
                Ok(proof) => Some(proof),
                Err(e) => {
                    let denial = Denial::new(DenyCode::InvalidDpopProof, e.to_string());
                    let event = self.attested_denial(&denial, &request.ask, &attestation, None, now, meta);
                    return Err(self.deny(denial, event).await);
                }
            },
        };
        let cnf = Confirmation {
            x5t_s256: request.peer.as_ref().and_then(|p| p.0.first()).map(|leaf| crypto::b64url(crypto::sha256(leaf))),
            jkt: dpop.as_ref().map(|p| p.jkt.clone()),
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

        let decision = match binding_refusal(ctx.grant.binding, request.ask.kind.as_ref(), &cnf)
            .map_or_else(|| decide(ctx, &request.ask, now, self.limits), Err)
        {
            Ok(d) => d,
            Err(denial) => {
                let event = self.attested_denial(&denial, &request.ask, &attestation, Some(ctx), now, meta);
                return Err(self.deny(denial, event).await);
            }
        };

        let mut decision = decision;
        let act = match &on_behalf {
            None => None,
            Some(on_behalf) => match self.delegation_refusal(ctx, &decision, on_behalf, &attestation) {
                Ok(act) => {
                    // Never longer than the token it was derived from.
                    decision.exp = decision.exp.min(on_behalf.expires_at);
                    Some(act)
                }
                Err(denial) => {
                    let mut event = self.attested_denial(&denial, &request.ask, &attestation, Some(ctx), now, meta);
                    event.detail = Some(serde_json::json!({"delegation": on_behalf.detail(&attestation, None)}));
                    return Err(self.deny(denial, event).await);
                }
            },
        };
        let delegation = on_behalf.as_ref().zip(act);
        let principal = delegation.as_ref().map(|(on_behalf, _)| &on_behalf.principal.origin);
        let approval = match self.approval_rule(ctx) {
            None => None,
            Some(_) => {
                let ask = super::approvals::Asked { attestation: &attestation, ctx, decision: &decision, principal };
                let approved = self.approval_gate(&ask, now, meta).await?;
                // Never longer than the approval.
                decision.exp = decision.exp.min(approved.until);
                Some(approved.id)
            }
        };
        let login = match &decision.kind {
            CredentialKind::Postgres(backend) => match self.logins.target(backend) {
                Some(target) => {
                    let cap = time::Duration::try_from(target.max_ttl).unwrap_or(time::Duration::HOUR);
                    decision.exp = decision.exp.min(decision.iat + cap);
                    Some(target)
                }
                None => {
                    let denial =
                        Denial::new(DenyCode::InvalidTarget, format!("database backend {backend} is not configured"));
                    let event = self.attested_denial(&denial, &request.ask, &attestation, Some(ctx), now, meta);
                    return Err(self.deny(denial, event).await);
                }
            },
            _ => None,
        };

        self.issue(&attestation, ctx, decision, now, meta, cnf, dpop.as_ref(), login, delegation, approval).await
    }

    /// Verifies a delegation's subject token: one of this broker's own
    /// access tokens (a chain), or a token of a trusted issuer checked as
    /// an attestation is. `Err` holds the precise reason, for the audit
    /// trail only.
    async fn verify_subject(
        &self,
        token: &str,
        kind: SubjectKind,
        now: OffsetDateTime,
    ) -> Result<Result<OnBehalf, String>, Unavailable> {
        if kind == SubjectKind::AccessToken
            && let Some(claims) = self.verify_own(token)
        {
            return self.chained_subject(&claims, now).await;
        }
        let (attestation, claims) = match self.verifier.verify_subject(token, now).await {
            Ok(verified) => verified,
            Err(rejection) => return Ok(Err(rejection.to_string())),
        };
        // Within the issuer's leeway a token still verifies, but what is
        // derived from it must not outlive it: nothing is left to issue.
        if attestation.expires_at <= now {
            return Ok(Err(format!("token expired at {}", crate::domain::rfc3339(attestation.expires_at))));
        }
        // A token already delegated by its issuer brings its chain along.
        let act = claims.get("act").filter(|a| a.is_object()).cloned();
        let guard = attestation.single_use.then(|| ReplayGuard {
            kind: ReplayKind::SubjectToken,
            issuer: attestation.issuer_name.clone(),
            token_id: attestation.token_id.clone(),
            keep_until: attestation.replay_until,
        });
        Ok(Ok(OnBehalf {
            principal: Principal {
                origin: (attestation.issuer_name.clone(), attestation.subject.clone()),
                issuer: attestation.issuer_name,
                iss: attestation.iss,
                subject: attestation.subject,
                claims,
                act,
            },
            expires_at: attestation.expires_at,
            token_id: attestation.token_id,
            guard,
        }))
    }

    /// A halflife access token passed on to a sub-agent: it must be active
    /// now and a bearer token (a sender-constrained token is its holder's
    /// alone). The chain's origin is whom that token answers to.
    async fn chained_subject(
        &self,
        claims: &AccessClaims,
        now: OffsetDateTime,
    ) -> Result<Result<OnBehalf, String>, Unavailable> {
        let t = now.unix_timestamp();
        let named = format!("halflife token {}", claims.jti);
        if claims.exp <= t || claims.nbf > t {
            return Ok(Err(format!("{named} is expired or not yet valid")));
        }
        if claims.cnf.is_some() {
            return Ok(Err(format!(
                "{named} is sender-constrained (cnf): only its holder may present it, so it cannot be passed on"
            )));
        }
        let Some(record) = self.credentials.credential(&claims.jti).await.map_err(Unavailable)? else {
            return Ok(Err(format!("{named} has no issuance record")));
        };
        if record.is_revoked() {
            return Ok(Err(format!("{named} is revoked")));
        }
        if let Some(why) = operating_refusal(&record.system, [&record.business_owner, &record.technical_owner], now) {
            return Ok(Err(format!("{named} is not active: {why}")));
        }
        let origin = record.parties.principal.clone().unwrap_or_else(|| record.parties.workload.clone());
        let map = match serde_json::to_value(claims) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        Ok(Ok(OnBehalf {
            principal: Principal {
                issuer: delegation::HALFLIFE_ISSUER.to_owned(),
                iss: self.issuer.clone(),
                subject: claims.sub.clone(),
                claims: map,
                act: claims.act.clone(),
                origin,
            },
            expires_at: OffsetDateTime::from_unix_timestamp(claims.exp).unwrap_or(now),
            token_id: claims.jti.clone(),
            guard: None,
        }))
    }

    /// Whether the grant lets this actor act for this subject, and the
    /// issued token's `act` if it does.
    fn delegation_refusal(
        &self,
        ctx: &GrantContext,
        decision: &Decision,
        on_behalf: &OnBehalf,
        actor: &Attestation,
    ) -> Result<serde_json::Value, Denial> {
        if decision.kind != CredentialKind::Jwt {
            return Err(Denial::new(
                DenyCode::InvalidRequest,
                "a delegated credential is a JWT (it carries act): request an access token, not an opaque secret \
                 or a database login",
            ));
        }
        let p = &on_behalf.principal;
        if p.issuer == actor.issuer_name && p.subject == actor.subject {
            return Err(Denial::new(
                DenyCode::InvalidRequest,
                "the actor and the subject are the same workload: exchange its attestation alone, without actor_token",
            ));
        }
        let identity =
            Identity { issuer: actor.issuer_name.clone(), iss: actor.iss.clone(), sub: actor.subject.clone() };
        delegation::delegate(&ctx.grant, p, &identity, self.max_delegation_depth)
            .map_err(|refused| Denial::new(DenyCode::AccessDenied, refused.0))
    }

    #[expect(clippy::too_many_arguments, reason = "one private step of exchange, called once")]
    async fn issue(
        &self,
        attestation: &Attestation,
        ctx: &GrantContext,
        decision: Decision,
        now: OffsetDateTime,
        meta: &RequestMeta,
        cnf: Confirmation,
        dpop: Option<&DpopProof>,
        login: Option<LoginTarget>,
        delegation: Option<(&OnBehalf, serde_json::Value)>,
        approval: Option<String>,
    ) -> Result<Issued, ExchangeError> {
        let jti = new_jti(now);
        // An opaque secret or a database login carries no claims a resource
        // server could check a binding against: it is a bearer credential
        // (grants that require binding refuse them before this point).
        let bearer_only = decision.kind != CredentialKind::Jwt;
        let (cnf, dpop) = if bearer_only { (Confirmation::default(), None) } else { (cnf, dpop) };
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: match &delegation {
                Some((on_behalf, _)) => on_behalf.principal.subject.clone(),
                None => attestation.subject.clone(),
            },
            aud: mint::jwt::Audiences(decision.audiences.iter().map(ToString::to_string).collect()),
            exp: decision.exp.unix_timestamp(),
            iat: decision.iat.unix_timestamp(),
            nbf: decision.iat.unix_timestamp(),
            jti: jti.clone(),
            scope: decision.scopes.joined(),
            client_id: attestation.subject.clone(),
            system: ctx.system.id.to_string(),
            cnf: (!cnf.is_empty()).then_some(cnf),
            act: delegation.as_ref().map(|(_, act)| act.clone()),
        };
        let token_type = if dpop.is_some() { "DPoP" } else { "Bearer" };
        let keys = self.keys.get();
        let signing_key = keys.signing(now);
        let (access_token, secret_hash, issued_login) = match (&decision.kind, login) {
            (CredentialKind::Postgres(backend), Some(target)) => {
                let random = crypto::random_bytes::<4>().map_err(|e| Internal::new("role name generation", e))?;
                let role = crate::mint::login::role_name(&target.role_prefix, ctx.system.id.as_str(), random);
                let password = crypto::random_bytes::<32>().map_err(|e| Internal::new("password generation", e))?;
                let password = SecretString::from(crypto::b64url(zeroize::Zeroizing::new(password).as_slice()));
                if let Err(e) = self.logins.create_login(backend, &role, &password, decision.exp).await {
                    // Fail closed, and say so in the audit trail.
                    tracing::error!(error = %e, "creating a database login failed");
                    let mut event = AuditEvent::new("credential.denied", Outcome::Denied, now, meta);
                    fill_attestation(&mut event, attestation, Some(ctx));
                    event.reason = Some(format!("temporarily_unavailable: {e}"));
                    self.log.record_event(event).await.map_err(Unavailable)?;
                    let cause = format!("creating a database login failed: {e}");
                    return Err(Unavailable(crate::store::StoreError::Unavailable(cause)).into());
                }
                let issued = IssuedLogin {
                    username: role,
                    backend: backend.clone(),
                    host: target.host,
                    port: target.port,
                    database: target.database,
                    expires_at: decision.exp,
                };
                (password, None, Some(issued))
            }
            (CredentialKind::Secret, _) => {
                let secret = mint::secret::generate().map_err(|e| Internal::new("secret generation", e))?;
                let hash = mint::secret::stored_hash(&self.secret_key, secret.expose_secret());
                (secret, Some(hash), None)
            }
            _ => {
                let jwt = signing_key.sign_jwt(ACCESS_TOKEN_TYP, &claims).map_err(|e| Internal::new("signing", e))?;
                (SecretString::from(jwt), None, None)
            }
        };

        let mut event = AuditEvent::new("credential.issued", Outcome::Success, now, meta);
        fill_attestation(&mut event, attestation, Some(ctx));
        event.jti = Some(jti.clone());
        event.audience = Some(claims.aud.joined());
        event.scopes = Some(claims.scope.clone());
        event.iat = Some(claims.iat);
        event.exp = Some(claims.exp);
        // The owners are in `owners` (business, then technical): one
        // copy per issuance, the record stored most.
        event.detail = Some(serde_json::json!({
            "kind": decision.kind.to_string(),
            "key_id": signing_key.kid(),
        }));
        if let (Some(detail), Some(cnf)) = (event.detail.as_mut(), &claims.cnf) {
            detail["cnf"] = serde_json::json!(cnf);
        }
        if let (Some(detail), Some((on_behalf, act))) = (event.detail.as_mut(), &delegation) {
            detail["delegation"] = on_behalf.detail(attestation, Some(act));
        }
        if let (Some(detail), Some(approval)) = (event.detail.as_mut(), &approval) {
            detail["approval"] = serde_json::json!(approval);
        }
        // An auditor goes from a database log line (the role) to the
        // workload, system and owners.
        if let (Some(detail), Some(login)) = (event.detail.as_mut(), &issued_login) {
            detail["db_role"] = serde_json::json!(login.username);
            detail["db_backend"] = serde_json::json!(login.backend);
        }
        let mut replay = Vec::new();
        if let Some(proof) = dpop {
            // Checked first: a replayed proof must not use up a single-use
            // attestation presented with it. Keyed on the proof key's
            // thumbprint and the proof's `jti`, both signed content: a proof
            // re-sent with another encoding of its signature (ECDSA's
            // `(r, n - s)`) is the same proof here.
            replay.push(ReplayGuard {
                kind: ReplayKind::DpopProof,
                issuer: DPOP_REPLAY_ISSUER.to_owned(),
                token_id: format!("{}:{}", proof.jkt, proof.jti),
                // A proof verifies while its iat is within the window of
                // the clock: remember it at least that long.
                keep_until: OffsetDateTime::from_unix_timestamp(proof.iat)
                    .unwrap_or(now)
                    .saturating_add(time::Duration::try_from(self.dpop_window).unwrap_or(time::Duration::HOUR))
                    .max(now),
            });
        }
        if attestation.single_use {
            // `(issuer, jti)`, or the issuer and the hash of the signing
            // input: never of the signature (see `jwt::fingerprint`).
            replay.push(ReplayGuard {
                kind: ReplayKind::Attestation,
                issuer: attestation.issuer_name.clone(),
                token_id: attestation.token_id.clone(),
                keep_until: attestation.replay_until,
            });
        }
        if let Some(guard) = delegation.as_ref().and_then(|(on_behalf, _)| on_behalf.guard.clone()) {
            replay.push(guard);
        }
        let issuance = Issuance {
            jti: jti.clone(),
            kind: decision.kind.clone(),
            system_id: ctx.system.id.clone(),
            grant_id: ctx.grant.id.clone(),
            grant_version: ctx.grant_version,
            issuer: attestation.issuer_name.clone(),
            subject: attestation.subject.clone(),
            principal: delegation.as_ref().map(|(on_behalf, _)| on_behalf.principal.origin.clone()),
            audience: claims.aud.joined(),
            scopes: claims.scope.clone(),
            iat: decision.iat,
            exp: decision.exp,
            replay,
            secret_hash,
            db_role: issued_login.as_ref().map(|l| l.username.clone()),
            approval,
            event,
        };
        let outcome = self.log.record_issuance(issuance).await;
        if let Some(login) = &issued_login
            && !matches!(outcome, Ok(IssueOutcome::Committed))
        {
            // The role exists but its record does not: it must not outlive
            // this answer. If the drop fails too, the startup sweep drops
            // every prefixed role without a live record.
            if let Err(e) = self.logins.drop_login(&login.backend, &login.username).await {
                tracing::error!(error = %e, db.role = %login.username, "dropping an unrecorded database login failed");
            }
        }
        match outcome.map_err(Unavailable)? {
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
                    access_token,
                    jti,
                    expires_in: claims.exp - claims.iat,
                    scope: claims.scope,
                    system: claims.system,
                    token_type,
                    login: issued_login,
                })
            }
            IssueOutcome::Replayed(kind @ (ReplayKind::Attestation | ReplayKind::SubjectToken)) => {
                // The workload's own attestation is the actor_token of a
                // delegation.
                let which = if delegation.is_some() && kind == ReplayKind::Attestation {
                    "actor_token"
                } else {
                    "subject_token"
                };
                Err(ExchangeError::Denied(Denial::with_reason(
                    DenyCode::InvalidGrant,
                    format!("{which} has already been used; its issuer is single-use, so fetch a fresh one"),
                    kind.reason(),
                )))
            }
            IssueOutcome::Replayed(ReplayKind::DpopProof) => Err(ExchangeError::Denied(Denial::with_reason(
                DenyCode::InvalidDpopProof,
                "DPoP proof has already been used; sign a fresh proof (new jti) for every request",
                ReplayKind::DpopProof.reason(),
            ))),
            IssueOutcome::SystemStopped => Err(ExchangeError::Denied(Denial::new(
                DenyCode::AccessDenied,
                format!("system {} was suspended or retired while the request was decided", ctx.system.id),
            ))),
            IssueOutcome::GrantChanged => Err(ExchangeError::Denied(Denial::new(
                DenyCode::AccessDenied,
                format!("grant {} was removed or changed while the request was decided; retry", ctx.grant.id),
            ))),
            IssueOutcome::ApprovalEnded => Err(ExchangeError::Denied(Denial::new(
                DenyCode::AccessDenied,
                "the approval was revoked or ended while the request was decided; ask again for a new approval",
            ))),
        }
    }

    /// Records an exchange refused before it could be evaluated (a
    /// malformed or unsupported request).
    pub async fn record_refused_request(
        &self,
        code: &'static str,
        description: &str,
        subject_token: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<(), Unavailable> {
        self.stats.refused("denied", code);
        let mut event = AuditEvent::new("credential.denied", Outcome::Denied, self.clock.now(), meta);
        event.reason = Some(format!("{code}: {description}"));
        event.attestation_id = subject_token.map(fingerprint);
        self.log.record_event(event).await.map_err(Unavailable)
    }

    fn denial_event(&self, denial: &Denial, ask: &Ask, now: OffsetDateTime, meta: &RequestMeta) -> AuditEvent {
        let mut event = AuditEvent::new("credential.denied", Outcome::Denied, now, meta);
        event.reason = Some(format!("{}: {}", denial.code.as_str(), denial.reason));
        event.audience = (!ask.targets.is_empty())
            .then(|| ask.targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "));
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

/// The replay-record namespace of DPoP proofs; `#` never appears in an
/// issuer name, so it cannot collide with a single-use issuer's records.
const DPOP_REPLAY_ISSUER: &str = "#dpop";

/// Why a grant's binding requirement refuses a token with confirmation
/// `cnf`, if it does.
fn binding_refusal(binding: Binding, kind: Option<&CredentialKind>, cnf: &Confirmation) -> Option<Denial> {
    let (code, description) = match binding {
        Binding::Optional => return None,
        _ if !matches!(kind, None | Some(CredentialKind::Jwt)) => (
            DenyCode::InvalidRequest,
            "this grant issues only sender-constrained tokens, and an opaque secret or database login cannot be \
             bound: request a JWT",
        ),
        Binding::Required if cnf.is_empty() => (
            DenyCode::InvalidRequest,
            "this grant issues only sender-constrained tokens: send a DPoP proof or exchange over the mTLS listener",
        ),
        Binding::Dpop if cnf.jkt.is_none() => {
            (DenyCode::InvalidDpopProof, "this grant issues only DPoP-bound tokens: send a DPoP proof (RFC 9449)")
        }
        Binding::Mtls if cnf.x5t_s256.is_none() => (
            DenyCode::InvalidRequest,
            "this grant issues only certificate-bound tokens: exchange over the mTLS listener (RFC 8705)",
        ),
        Binding::Required | Binding::Dpop | Binding::Mtls => return None,
    };
    Some(Denial::new(code, description))
}

/// How a token that could not be verified is named in the audit log: the
/// SHA-256 of its signing input ([`jwt::fingerprint`]), never the token.
/// Not by its `jti`, even when it has one: the claims of a token that did
/// not verify are not trusted, and a forger must not be able to name a
/// real attestation in a denial. A token without `jti` that did verify
/// earlier has this same name in its issuance event, whatever signature
/// it now comes with. Computed only on refusals, off the hot path.
fn fingerprint(token: &str) -> String {
    jwt::fingerprint(token)
}

/// A UUIDv7 `jti` built from the injected clock: time-ordered (so its index
/// appends) with 74 random bits.
pub fn new_jti(now: OffsetDateTime) -> String {
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs, now.nanosecond());
    uuid::Uuid::new_v7(ts).to_string()
}
