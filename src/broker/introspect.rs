//! RFC 7662 introspection and RFC 7009 revocation of issued tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use jsonwebtoken::Validation;
use time::OffsetDateTime;

use super::{Broker, Unavailable};
use crate::attest::jwt::MAX_TOKEN_BYTES;
use crate::crypto::sha256;
use crate::domain::policy::operating_refusal;
use crate::mint::jwt::{ACCESS_TOKEN_TYP, AccessClaims};
use crate::mint::secret;
use crate::store::{AuditEvent, Outcome, RequestMeta};

/// Most tokens [`VerifiedTokens`] remembers; about 400 bytes each.
const MAX_VERIFIED: usize = 32_768;

/// Tokens this broker has already verified, by SHA-256 of their compact
/// form: a resource server that introspects the same token on every request
/// pays for one signature check, not one per request. Only what the
/// signature proves is remembered (the claims, under which key); expiry,
/// revocation and the system's state are checked on every call, and an
/// entry is ignored once its key leaves the keyring.
///
/// Keyed on the whole token, signature included, on purpose: a hit skips
/// the signature check, so a key without the signature (such as the signing
/// input, which names attestations in `jwt::fingerprint`) would let any
/// signature ride on a verified one. Another valid encoding of the same
/// signature (ECDSA's `(r, n - s)` when `keys.algorithm = "ES256"`) is only a
/// miss: it is verified and yields the same claims and `jti`, and every
/// decision (introspection, RFC 7009 revocation) is made on the `jti`.
#[derive(Default)]
pub struct VerifiedTokens {
    entries: Mutex<HashMap<[u8; 32], Verified>>,
}

/// The key id a token was verified under, and its claims.
type Verified = (Arc<str>, Arc<AccessClaims>);

impl VerifiedTokens {
    fn get(&self, hash: &[u8; 32]) -> Option<Verified> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).get(hash).cloned()
    }

    /// Remembers a verified token; when full, first forgets the expired
    /// ones and, if that frees nothing, everything.
    fn insert(&self, hash: [u8; 32], kid: Arc<str>, claims: Arc<AccessClaims>, now: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_VERIFIED {
            entries.retain(|_, (_, c)| c.exp > now);
            if entries.len() >= MAX_VERIFIED {
                entries.clear();
            }
        }
        entries.insert(hash, (kid, claims));
    }
}

impl Broker {
    /// Verifies a token this broker issued: our key, our issuer, our type.
    /// Expiry is not checked here.
    fn verify_own(&self, token: &str) -> Option<Arc<AccessClaims>> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let hash = sha256(token.as_bytes());
        let (keys, now) = (self.keys.get(), self.clock.now());
        if let Some((kid, claims)) = self.verified.get(&hash)
            && keys.verifying(&kid, now).is_some()
        {
            return Some(claims);
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return None;
        }
        let kid = header.kid?;
        let key = keys.verifying(&kid, now)?;
        let mut validation = Validation::new(key.jwt_algorithm());
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let claims =
            Arc::new(jsonwebtoken::decode::<AccessClaims>(token, key.decoding_key(), &validation).ok()?.claims);
        self.verified.insert(hash, Arc::from(kid), Arc::clone(&claims), now.unix_timestamp());
        Some(claims)
    }

    /// The workload (`sub`) of a token this broker issued, whatever its
    /// state; `None` for anything else.
    pub async fn workload_of(&self, token: &str) -> Result<Option<String>, Unavailable> {
        Ok(self.claims_of(token).await?.map(|c| c.sub.clone()))
    }

    /// The claims of an opaque secret this broker issued, whatever its
    /// state: found by its keyed hash after the checksum (no lookup for a
    /// typo or a made-up value).
    async fn secret_claims(&self, token: &str) -> Result<Option<Arc<AccessClaims>>, Unavailable> {
        if !secret::well_formed(token) {
            return Ok(None);
        }
        let hash = secret::stored_hash(&self.secret_key, token);
        let Some(stored) = self.credentials.secret_credential(&hash).await.map_err(Unavailable)? else {
            return Ok(None);
        };
        if !secret::hash_matches(&stored.secret_hash, &hash) {
            return Ok(None);
        }
        Ok(Some(Arc::new(AccessClaims {
            iss: self.issuer.clone(),
            sub: stored.subject.clone(),
            aud: stored.audience,
            exp: stored.exp,
            iat: stored.iat,
            nbf: stored.iat,
            jti: stored.jti,
            scope: stored.scopes,
            client_id: stored.subject,
            system: stored.system_id,
            cnf: None,
        })))
    }

    /// The claims of a JWT or opaque secret this broker issued, whatever
    /// its state.
    async fn claims_of(&self, token: &str) -> Result<Option<Arc<AccessClaims>>, Unavailable> {
        if token.starts_with(secret::PREFIX) { self.secret_claims(token).await } else { Ok(self.verify_own(token)) }
    }

    /// The token's claims if it is active now; `None` for expired, revoked,
    /// unknown, malformed or foreign tokens alike. Opaque secrets answer
    /// with the claims a JWT would carry.
    pub async fn introspect(&self, token: &str) -> Result<Option<Arc<AccessClaims>>, Unavailable> {
        let result = self.introspect_uncounted(token).await;
        if let Ok(found) = &result {
            self.stats.introspected(found.is_some());
        }
        result
    }

    async fn introspect_uncounted(&self, token: &str) -> Result<Option<Arc<AccessClaims>>, Unavailable> {
        let now = self.clock.now();
        let Some(claims) = self.claims_of(token).await? else {
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
    /// gets 200, as the RFC requires). The credential is found by the
    /// verified token's `jti`, not by a hash of its text, so every valid
    /// encoding of its signature revokes the one credential.
    pub async fn revoke_by_holder(&self, token: &str, meta: &RequestMeta) -> Result<(), Unavailable> {
        let now = self.clock.now();
        let Some(claims) = self.claims_of(token).await? else {
            return Ok(());
        };
        let event = revocation_event(&claims, "revoked by its holder (RFC 7009)", now, meta);
        let revoked =
            self.log.revoke_credential(&claims.jti, "revoked by its holder", event).await.map_err(Unavailable)?;
        self.stats.revoked(super::stats::RevocationKind::Holder);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(jti: &str, exp: i64) -> Arc<AccessClaims> {
        Arc::new(AccessClaims {
            iss: "https://halflife.example".into(),
            sub: "spiffe://example/ns/ai/sa/agent".into(),
            aud: "reports-api".into(),
            exp,
            iat: exp - 300,
            nbf: exp - 300,
            jti: jti.into(),
            scope: "reports:read".into(),
            client_id: "spiffe://example/ns/ai/sa/agent".into(),
            system: "summarizer".into(),
            cnf: None,
        })
    }

    #[test]
    fn a_full_cache_forgets_expired_tokens_first_and_stays_bounded() {
        let cache = VerifiedTokens::default();
        let kid: Arc<str> = Arc::from("k1");
        let key = |i: usize| sha256(i.to_string().as_bytes());
        // Half of them expire at 100, half at 1000.
        for i in 0..MAX_VERIFIED {
            let exp = if i % 2 == 0 { 100 } else { 1_000 };
            cache.insert(key(i), Arc::clone(&kid), claims(&i.to_string(), exp), 50);
        }
        assert!(cache.get(&key(0)).is_some());
        cache.insert(key(MAX_VERIFIED), Arc::clone(&kid), claims("new", 1_000), 500);
        assert!(cache.get(&key(0)).is_none(), "expired entries are forgotten when full");
        assert!(cache.get(&key(1)).is_some(), "live entries stay");
        assert!(cache.get(&key(MAX_VERIFIED)).is_some());
        assert_eq!(cache.entries.lock().unwrap().len(), MAX_VERIFIED / 2 + 1);

        // Full of live tokens: everything goes rather than growing.
        for i in 0..MAX_VERIFIED {
            cache.insert(key(i + 2 * MAX_VERIFIED), Arc::clone(&kid), claims("live", 1_000), 500);
        }
        assert!(cache.entries.lock().unwrap().len() <= MAX_VERIFIED);
    }
}
