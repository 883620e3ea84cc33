//! DPoP key custody (RFC 9449): a P-256 key generated in memory when the
//! agent starts, never written anywhere, never handed out. The exchange is
//! sent with a proof of it, so the broker binds the token to it
//! (`cnf.jkt`); the application asks the agent for a proof per request
//! and never touches the key.

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;

use crate::crypto;

/// Why a proof could not be made (the operating system's generator
/// failed).
#[derive(Debug, thiserror::Error)]
#[error("the random number generator failed")]
pub struct DpopKeyError;

pub struct DpopKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    /// The protected header, base64url-encoded once: it names the public
    /// key and never changes.
    header: String,
    thumbprint: String,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DpopKey(jkt {})", self.thumbprint)
    }
}

impl DpopKey {
    pub fn generate() -> Result<Self, DpopKeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| DpopKeyError)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| DpopKeyError)?;
        // An uncompressed point: 0x04 ‖ x ‖ y.
        let point = pair.public_key().as_ref();
        let (x, y) =
            (crypto::b64url(point.get(1..33).unwrap_or_default()), crypto::b64url(point.get(33..).unwrap_or_default()));
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
        let header = crypto::b64url(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}).to_string());
        // RFC 7638: the required members in lexical order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        Ok(Self { pair, rng, header, thumbprint: crypto::b64url(crypto::sha256(canonical.as_bytes())) })
    }

    /// The key's RFC 7638 thumbprint: the `cnf.jkt` of tokens bound to it.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A fresh proof for one request `htm htu` made at `iat` (seconds since
    /// the epoch), with `ath` (the base64url SHA-256 of the access token
    /// sent with it) when there is one.
    pub fn proof(&self, htm: &str, htu: &str, access_token: Option<&str>, iat: i64) -> Result<String, DpopKeyError> {
        let jti = crypto::b64url(crypto::random_bytes::<16>().map_err(|_| DpopKeyError)?);
        let mut claims = json!({"jti": jti, "htm": htm, "htu": htu, "iat": iat});
        if let Some(token) = access_token {
            claims["ath"] = json!(crypto::b64url(crypto::sha256(token.as_bytes())));
        }
        let input = format!("{}.{}", self.header, crypto::b64url(claims.to_string()));
        let signature = self.pair.sign(&self.rng, input.as_bytes()).map_err(|_| DpopKeyError)?;
        Ok(format!("{input}.{}", crypto::b64url(signature.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brokers_verifier_accepts_the_proof_and_finds_the_thumbprint() {
        crypto::install();
        let key = DpopKey::generate().unwrap();
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let endpoint = url::Url::parse("https://as.example/oauth2/token").unwrap();
        let proof = key.proof("POST", endpoint.as_str(), Some("the-token"), now.unix_timestamp()).unwrap();
        let verified =
            crate::attest::dpop::verify_proof(&proof, "POST", &endpoint, now, std::time::Duration::from_secs(60))
                .unwrap();
        assert_eq!(verified.jkt, key.thumbprint());
        let claims: serde_json::Value =
            serde_json::from_slice(&crypto::b64url_decode(proof.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(claims["ath"], crypto::b64url(crypto::sha256(b"the-token")));
        // Every proof is new.
        let again = key.proof("POST", endpoint.as_str(), None, now.unix_timestamp()).unwrap();
        let verified_again =
            crate::attest::dpop::verify_proof(&again, "POST", &endpoint, now, std::time::Duration::from_secs(60))
                .unwrap();
        assert_ne!(verified.jti, verified_again.jti);
        // Its debug form shows the public thumbprint alone.
        assert_eq!(format!("{key:?}"), format!("DpopKey(jkt {})", key.thumbprint()));
    }
}
