//! Verification of JWT attestations (Kubernetes service-account tokens,
//! SPIFFE JWT-SVIDs, CI OIDC tokens, the dev issuer's tokens).
//!
//! jsonwebtoken's defaults are lax, so every rule is explicit here: the
//! algorithm must be on the issuer's allow-list (never `none` or HMAC); the
//! `crit`, `jku`, `x5u`, `jwk` and `x5c` headers are refused (the broker never
//! fetches or trusts a key a token points at); `exp`, `iat`, `iss`, `aud` and
//! `sub` are required; `exp`, `nbf` and `iat` are checked against the
//! injected clock with the issuer's leeway.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use jsonwebtoken::errors::ErrorKind;
use serde::Deserialize;
use time::OffsetDateTime;

use super::jwks::{KeySet, RemoteJwks};
use super::verified::{Entry, Verified};
use crate::crypto;
use crate::domain::values::MAX_SUBJECT_LEN;

/// Longest attestation accepted. Platform tokens are 1–2 KB; anything near
/// this is hostile.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
const MAX_JTI_LEN: usize = 256;
/// Deepest JSON nesting accepted in a header or claims set. Real tokens
/// nest two or three levels; serde skips unknown members without a depth
/// limit, so the bound is checked before parsing.
const MAX_JSON_DEPTH: usize = 16;

/// Whether the arrays and objects in `json` nest at most `max` levels
/// (brackets inside strings do not count). Malformed JSON is left to the
/// parser.
fn nesting_at_most(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// How a token is named when its `jti` is not used: `sha256:` and the hex
/// SHA-256 of its JWS signing input (`header.payload`), or of the whole text
/// when it is not a compact JWS.
///
/// Never of the signature: one signed content can carry more than one valid
/// signature. An ECDSA signature `(r, s)` verifies as `(r, n - s)` too (ring,
/// like most verifiers, accepts both), so a hash of the whole token would
/// give a single-use ES256 attestation without `jti` (a common SPIRE
/// JWT-SVID) a second name, and a second credential. The signing input is
/// what the issuer vouched for: one attestation, one name, whatever the
/// signature's encoding.
pub fn fingerprint(token: &str) -> String {
    let signed = match token.rsplit_once('.') {
        Some((input, _)) if input.bytes().filter(|&b| b == b'.').count() == 1 => input,
        _ => token,
    };
    format!("sha256:{}", crypto::hex(&crypto::sha256(signed.as_bytes())))
}

/// Where an issuer's keys come from.
pub enum IssuerKeys {
    Static(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
}

/// A trusted attestation issuer, ready to verify.
pub struct TrustedIssuer {
    /// The name grants refer to.
    pub name: String,
    /// The exact `iss`.
    pub iss: String,
    pub algorithms: Vec<Algorithm>,
    pub audience: String,
    pub leeway: Duration,
    pub max_token_age: Duration,
    pub single_use: bool,
    /// `aud` must name exactly one audience.
    pub single_audience: bool,
    pub keys: IssuerKeys,
}

/// A verified attestation: who the workload is, and which token proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    pub issuer_name: String,
    pub iss: String,
    pub subject: String,
    /// The token's `jti`, or its [`fingerprint`] when it has none. Single-use
    /// records are keyed on it together with the issuer, and the audit trail
    /// names the attestation by it. Never the token itself.
    pub token_id: String,
    pub expires_at: OffsetDateTime,
    pub single_use: bool,
    /// Until when a single-use record must be kept: expiry plus leeway, so
    /// a token can never verify again once its record is gone.
    pub replay_until: OffsetDateTime,
}

/// Why an attestation was refused. Callers see one generic message for all
/// of these (no oracle for forgers); the precise reason goes to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("token header {0:?} is not accepted")]
    ForbiddenHeader(&'static str),
    #[error("issuer {0:?} is not trusted")]
    UnknownIssuer(String),
    #[error("algorithm {0:?} is not allowed for issuer {1}")]
    AlgorithmNotAllowed(String, String),
    #[error("no key of issuer {issuer} matches {}", kid_text(.kid.as_deref()))]
    UnknownKey { issuer: String, kid: Option<String> },
    #[error("keys of issuer {0} are unavailable (never fetched or too stale)")]
    KeysUnavailable(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("audience does not include {0:?}")]
    WrongAudience(String),
    #[error("required claim {0:?} is missing")]
    MissingClaim(String),
    #[error("claims are invalid: {0}")]
    BadClaims(String),
    #[error("token expired at {}", time_text(*.0))]
    Expired(i64),
    #[error("token is not valid before {}", time_text(*.0))]
    NotYetValid(i64),
    #[error("token issued in the future ({})", time_text(*.0))]
    IssuedInFuture(i64),
    #[error("token lifetime {0}s exceeds the issuer's max_token_age of {1}s")]
    TooLong(i64, u64),
}

/// A `kid` as people read it in a record.
fn kid_text(kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!("kid \"{}\"", crate::domain::identity::visible(kid)),
        None => "a token without kid".to_owned(),
    }
}

/// A unix time as RFC 3339 (the number itself when out of range).
fn time_text(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs).map_or_else(|_| secs.to_string(), crate::domain::rfc3339)
}

#[derive(Deserialize)]
struct Peek {
    iss: Option<String>,
}

/// The claims read from a verified token. Integer types make a string,
/// fractional, negative-overflowing or out-of-range time claim a parse error.
struct Claims {
    sub: String,
    exp: i64,
    iat: i64,
    nbf: Option<i64>,
    jti: Option<String>,
    /// How many audiences `aud` names (it includes the issuer's).
    audiences: usize,
}

/// All trusted issuers, by exact `iss`.
#[derive(Default)]
pub struct Verifier {
    issuers: HashMap<String, Arc<TrustedIssuer>>,
    /// Attestations verified recently, by the SHA-256 of the whole token: a
    /// platform token is presented again and again until it is rotated (a
    /// Kubernetes service-account token for most of an hour, by every
    /// renewal of every credential), and its signature is most of an
    /// exchange's cost. An entry answers only while the token's times still
    /// hold and while the issuer's key set is the very one it was verified
    /// with: a key rotation, a refetch or keys going stale sends the token
    /// through full verification again. Single-use tokens are still refused
    /// on reuse, when the issuance commits.
    verified: Verified<Signer>,
}

impl Verifier {
    pub fn new(issuers: Vec<TrustedIssuer>) -> Self {
        Self {
            issuers: issuers.into_iter().map(|i| (i.iss.clone(), Arc::new(i))).collect(),
            verified: Verified::default(),
        }
    }

    pub fn issuers(&self) -> impl Iterator<Item = &Arc<TrustedIssuer>> {
        self.issuers.values()
    }

    /// Verifies a workload's attestation.
    pub async fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Attestation, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::TooLarge);
        }
        let digest = crypto::sha256(token.as_bytes());
        if let Some(attestation) = self.verified.get(&digest, now, Signer::is_current) {
            return Ok(attestation);
        }
        let (attestation, _, proof) = self.verify_checked(token, now, Use::Attestation).await?;
        let entry = Entry {
            attestation: attestation.clone(),
            basis: proof.signer,
            valid_from: proof.valid_from,
            valid_until: proof.valid_until,
        };
        self.verified.put(digest, entry, now);
        Ok(attestation)
    }

    /// Verifies the subject token of a delegation (RFC 8693 §2.1): checked
    /// exactly as an attestation, except that a trusted issuer's access
    /// token (`typ` `at+jwt`) is accepted too, since a person's access token
    /// names the person as well as an ID token does (its `aud` must still
    /// name halflife). Returns its claims as well, for the grant's claim
    /// matches and `may_act`.
    pub async fn verify_subject(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<(Attestation, serde_json::Map<String, serde_json::Value>), Rejection> {
        let (attestation, claims) = self.verify_as(token, now, Use::Subject).await?;
        Ok((attestation, claims.unwrap_or_default()))
    }

    /// Verifies a person's OpenID Connect ID token (sign-in): checked
    /// exactly as an attestation (an access token is refused), and returned
    /// with its claims for the groups and email they carry.
    pub async fn verify_id_token(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<(Attestation, serde_json::Map<String, serde_json::Value>), Rejection> {
        let (attestation, claims) = self.verify_as(token, now, Use::IdToken).await?;
        Ok((attestation, claims.unwrap_or_default()))
    }

    async fn verify_as(
        &self,
        token: &str,
        now: OffsetDateTime,
        usage: Use,
    ) -> Result<(Attestation, Option<serde_json::Map<String, serde_json::Value>>), Rejection> {
        self.verify_checked(token, now, usage).await.map(|(attestation, claims, _)| (attestation, claims))
    }

    /// Verifies `token` for `usage`; also returns what the verification
    /// rested on, to remember it by.
    async fn verify_checked(
        &self,
        token: &str,
        now: OffsetDateTime,
        usage: Use,
    ) -> Result<(Attestation, Option<serde_json::Map<String, serde_json::Value>>, Proof), Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::Malformed("a JWS in compact form has exactly three parts"));
        };
        if !token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return Err(Rejection::Malformed("characters outside base64url"));
        }
        let header_json = crypto::b64url_decode(header_b64).ok_or(Rejection::Malformed("header encoding"))?;
        if !nesting_at_most(&header_json, MAX_JSON_DEPTH) {
            return Err(Rejection::Malformed("header nested too deeply"));
        }
        let header = read_header(&header_json, usage)?;

        let payload = crypto::b64url_decode(payload_b64).ok_or(Rejection::Malformed("payload encoding"))?;
        if !nesting_at_most(&payload, MAX_JSON_DEPTH) {
            return Err(Rejection::Malformed("claims nested too deeply"));
        }
        let peek: Peek =
            serde_json::from_slice(&payload).map_err(|_| Rejection::Malformed("payload is not a JSON object"))?;
        let iss = peek.iss.ok_or_else(|| Rejection::MissingClaim("iss".into()))?;
        let issuer = self
            .issuers
            .get(&iss)
            .ok_or_else(|| Rejection::UnknownIssuer(crate::domain::values::truncate(&iss, 80)))?;

        let alg = match header.alg {
            Some(alg) if issuer.algorithms.contains(&alg) => alg,
            _ => return Err(Rejection::AlgorithmNotAllowed(header.alg_text, issuer.name.clone())),
        };

        let kid = header.kid.as_deref();
        let keys = issuer.key_set(kid, alg).await?;
        verify_signature(&keys, token, kid, alg)?;
        let claims = read_claims(issuer, &payload)?;
        check_times(issuer, &claims, now)?;
        if issuer.single_audience && claims.audiences != 1 {
            return Err(Rejection::BadClaims(format!(
                "aud names {} audiences; issuer {} requires exactly one",
                claims.audiences, issuer.name
            )));
        }

        if claims.sub.is_empty() || claims.sub.len() > MAX_SUBJECT_LEN || claims.sub.chars().any(char::is_control) {
            return Err(Rejection::BadClaims("sub must be 1-2048 printable characters".into()));
        }
        let token_id = match claims.jti {
            Some(jti) if !jti.is_empty() && jti.len() <= MAX_JTI_LEN => jti,
            Some(_) => return Err(Rejection::BadClaims("jti must be 1-256 characters".into())),
            None => fingerprint(token),
        };
        let out_of_range = || Rejection::BadClaims("exp out of range".into());
        let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp).map_err(|_| out_of_range())?;
        let leeway = time::Duration::try_from(issuer.leeway).map_err(|_| out_of_range())?;
        let replay_until = expires_at.checked_add(leeway).ok_or_else(out_of_range)?;
        let all_claims = match usage {
            Use::Attestation => None,
            Use::Subject | Use::IdToken => {
                Some(serde_json::from_slice(&payload).map_err(|e| Rejection::BadClaims(e.to_string()))?)
            }
        };
        let leeway_secs = i64::try_from(issuer.leeway.as_secs()).unwrap_or(i64::MAX);
        let proof = Proof {
            signer: Signer { keys, issuer: Arc::clone(issuer) },
            valid_from: claims.nbf.unwrap_or(claims.iat).max(claims.iat).saturating_sub(leeway_secs),
            valid_until: claims.exp.saturating_add(leeway_secs),
        };
        let attestation = Attestation {
            issuer_name: issuer.name.clone(),
            iss: issuer.iss.clone(),
            subject: claims.sub,
            token_id,
            expires_at,
            single_use: issuer.single_use,
            replay_until,
        };
        Ok((attestation, all_claims, proof))
    }
}

/// What a verification rested on: the key set and its issuer, and the
/// times (unix seconds) within which the token's `nbf`, `iat` and `exp`
/// hold.
struct Proof {
    signer: Signer,
    valid_from: i64,
    valid_until: i64,
}

/// The key set a signature was checked against, and its issuer.
struct Signer {
    keys: Arc<KeySet>,
    issuer: Arc<TrustedIssuer>,
}

impl Signer {
    /// Whether the issuer's key set is still this very one.
    fn is_current(&self) -> bool {
        self.issuer.current_keys().is_some_and(|keys| Arc::ptr_eq(&keys, &self.keys))
    }
}

impl TrustedIssuer {
    /// The key set as it is now, without fetching; `None` when a remote
    /// set was never fetched or has gone stale.
    fn current_keys(&self) -> Option<Arc<KeySet>> {
        match &self.keys {
            IssuerKeys::Static(set) => Some(Arc::clone(set)),
            IssuerKeys::Remote(remote) => remote.current(),
        }
    }

    /// The key set to verify with, refetching once (per cooldown) when a
    /// remote issuer's set has no key for this token.
    async fn key_set(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<KeySet>, Rejection> {
        let unknown = || Rejection::UnknownKey {
            issuer: self.name.clone(),
            kid: kid.map(|k| crate::domain::values::truncate(k, 64)),
        };
        match &self.keys {
            IssuerKeys::Static(set) => {
                if set.candidates(kid, alg).next().is_none() {
                    return Err(unknown());
                }
                Ok(Arc::clone(set))
            }
            IssuerKeys::Remote(remote) => {
                if let Some(set) = remote.current()
                    && set.candidates(kid, alg).next().is_some()
                {
                    return Ok(set);
                }
                remote.refresh_for_unknown_kid().await;
                match remote.current() {
                    Some(set) if set.candidates(kid, alg).next().is_some() => Ok(set),
                    Some(_) => Err(unknown()),
                    None => Err(Rejection::KeysUnavailable(self.name.clone())),
                }
            }
        }
    }
}

/// What a token is verified for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// A workload proves who it is.
    Attestation,
    /// A delegation's subject: on whose behalf a workload asks.
    Subject,
    /// A person's OpenID Connect ID token, presented to sign in.
    IdToken,
}

/// A header member whose presence alone matters (even as `null`).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Self(true))
    }
}

/// The protected header, as the broker reads it. A member named twice is
/// refused (serde refuses a repeated field).
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    cty: Option<String>,
    #[serde(default)]
    crit: Present,
    #[serde(default)]
    jku: Present,
    #[serde(default)]
    x5u: Present,
    #[serde(default)]
    jwk: Present,
    #[serde(default)]
    x5c: Present,
    #[serde(default)]
    enc: Present,
    #[serde(default)]
    zip: Present,
}

/// What the verifier takes from a header: the algorithm (`None` for a name
/// it does not know, such as `none`), its text for messages, and the `kid`.
struct Header {
    alg: Option<Algorithm>,
    alg_text: String,
    kid: Option<String>,
}

/// Reads and checks the header: every header that points at a key (the
/// broker never fetches or trusts a key a token names) and nested tokens
/// are refused, and access tokens are refused as attestations. Ed25519 is
/// accepted under its RFC 8037 name `EdDSA` and its fully specified RFC 9864
/// name `Ed25519`.
fn read_header(json: &[u8], usage: Use) -> Result<Header, Rejection> {
    let raw: RawHeader = serde_json::from_slice(json).map_err(|_| Rejection::Malformed("header"))?;
    for (name, present) in [
        ("crit", raw.crit.0),
        ("jku", raw.jku.0),
        ("x5u", raw.x5u.0),
        ("jwk", raw.jwk.0),
        ("x5c", raw.x5c.0),
        ("enc", raw.enc.0),
        ("zip", raw.zip.0),
    ] {
        if present {
            return Err(Rejection::ForbiddenHeader(name));
        }
    }
    if raw.cty.as_deref().is_some_and(|c| c.eq_ignore_ascii_case("jwt")) {
        return Err(Rejection::ForbiddenHeader("cty"));
    }
    // An access token is not an identity proof (RFC 8725 §3.11): a token
    // some IdP issued for another resource must not be replayed here.
    if usage != Use::Subject
        && raw.typ.as_deref().is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            t == "at+jwt" || t == "application/at+jwt"
        })
    {
        return Err(Rejection::ForbiddenHeader("typ"));
    }
    let alg = match raw.alg.as_str() {
        "Ed25519" => Some(Algorithm::EdDSA),
        // `none` and anything unknown: no algorithm at all.
        other => serde_json::from_value::<Algorithm>(serde_json::Value::String(other.to_owned())).ok(),
    };
    if alg.is_none() {
        return Err(Rejection::Malformed("header"));
    }
    Ok(Header { alg, alg_text: crate::domain::values::truncate(&raw.alg, 32), kid: raw.kid })
}

/// Checks the signature with each of the issuer's keys that may have made
/// it (by `kid` and algorithm), through the ring-backed provider.
fn verify_signature(keys: &KeySet, token: &str, kid: Option<&str>, alg: Algorithm) -> Result<(), Rejection> {
    let (signing_input, signature) = token.rsplit_once('.').ok_or(Rejection::Malformed("signature"))?;
    for key in keys.candidates(kid, alg) {
        match jsonwebtoken::crypto::verify(signature, signing_input.as_bytes(), key, alg) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            // A key unfit for the algorithm: try the next.
            Err(e) if !matches!(e.kind(), ErrorKind::Base64(_)) => {}
            Err(_) => return Err(Rejection::Malformed("encoding")),
        }
    }
    Err(Rejection::BadSignature)
}

/// `aud`: one string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audiences {
    One(String),
    Many(Vec<String>),
}

impl Audiences {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(a) => a == audience,
            Self::Many(all) => all.iter().any(|a| a == audience),
        }
    }

    fn count(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(all) => all.len(),
        }
    }
}

/// The claims as sent: every member optional, so a missing one is named
/// (a mistyped or repeated one is a parse error).
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audiences>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
}

/// Reads the verified claims: `exp`, `iat`, `iss`, `aud` and `sub` are
/// required, `iss` must be the issuer's and `aud` must include the issuer's
/// audience. Times are checked by [`check_times`].
fn read_claims(issuer: &TrustedIssuer, payload: &[u8]) -> Result<Claims, Rejection> {
    let raw: RawClaims = serde_json::from_slice(payload).map_err(|e| Rejection::BadClaims(e.to_string()))?;
    let missing = |name: &str| Rejection::MissingClaim(name.to_owned());
    let exp = raw.exp.ok_or_else(|| missing("exp"))?;
    let iat = raw.iat.ok_or_else(|| missing("iat"))?;
    let iss = raw.iss.ok_or_else(|| missing("iss"))?;
    let aud = raw.aud.ok_or_else(|| missing("aud"))?;
    let sub = raw.sub.ok_or_else(|| missing("sub"))?;
    if iss != issuer.iss {
        return Err(Rejection::UnknownIssuer(crate::domain::values::truncate(&iss, 80)));
    }
    if !aud.contains(&issuer.audience) {
        return Err(Rejection::WrongAudience(issuer.audience.clone()));
    }
    Ok(Claims { sub, exp, iat, nbf: raw.nbf, jti: raw.jti, audiences: aud.count() })
}

fn check_times(issuer: &TrustedIssuer, claims: &Claims, now: OffsetDateTime) -> Result<(), Rejection> {
    let now = now.unix_timestamp();
    let leeway = i64::try_from(issuer.leeway.as_secs()).unwrap_or(i64::MAX);
    if claims.exp.saturating_add(leeway) <= now {
        return Err(Rejection::Expired(claims.exp));
    }
    if let Some(nbf) = claims.nbf
        && nbf > now.saturating_add(leeway)
    {
        return Err(Rejection::NotYetValid(nbf));
    }
    if claims.iat > now.saturating_add(leeway) {
        return Err(Rejection::IssuedInFuture(claims.iat));
    }
    if claims.exp <= claims.iat {
        return Err(Rejection::BadClaims("exp is not after iat".into()));
    }
    let lifetime = claims.exp.saturating_sub(claims.iat);
    let max = issuer.max_token_age.as_secs();
    if u64::try_from(lifetime).unwrap_or(u64::MAX) > max {
        return Err(Rejection::TooLong(lifetime, max));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{fingerprint, nesting_at_most};
    use crate::crypto;

    #[test]
    fn a_fingerprint_names_the_signing_input_not_the_signature() {
        let hash = |text: &str| format!("sha256:{}", crypto::hex(&crypto::sha256(text.as_bytes())));
        assert_eq!(fingerprint("aGVhZA.Ym9keQ.c2lnLTE"), hash("aGVhZA.Ym9keQ"));
        assert_eq!(fingerprint("aGVhZA.Ym9keQ.c2lnLTE"), fingerprint("aGVhZA.Ym9keQ.b3RoZXI"));
        assert_ne!(fingerprint("aGVhZA.Ym9keQ.c2ln"), fingerprint("aGVhZA.b3RoZXI.c2ln"));
        // Not a compact JWS: the whole text.
        for text in ["", "junk", "a.b", "a.b.c.d.e", "a.b.c."] {
            assert_eq!(fingerprint(text), hash(text), "{text:?}");
        }
    }

    #[test]
    fn reasons_read_as_words_for_people() {
        use super::Rejection;
        let unknown = |kid: Option<&str>| Rejection::UnknownKey { issuer: "k8s".into(), kid: kid.map(str::to_owned) };
        assert_eq!(unknown(Some("k1796")).to_string(), "no key of issuer k8s matches kid \"k1796\"");
        assert_eq!(unknown(None).to_string(), "no key of issuer k8s matches a token without kid");
        assert_eq!(Rejection::Expired(1_800_000_000).to_string(), "token expired at 2027-01-15T08:00:00Z");
    }

    #[test]
    fn nesting_counts_brackets_outside_strings_only() {
        assert!(nesting_at_most(br#"{"aud":["a"],"cnf":{"jkt":"x"}}"#, 2));
        assert!(!nesting_at_most(br#"{"a":[[1]]}"#, 2));
        assert!(nesting_at_most(br#"{"a":"[[[[{{{{\"]]]"}"#, 1));
        assert!(!nesting_at_most(br#"{"a":"\\","b":[[]]}"#, 2));
        assert!(nesting_at_most(&[b'['; 16].iter().chain([b']'; 16].iter()).copied().collect::<Vec<_>>(), 16));
        assert!(!nesting_at_most(&[b'['; 17], 16));
    }
}
