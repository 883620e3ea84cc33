//! DPoP proofs at the token endpoint (RFC 9449 §4.3).
//!
//! A proof is a JWS whose header carries `typ: dpop+jwt`, an allowed
//! asymmetric `alg` and the client's public key as `jwk`; its claims name the
//! request (`htm`, `htu`), when it was made (`iat`) and a unique `jti`. The
//! issued token is bound to the key's RFC 7638 thumbprint (`cnf.jkt`).
//! Replay of a `jti` is refused by the store, atomically with the issuance,
//! so a proof works once across every replica and restart. The replay key
//! is the key's thumbprint and the `jti`, both signed content, never a hash
//! of the proof's text: ECDSA's second valid signature `(r, n - s)` does not
//! make a used proof new.

use std::time::Duration;

use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey, VerificationAlgorithm};
use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use url::Url;

use crate::crypto;

/// Algorithms accepted on proofs (advertised in the AS metadata): ES256,
/// and Ed25519 under both its names, `EdDSA` (RFC 8037) and the fully
/// specified `Ed25519` (RFC 9864) that current clients send.
pub const DPOP_ALGORITHMS: &[&str] = &["ES256", "EdDSA", "Ed25519"];
/// Longest proof accepted.
pub const MAX_PROOF_BYTES: usize = 4 * 1024;
const MAX_JTI_LEN: usize = 256;

/// A verified proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopProof {
    /// base64url SHA-256 JWK thumbprint of the proof key (RFC 7638).
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
}

/// Why a proof was refused. Every variant is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("DPoP proof is malformed: {0}")]
    Malformed(&'static str),
    #[error("DPoP proof is larger than {MAX_PROOF_BYTES} bytes")]
    TooLarge,
    #[error("DPoP proof typ must be \"dpop+jwt\"")]
    Type,
    #[error("DPoP proof alg must be one of ES256, EdDSA, Ed25519")]
    Algorithm,
    #[error("DPoP proof jwk is missing, private, or does not match alg: {0}")]
    Key(&'static str),
    #[error("DPoP proof header {0:?} is not accepted")]
    ForbiddenHeader(String),
    #[error("DPoP proof signature does not verify")]
    Signature,
    #[error("DPoP proof claims are invalid: {0}")]
    Claims(String),
    #[error("DPoP proof htm {0:?} does not match the request method")]
    Method(String),
    #[error("DPoP proof htu does not match this endpoint ({0})")]
    Uri(String),
    #[error("DPoP proof iat is outside the accepted window of {0} seconds")]
    Stale(u64),
}

#[derive(Deserialize)]
struct Claims {
    jti: String,
    htm: String,
    htu: String,
    iat: i64,
}

/// Verifies a proof for a request with method `htm` to `endpoint`, made at
/// `now`; `iat` may differ from `now` by at most `window`.
pub fn verify_proof(
    proof: &str,
    htm: &str,
    endpoint: &Url,
    now: OffsetDateTime,
    window: Duration,
) -> Result<DpopProof, DpopError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(DpopError::TooLarge);
    }
    let mut parts = proof.split('.');
    let (Some(header_b64), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(DpopError::Malformed("a JWS in compact form has exactly three parts"));
    };
    let header_bytes = crypto::b64url_decode(header_b64).ok_or(DpopError::Malformed("header encoding"))?;
    let header: Map<String, Value> =
        serde_json::from_slice(&header_bytes).map_err(|_| DpopError::Malformed("header is not a JSON object"))?;
    for name in header.keys() {
        if !matches!(name.as_str(), "typ" | "alg" | "jwk" | "kid") {
            return Err(DpopError::ForbiddenHeader(crate::domain::values::truncate(name, 32)));
        }
    }
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(DpopError::Type);
    }
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("ES256") => ProofAlg::Es256,
        Some("EdDSA" | "Ed25519") => ProofAlg::Ed25519,
        _ => return Err(DpopError::Algorithm),
    };
    let jwk = header.get("jwk").and_then(Value::as_object).ok_or(DpopError::Key("no jwk header"))?;
    let (key, jkt) = public_key(jwk, alg)?;

    // The signature, checked with ring over the signing input as sent.
    let (signing_input, signature) = proof.rsplit_once('.').ok_or(DpopError::Malformed("no signature"))?;
    let signature = crypto::b64url_decode(signature).ok_or(DpopError::Malformed("signature encoding"))?;
    let verifier: &dyn VerificationAlgorithm = match alg {
        ProofAlg::Es256 => &ECDSA_P256_SHA256_FIXED,
        ProofAlg::Ed25519 => &ED25519,
    };
    UnparsedPublicKey::new(verifier, &key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| DpopError::Signature)?;
    let payload = signing_input.split_once('.').map(|(_, payload)| payload).ok_or(DpopError::Malformed("payload"))?;
    let payload = crypto::b64url_decode(payload).ok_or(DpopError::Malformed("payload encoding"))?;
    let claims: Claims = serde_json::from_slice(&payload)
        .map_err(|e| DpopError::Claims(crate::domain::values::truncate(&e.to_string(), 120)))?;
    if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_LEN {
        return Err(DpopError::Claims("jti must be 1-256 characters".into()));
    }
    if claims.htm != htm {
        return Err(DpopError::Method(crate::domain::values::truncate(&claims.htm, 16)));
    }
    if !same_endpoint(&claims.htu, endpoint) {
        return Err(DpopError::Uri(endpoint.to_string()));
    }
    let window_secs = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    if claims.iat.saturating_sub(now.unix_timestamp()).abs() > window_secs {
        return Err(DpopError::Stale(window.as_secs()));
    }
    Ok(DpopProof { jkt, jti: claims.jti, iat: claims.iat })
}

/// RFC 9449 §4.3: `htu` is compared without its query and fragment, after
/// URI normalization (scheme and host case, default port).
fn same_endpoint(htu: &str, endpoint: &Url) -> bool {
    let Ok(htu) = Url::parse(htu) else { return false };
    htu.scheme() == endpoint.scheme()
        && htu.host() == endpoint.host()
        && htu.port_or_known_default() == endpoint.port_or_known_default()
        && htu.path() == endpoint.path()
}

/// The signature algorithms a proof may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProofAlg {
    Es256,
    Ed25519,
}

/// The proof's public key (as ring reads it) and its RFC 7638 thumbprint.
/// Private members make the proof invalid (RFC 9449 §4.2: the header
/// carries the public key only).
fn public_key(jwk: &Map<String, Value>, alg: ProofAlg) -> Result<(Vec<u8>, String), DpopError> {
    if jwk.contains_key("d") {
        return Err(DpopError::Key("the jwk holds a private key"));
    }
    let member = |name: &str, len: usize| -> Result<(&str, Vec<u8>), DpopError> {
        let value = jwk.get(name).and_then(Value::as_str).ok_or(DpopError::Key("a key member is missing"))?;
        match crypto::b64url_decode(value) {
            Some(bytes) if bytes.len() == len => Ok((value, bytes)),
            _ => Err(DpopError::Key("a key member has the wrong encoding or length")),
        }
    };
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    match alg {
        ProofAlg::Es256 => {
            if text("kty") != Some("EC") || text("crv") != Some("P-256") {
                return Err(DpopError::Key("ES256 needs an EC P-256 key"));
            }
            let ((x, xb), (y, yb)) = (member("x", 32)?, member("y", 32)?);
            // The uncompressed point; ring refuses one not on the curve
            // when verifying.
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&xb);
            point.extend_from_slice(&yb);
            let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
            Ok((point, crypto::b64url(crypto::sha256(canonical.as_bytes()))))
        }
        ProofAlg::Ed25519 => {
            if text("kty") != Some("OKP") || text("crv") != Some("Ed25519") {
                return Err(DpopError::Key("EdDSA needs an OKP Ed25519 key"));
            }
            let (x, xb) = member("x", 32)?;
            let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
            Ok((xb, crypto::b64url(crypto::sha256(canonical.as_bytes()))))
        }
    }
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn endpoint() -> Url {
        crypto::install();
        Url::parse("https://as.example/oauth2/token").unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(NOW).unwrap()
    }

    struct Es256(EcdsaKeyPair);

    impl Es256 {
        fn new() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Self(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap())
        }
        fn jwk(&self) -> Value {
            let point = self.0.public_key().as_ref();
            json!({"kty": "EC", "crv": "P-256", "x": crypto::b64url(&point[1..33]), "y": crypto::b64url(&point[33..65])})
        }
        fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                crypto::b64url(header.to_string().as_bytes()),
                crypto::b64url(claims.to_string().as_bytes())
            );
            let sig = self.0.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
            format!("{input}.{}", crypto::b64url(sig.as_ref()))
        }
        fn proof(&self, claims: &Value) -> String {
            self.sign(&json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()}), claims)
        }
    }

    fn claims() -> Value {
        json!({"jti": "p-1", "htm": "POST", "htu": "https://as.example/oauth2/token", "iat": NOW})
    }

    #[test]
    fn a_valid_es256_proof_yields_the_rfc7638_thumbprint() {
        let key = Es256::new();
        let proof = verify_proof(&key.proof(&claims()), "POST", &endpoint(), now(), Duration::from_secs(60)).unwrap();
        let jwk = key.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        assert_eq!(proof.jkt, crypto::b64url(crypto::sha256(canonical.as_bytes())));
        assert_eq!(proof.jti, "p-1");
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1 gives the thumbprint of an RSA key; the same
        // construction for an OKP key is checked against RFC 8037 §A.3.
        crypto::install();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let (_, jkt) = public_key(jwk.as_object().unwrap(), ProofAlg::Ed25519).unwrap();
        assert_eq!(jkt, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    /// Ed25519 under its RFC 8037 name and its fully specified RFC 9864
    /// name, which current clients (openid-client 6) send.
    #[test]
    fn an_ed25519_proof_verifies_under_either_name() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        for alg in ["EdDSA", "Ed25519"] {
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": crypto::b64url(pair.public_key().as_ref())});
            let header = json!({"typ": "dpop+jwt", "alg": alg, "jwk": jwk});
            let input = format!(
                "{}.{}",
                crypto::b64url(header.to_string().as_bytes()),
                crypto::b64url(claims().to_string().as_bytes())
            );
            let proof = format!("{input}.{}", crypto::b64url(pair.sign(input.as_bytes()).as_ref()));
            assert!(verify_proof(&proof, "POST", &endpoint(), now(), Duration::from_secs(60)).is_ok(), "{alg}");
            let forged = format!("{input}.{}", crypto::b64url([7u8; 64]));
            assert_eq!(
                verify_proof(&forged, "POST", &endpoint(), now(), Duration::from_secs(60)),
                Err(DpopError::Signature),
                "{alg}"
            );
        }
    }

    #[test]
    fn refuses_bad_proofs() {
        let key = Es256::new();
        let other = Es256::new();
        let window = Duration::from_secs(60);
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims();
            f(&mut c);
            key.proof(&c)
        };
        let cases: Vec<(String, DpopError)> = vec![
            (with(&|c| c["htm"] = json!("GET")), DpopError::Method("GET".into())),
            (with(&|c| c["htu"] = json!("https://evil.example/oauth2/token")), DpopError::Uri(endpoint().to_string())),
            (with(&|c| c["htu"] = json!("https://as.example/oauth2/other")), DpopError::Uri(endpoint().to_string())),
            (with(&|c| c["iat"] = json!(NOW - 61)), DpopError::Stale(60)),
            (with(&|c| c["iat"] = json!(NOW + 61)), DpopError::Stale(60)),
            (with(&|c| c["jti"] = json!("")), DpopError::Claims("jti must be 1-256 characters".into())),
            (key.sign(&json!({"typ": "JWT", "alg": "ES256", "jwk": key.jwk()}), &claims()), DpopError::Type),
            (key.sign(&json!({"typ": "dpop+jwt", "alg": "ES256"}), &claims()), DpopError::Key("no jwk header")),
            (
                key.sign(&json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": other.jwk()}), &claims()),
                DpopError::Signature,
            ),
            (
                key.sign(&json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk(), "jku": "https://x"}), &claims()),
                DpopError::ForbiddenHeader("jku".into()),
            ),
            (key.sign(&json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk()}), &claims()), DpopError::Algorithm),
            (key.sign(&json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk()}), &claims()), DpopError::Algorithm),
            (
                key.sign(&json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": key.jwk()}), &claims()),
                DpopError::Key("EdDSA needs an OKP Ed25519 key"),
            ),
            ("a.b".into(), DpopError::Malformed("a JWS in compact form has exactly three parts")),
            ("x".repeat(MAX_PROOF_BYTES + 1), DpopError::TooLarge),
        ];
        for (proof, want) in cases {
            assert_eq!(verify_proof(&proof, "POST", &endpoint(), now(), window), Err(want.clone()), "{want}");
        }
        let mut private = key.jwk();
        private["d"] = json!(crypto::b64url([1u8; 32]));
        let proof = key.sign(&json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private}), &claims());
        assert_eq!(
            verify_proof(&proof, "POST", &endpoint(), now(), window),
            Err(DpopError::Key("the jwk holds a private key"))
        );
    }

    #[test]
    fn htu_ignores_query_fragment_and_default_port() {
        let key = Es256::new();
        let mut c = claims();
        c["htu"] = json!("https://AS.example:443/oauth2/token?x=1#f");
        assert!(verify_proof(&key.proof(&c), "POST", &endpoint(), now(), Duration::from_secs(60)).is_ok());
    }
}
