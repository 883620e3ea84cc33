//! RFC 7662 introspection and RFC 7009 revocation of issued tokens.

use jsonwebtoken::Validation;
use time::OffsetDateTime;

use super::{Broker, Unavailable};
use crate::attest::jwt::MAX_TOKEN_BYTES;
use crate::domain::policy::operating_refusal;
use crate::mint::jwt::{ACCESS_TOKEN_TYP, AccessClaims};
use crate::store::{AuditEvent, Outcome, RequestMeta};

impl Broker {
    /// Verifies a token this broker issued: our key, our issuer, our type.
    /// Expiry is not checked here.
    fn verify_own(&self, token: &str) -> Option<AccessClaims> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return None;
        }
        let key = self.keys.by_kid(header.kid.as_deref()?)?;
        let mut validation = Validation::new(key.jwt_algorithm());
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<AccessClaims>(token, key.decoding_key(), &validation).ok().map(|d| d.claims)
    }

    /// The workload (`sub`) of a token this broker issued, whatever its
    /// state; `None` for anything else.
    pub fn workload_of(&self, token: &str) -> Option<String> {
        self.verify_own(token).map(|c| c.sub)
    }

    /// The token's claims if it is active now; `None` for expired, revoked,
    /// unknown, malformed or foreign tokens alike.
    pub async fn introspect(&self, token: &str) -> Result<Option<AccessClaims>, Unavailable> {
        let now = self.clock.now();
        let Some(claims) = self.verify_own(token) else {
            return Ok(None);
        };
        let t = now.unix_timestamp();
        if claims.exp <= t || claims.nbf > t {
            return Ok(None);
        }
        let Some(record) = self.credentials.credential(&claims.jti).await.map_err(Unavailable)? else {
            return Ok(None);
        };
        if record.is_revoked()
            || operating_refusal(&record.system, [&record.business_owner, &record.technical_owner], now).is_some()
        {
            return Ok(None);
        }
        Ok(Some(claims))
    }

    /// RFC 7009: the holder of a token revokes it, authenticated by the
    /// token itself. Unknown or invalid tokens are ignored (the caller still
    /// gets 200, as the RFC requires).
    pub async fn revoke_by_holder(&self, token: &str, meta: &RequestMeta) -> Result<(), Unavailable> {
        let now = self.clock.now();
        let Some(claims) = self.verify_own(token) else {
            return Ok(());
        };
        let event = revocation_event(&claims, "revoked by its holder (RFC 7009)", now, meta);
        let revoked =
            self.log.revoke_credential(&claims.jti, "revoked by its holder", event).await.map_err(Unavailable)?;
        if revoked {
            tracing::info!(credential.jti = %claims.jti, system.id = %claims.system, "credential revoked by holder");
        }
        Ok(())
    }
}

fn revocation_event(claims: &AccessClaims, reason: &str, now: OffsetDateTime, meta: &RequestMeta) -> AuditEvent {
    let mut event = AuditEvent::new("credential.revoked", Outcome::Success, now, meta);
    event.reason = Some(reason.to_owned());
    event.actor = Some(claims.sub.clone());
    event.system_id = Some(claims.system.clone());
    event.jti = Some(claims.jti.clone());
    event.subject = Some(claims.sub.clone());
    event.audience = Some(claims.aud.clone());
    event.scopes = Some(claims.scope.clone());
    event.iat = Some(claims.iat);
    event.exp = Some(claims.exp);
    event
}
