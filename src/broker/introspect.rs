//! RFC 7662 introspection, RFC 7009 revocation, and the holder's own status
//! query (`POST /oauth2/token-status`) of issued tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use jsonwebtoken::Validation;
use time::OffsetDateTime;

use super::{Broker, Unavailable};
use crate::attest::dpop::{self, DpopError};
use crate::attest::jwt::MAX_TOKEN_BYTES;
use crate::attest::x509::PeerCertificates;
use crate::crypto::{self, sha256};
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
    pub(super) fn verify_own(&self, token: &str) -> Option<Arc<AccessClaims>> {
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

    /// The workload (`client_id`: `sub`, or the actor of a delegated
    /// token) of a token this broker issued, whatever its state; `None` for
    /// anything else.
    pub async fn workload_of(&self, token: &str) -> Result<Option<String>, Unavailable> {
        Ok(self.claims_of(token).await?.map(|c| c.client_id.clone()))
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
            aud: crate::mint::jwt::Audiences::from_joined(&stored.audience),
            exp: stored.exp,
            iat: stored.iat,
            nbf: stored.iat,
            jti: stored.jti,
            scope: stored.scopes,
            client_id: stored.subject,
            system: stored.system_id,
            cnf: None,
            act: None,
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

    pub(super) async fn introspect_uncounted(&self, token: &str) -> Result<Option<Arc<AccessClaims>>, Unavailable> {
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

/// Most DPoP proofs [`SeenProofs`] remembers: a proof is kept for the
/// proof window (`tokens.dpop_proof_window`), so this bounds the rate of
/// DPoP-bound status queries one replica takes at about this many per
/// window; about 150 bytes each.
const MAX_SEEN_PROOFS: usize = 65_536;

/// Proofs already presented to `POST /oauth2/token-status`, by key
/// thumbprint and `jti`, each until its `iat` leaves the proof window: a
/// proof captured in transit cannot be replayed to this replica. (The
/// answer is one bit about a token the replayer would already hold, so
/// unlike the token endpoint's proofs these are not written to the shared
/// database.)
#[derive(Default)]
pub struct SeenProofs {
    entries: Mutex<HashMap<String, i64>>,
}

impl SeenProofs {
    /// Records a proof; false if it was seen before (a replay), or if the
    /// table is full of proofs still in their window (refused rather than
    /// forgotten: forgetting would let a replay through).
    fn first_use(&self, key: String, keep_until: i64, now: i64) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.get(&key).is_some_and(|until| *until >= now) {
            return false;
        }
        if entries.len() >= MAX_SEEN_PROOFS {
            entries.retain(|_, until| *until >= now);
            if entries.len() >= MAX_SEEN_PROOFS {
                return false;
            }
        }
        entries.insert(key, keep_until);
        true
    }
}

/// What a status query presented besides the token itself.
pub struct Presented<'a> {
    /// The request's `DPoP` header, if any.
    pub dpop: Option<&'a str>,
    /// The URL the query was sent to: what a proof's `htu` must name.
    pub endpoint: &'a url::Url,
    /// The client certificates of a query over the mTLS listener.
    pub peer: Option<&'a PeerCertificates>,
}

/// Why a status query is refused. Each is safe to show the caller.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// A DPoP-bound token without a valid proof of its key.
    #[error("{0}")]
    Dpop(String),
    /// A certificate-bound token asked about without its certificate.
    #[error("this token is bound to a client certificate (cnf.x5t#S256): ask over the mTLS listener presenting it")]
    Certificate,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl Broker {
    /// `POST /oauth2/token-status`: whether a token is active, asked by its
    /// holder. The token authenticates the query, as it does its own
    /// revocation (RFC 7009); a sender-constrained token must also prove
    /// possession as it would to a resource server: a DPoP-bound token with
    /// a fresh proof of its key for this endpoint, carrying `ath` (RFC 9449
    /// §7), and a certificate-bound one over mTLS with its certificate
    /// (RFC 8705 §3). The binding is checked before the state, so a thief
    /// holding only the token learns nothing, active or not. Unknown,
    /// malformed and foreign tokens are simply inactive.
    pub async fn token_status(&self, token: &str, presented: Presented<'_>) -> Result<bool, StatusError> {
        // An opaque secret is never sender-constrained: no binding to check.
        if !token.starts_with(secret::PREFIX)
            && let Some(claims) = self.verify_own(token)
            && let Some(cnf) = &claims.cnf
        {
            let now = self.clock.now();
            if let Some(jkt) = &cnf.jkt {
                self.check_dpop_holder(token, jkt, &presented, now)?;
            }
            if let Some(x5t) = &cnf.x5t_s256 {
                let leaf = presented.peer.and_then(|p| p.0.first());
                if leaf.is_none_or(|leaf| crypto::b64url(sha256(leaf)) != *x5t) {
                    return Err(StatusError::Certificate);
                }
            }
        }
        Ok(self.introspect_uncounted(token).await?.is_some())
    }

    /// The request's DPoP proof: valid for this endpoint and now, made with
    /// the key the token is bound to, for this token (`ath`), used once.
    fn check_dpop_holder(
        &self,
        token: &str,
        jkt: &str,
        presented: &Presented<'_>,
        now: OffsetDateTime,
    ) -> Result<(), StatusError> {
        let refuse = |e: DpopError| StatusError::Dpop(e.to_string());
        let proof = presented.dpop.ok_or_else(|| {
            StatusError::Dpop("this token is DPoP-bound: send a DPoP proof of its key (RFC 9449 §7)".into())
        })?;
        let verified = dpop::verify_proof(proof, "POST", presented.endpoint, now, self.dpop_window).map_err(refuse)?;
        if verified.jkt != jkt {
            return Err(StatusError::Dpop(
                "DPoP proof is signed by a key other than the one the token is bound to".into(),
            ));
        }
        // The signature is verified: read the one claim verify_proof does not.
        let ath = proof
            .split('.')
            .nth(1)
            .and_then(crypto::b64url_decode)
            .and_then(|claims| serde_json::from_slice::<serde_json::Value>(&claims).ok())
            .and_then(|claims| claims.get("ath").and_then(serde_json::Value::as_str).map(str::to_owned));
        if ath.as_deref() != Some(crypto::b64url(sha256(token.as_bytes())).as_str()) {
            return Err(StatusError::Dpop(
                "DPoP proof ath must be the base64url SHA-256 of this token (RFC 9449 §4.2)".into(),
            ));
        }
        let window = i64::try_from(self.dpop_window.as_secs()).unwrap_or(i64::MAX);
        if !self.seen_proofs.first_use(
            format!("{jkt}:{}", verified.jti),
            verified.iat.saturating_add(window),
            now.unix_timestamp(),
        ) {
            return Err(StatusError::Dpop(
                "DPoP proof has already been used; sign a fresh proof (new jti) for every request".into(),
            ));
        }
        Ok(())
    }
}

fn revocation_event(claims: &AccessClaims, reason: &str, now: OffsetDateTime, meta: &RequestMeta) -> AuditEvent {
    let mut event = AuditEvent::new("credential.revoked", Outcome::Success, now, meta);
    event.reason = Some(reason.to_owned());
    event.actor = Some(claims.client_id.clone());
    event.system_id = Some(claims.system.clone());
    event.jti = Some(claims.jti.clone());
    event.subject = Some(claims.client_id.clone());
    event.audience = Some(claims.aud.joined());
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
            aud: crate::mint::jwt::Audiences::one("reports-api"),
            exp,
            iat: exp - 300,
            nbf: exp - 300,
            jti: jti.into(),
            scope: "reports:read".into(),
            client_id: "spiffe://example/ns/ai/sa/agent".into(),
            system: "summarizer".into(),
            cnf: None,
            act: None,
        })
    }

    #[test]
    fn a_proof_is_accepted_once_within_its_window_and_the_table_stays_bounded() {
        let seen = SeenProofs::default();
        assert!(seen.first_use("k:1".into(), 160, 100));
        assert!(!seen.first_use("k:1".into(), 160, 150), "a replay within the window");
        assert!(seen.first_use("k:1".into(), 300, 161), "after the window the proof cannot verify anyway");
        for i in 0..MAX_SEEN_PROOFS - 1 {
            assert!(seen.first_use(format!("k:{}", i + 2), 200, 161));
        }
        // Full of live proofs: refused, never forgotten.
        assert!(!seen.first_use("k:new".into(), 400, 170));
        // Once they leave their window they make room.
        assert!(seen.first_use("k:new".into(), 400, 250));
        assert!(seen.entries.lock().unwrap().len() <= MAX_SEEN_PROOFS);
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
