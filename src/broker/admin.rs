//! Who calls the operator API: a person signed in with the organisation's
//! identity provider (a session, see [`super::people`]), or an automation
//! token (an admin token: created once, shown once, stored as a hash, and
//! expiring).

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use super::{Broker, Failure, Internal, Unavailable};
use crate::crypto;
use crate::domain::identity::visible;
use crate::domain::model::Role;
use crate::store::{AdminTokenRecord, AdminTokenStore, AuditEvent, Outcome, RequestMeta};

/// Prefix of admin tokens, so secret scanners can recognise a leaked one.
pub const ADMIN_TOKEN_PREFIX: &str = "hla_";

/// How long an automation token lasts unless `--ttl` says otherwise.
pub const DEFAULT_ADMIN_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(90 * 86400);
/// The longest an automation token may last.
pub const MAX_ADMIN_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(2 * 366 * 86400);

/// A person as their identity provider vouched for them at sign-in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Person {
    /// The provider's `iss` and the person's `sub` there.
    pub issuer: String,
    pub subject: String,
    /// Their verified email address, if the provider gave one.
    pub email: Option<String>,
    pub name: Option<String>,
    /// The owners this person is linked to (see [`super::people`]).
    #[serde(skip)]
    pub owns: Vec<String>,
}

/// An authenticated administrative caller: a person's session or an
/// automation token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCaller {
    /// The session's or the token's id.
    pub id: String,
    /// The token's name, or the person's email (their subject without one).
    pub name: String,
    /// What the caller may do; a person may hold several roles.
    pub roles: Vec<Role>,
    /// The person behind a session; `None` for an automation token.
    pub person: Option<Person>,
    pub expires_at: Option<OffsetDateTime>,
}

impl AdminCaller {
    /// An automation token's caller.
    pub fn automation(id: &str, name: &str, role: Role) -> Self {
        Self { id: id.to_owned(), name: name.to_owned(), roles: vec![role], person: None, expires_at: None }
    }

    /// Whether one of the caller's roles satisfies `allows`.
    pub fn may(&self, allows: impl Fn(Role) -> bool) -> bool {
        self.roles.iter().any(|&r| allows(r))
    }

    /// The caller's roles, as in `operator, approver`.
    pub fn roles_text(&self) -> String {
        self.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// How the caller is named in audit events: a person by email, issuer
    /// and subject; an automation token by name and id. Invisible
    /// characters show as `\u{…}`.
    pub fn actor(&self) -> String {
        match &self.person {
            Some(p) => format!(
                "{} ({}; person {} at {})",
                visible(p.email.as_deref().unwrap_or(&p.subject)),
                self.roles_text(),
                visible(&p.subject),
                visible(&p.issuer)
            ),
            None => format!("{} ({}; automation token {})", visible(&self.name), self.roles_text(), self.id),
        }
    }

    /// The caller as an approver in separation-of-duties checks.
    pub fn approver(&self) -> crate::domain::lifecycle::Approver {
        use crate::domain::lifecycle::Approver;
        match &self.person {
            Some(p) => Approver::Person {
                issuer: p.issuer.clone(),
                subject: p.subject.clone(),
                email: p.email.clone(),
                owns: p.owns.clone(),
            },
            None => Approver::Token { name: self.name.clone() },
        }
    }

    /// The caller as a JSON object (`GET /v1/whoami`, event details).
    pub fn describe(&self) -> serde_json::Value {
        let expires_at = self.expires_at.map(crate::domain::rfc3339);
        match &self.person {
            Some(p) => serde_json::json!({
                "kind": "person", "id": self.id, "roles": self.roles, "issuer": p.issuer,
                "subject": p.subject, "email": p.email, "name": p.name, "expires_at": expires_at,
            }),
            None => serde_json::json!({
                "kind": "automation", "id": self.id, "name": self.name, "roles": self.roles,
                "expires_at": expires_at,
            }),
        }
    }
}

/// Checks a token's name: 1-128 characters a reader can see, in one
/// script, so that no two tokens' names look alike while being different
/// (separation of duties compares names as people read them).
pub fn check_token_name(name: &str) -> Result<&str, String> {
    let name = name.trim();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err("must be 1-128 printable characters".into());
    }
    crate::domain::identity::check_readable("the name", name)?;
    Ok(name)
}

/// The role of a new automation token: `approver` is for people only
/// (approvals are separation of duties, which a token never satisfies).
pub fn automation_role(text: &str) -> Result<Role, String> {
    match Role::parse(text) {
        Some(Role::Approver) => Err("approver is a role for people who sign in; a token cannot approve".into()),
        Some(role) => Ok(role),
        None => Err("must be admin, operator, auditor or introspector".into()),
    }
}

/// An automation token's lifetime: `ttl` (e.g. `30d`) or the 90-day
/// default, at most two years.
pub fn check_token_ttl(ttl: Option<&str>) -> Result<std::time::Duration, String> {
    let Some(text) = ttl else { return Ok(DEFAULT_ADMIN_TOKEN_TTL) };
    let ttl = humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration such as 30d: {e}"))?;
    if ttl < std::time::Duration::from_secs(60) || ttl > MAX_ADMIN_TOKEN_TTL {
        return Err("must be between 1m and 732d".into());
    }
    Ok(ttl)
}

/// Creates a token for `name` with `role`; returns it once. Only its
/// SHA-256 is stored: the token carries 256 random bits, so a fast hash is
/// enough to make the stored value useless to a thief.
pub async fn create_admin_token(
    store: &dyn AdminTokenStore,
    role: Role,
    name: &str,
    ttl: std::time::Duration,
    actor: &str,
    now: time::OffsetDateTime,
) -> Result<(AdminTokenRecord, SecretString), Failure> {
    let random = crypto::random_bytes::<32>().map_err(|e| Internal::new("admin token generation", e))?;
    let token = SecretString::from(format!("{ADMIN_TOKEN_PREFIX}{}", crypto::b64url(random)));
    let hash = crypto::sha256(token.expose_secret().as_bytes());
    let record = AdminTokenRecord {
        id: crate::broker::exchange::new_jti(now),
        name: name.to_owned(),
        role: role.as_str().to_owned(),
        expires_at: Some(now + ttl),
    };
    let mut event = AuditEvent::new("admin_token.created", Outcome::Success, now, &RequestMeta::default());
    event.actor = Some(actor.to_owned());
    event.detail = Some(serde_json::json!({
        "id": record.id, "name": name, "role": role,
        "expires_at": record.expires_at.map(crate::domain::rfc3339),
    }));
    store.create_admin_token(record.clone(), hash, event).await.map_err(Unavailable)?;
    Ok((record, token))
}

impl Broker {
    /// Records a refused administrative request (`access.denied`).
    pub async fn record_access_denied(
        &self,
        actor: &str,
        route: &str,
        reason: &str,
        meta: &RequestMeta,
    ) -> Result<(), Unavailable> {
        let mut event = AuditEvent::new("access.denied", Outcome::Denied, self.clock.now(), meta);
        event.actor = Some(actor.to_owned());
        event.reason = Some(reason.to_owned());
        event.detail = Some(serde_json::json!({"route": route}));
        self.log.record_event(event).await.map_err(Unavailable)
    }

    /// The caller behind a bearer token: a person's session (`hls_…`)
    /// or an automation token (`hla_…`), if valid and unexpired.
    pub async fn authenticate_admin(&self, token: &str) -> Result<Option<AdminCaller>, Unavailable> {
        if token.len() > 128 {
            return Ok(None);
        }
        if token.starts_with(super::people::SESSION_TOKEN_PREFIX) {
            return self.authenticate_session(token).await;
        }
        if !token.starts_with(ADMIN_TOKEN_PREFIX) {
            return Ok(None);
        }
        let hash = crypto::sha256(token.as_bytes());
        let Some(record) = self.admin_tokens.admin_token_by_hash(hash).await.map_err(Unavailable)? else {
            return Ok(None);
        };
        let Some(role) = Role::parse(&record.role) else {
            return Ok(None);
        };
        let now = self.clock.now();
        if record.expires_at.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        self.note_token_use(&record.id, now).await?;
        let mut caller = AdminCaller::automation(&record.id, &record.name, role);
        caller.expires_at = record.expires_at;
        Ok(Some(caller))
    }

    /// Records an automation token's use, at most once a minute per token
    /// (`last_used_at` is for finding tokens nobody uses any more).
    async fn note_token_use(&self, id: &str, now: OffsetDateTime) -> Result<(), Unavailable> {
        let due = {
            let mut seen = self.token_uses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match seen.get(id) {
                Some(last) if now - *last < time::Duration::minutes(1) => false,
                _ => {
                    if seen.len() > 10_000 {
                        seen.clear();
                    }
                    seen.insert(id.to_owned(), now);
                    true
                }
            }
        };
        // A bookkeeping write, not a decision: when it fails the call goes
        // on (the next use retries it) rather than failing for it.
        if due && let Err(e) = self.admin_tokens.admin_token_used(id, now).await {
            tracing::warn!(error = %e, token.id = %id, "recording an automation token's use failed");
            self.token_uses.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
        }
        Ok(())
    }

    /// Every automation token, with its expiry and last use.
    pub async fn admin_tokens(&self) -> Result<Vec<crate::store::AdminTokenListing>, Unavailable> {
        self.admin_tokens.admin_tokens().await.map_err(Unavailable)
    }

    /// Revokes an automation token; `false` if there is no such active token.
    pub async fn revoke_admin_token(
        &self,
        id: &str,
        actor: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<bool, Unavailable> {
        let mut event = AuditEvent::new("admin_token.revoked", Outcome::Success, self.clock.now(), meta);
        event.actor = Some(actor.actor());
        event.detail = Some(serde_json::json!({"id": id}));
        self.admin_tokens.revoke_admin_token(id, event).await.map_err(Unavailable)
    }
}
