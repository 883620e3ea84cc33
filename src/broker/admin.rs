//! Administrative bearer tokens: created once, shown once, stored as a hash.

use secrecy::{ExposeSecret, SecretString};

use super::{Broker, Failure, Internal, Unavailable};
use crate::crypto;
use crate::domain::model::Role;
use crate::store::{AdminTokenRecord, AdminTokenStore, AuditEvent, Outcome, RequestMeta};

/// Prefix of admin tokens, so secret scanners can recognise a leaked one.
pub const ADMIN_TOKEN_PREFIX: &str = "hla_";

/// An authenticated administrative caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCaller {
    pub id: String,
    pub name: String,
    pub role: Role,
}

impl AdminCaller {
    /// How the caller is named in audit events: invisible characters in a
    /// name stored before names were checked show as `\u{…}`.
    pub fn actor(&self) -> String {
        format!("{} ({})", crate::domain::identity::visible(&self.name), self.role)
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

/// Creates a token for `name` with `role`; returns it once. Only its
/// SHA-256 is stored: the token carries 256 random bits, so a fast hash is
/// enough to make the stored value useless to a thief.
pub async fn create_admin_token(
    store: &dyn AdminTokenStore,
    role: Role,
    name: &str,
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
    };
    let mut event = AuditEvent::new("admin_token.created", Outcome::Success, now, &RequestMeta::default());
    event.actor = Some(actor.to_owned());
    event.detail = Some(serde_json::json!({"id": record.id, "name": name, "role": role}));
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

    /// The caller behind an admin bearer token, if the token is valid.
    pub async fn authenticate_admin(&self, token: &str) -> Result<Option<AdminCaller>, Unavailable> {
        if !token.starts_with(ADMIN_TOKEN_PREFIX) || token.len() > 128 {
            return Ok(None);
        }
        let hash = crypto::sha256(token.as_bytes());
        let Some(record) = self.admin_tokens.admin_token_by_hash(hash).await.map_err(Unavailable)? else {
            return Ok(None);
        };
        let Some(role) = Role::parse(&record.role) else {
            return Ok(None);
        };
        Ok(Some(AdminCaller { id: record.id, name: record.name, role }))
    }
}
