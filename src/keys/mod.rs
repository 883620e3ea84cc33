//! Signing keys: creation, sealed storage, the in-memory keyring, JWKS.
//!
//! Keys are parsed into ring key pairs once at load and kept in memory, so
//! minting costs one signature and no key parsing. Issued tokens are compact
//! JWS produced here directly (a few lines) rather than through
//! jsonwebtoken's `encode`, which re-parses the PKCS#8 document on every call.

pub mod seal;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};
use ring::rand::SystemRandom;
use ring::signature::{self as rsig, KeyPair as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::config::SigningAlgorithm;
use crate::crypto;
pub use seal::{Kek, KekSource};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key storage: {0}")]
    Io(String),
    #[error("key-encryption key: {0}")]
    Kek(String),
    #[error("a sealed key could not be opened: wrong key-encryption key, or the file was altered")]
    Unseal,
    #[error("key file {0} is malformed")]
    Malformed(String),
    #[error("the system random number generator failed")]
    Random,
    #[error("signing failed")]
    Sign,
}

/// DER prefix of a PKCS#8 v1 (RFC 8410) Ed25519 private key; the 32-byte
/// seed follows. ring generates PKCS#8 v2 (with the public key appended),
/// which jsonwebtoken and several other libraries refuse, so keys are stored
/// in v1 form, which everything accepts.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
/// The same fields as they open ring's v2 document.
const ED25519_PKCS8_V2_PREFIX: [u8; 16] =
    [0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// Generates an Ed25519 private key as a PKCS#8 v1 document.
pub fn generate_ed25519_pkcs8_v1() -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let v2 = rsig::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random)?;
    let v2 = Zeroizing::new(v2.as_ref().to_vec());
    match v2.get(..16) {
        Some(prefix) if prefix == ED25519_PKCS8_V2_PREFIX && v2.len() >= 48 => {
            let mut v1 = Zeroizing::new(Vec::with_capacity(48));
            v1.extend_from_slice(&ED25519_PKCS8_V1_PREFIX);
            v1.extend_from_slice(&v2[16..48]);
            Ok(v1)
        }
        _ => Err(KeyError::Malformed("generated Ed25519 key".into())),
    }
}

enum Pair {
    Ed25519(rsig::Ed25519KeyPair),
    Es256(rsig::EcdsaKeyPair),
}

/// One signing key, parsed and ready.
pub struct SigningKey {
    kid: String,
    alg: SigningAlgorithm,
    created_at: OffsetDateTime,
    pair: Pair,
    public_jwk: Value,
    decoding: DecodingKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// A signing key as stored: sealed under the key-encryption key, in the
/// database (shared by every replica) or, for the dev issuer and keys
/// written by earlier versions, in a file.
#[derive(Clone, Serialize, Deserialize)]
pub struct SealedKey {
    pub kid: String,
    pub alg: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// AES-256-GCM(KEK, PKCS#8 DER), nonce first, base64url; the key id
    /// and algorithm are bound in as associated data.
    pub sealed: String,
}

impl std::fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses a PKCS#8 document (v1 for Ed25519).
    pub fn from_pkcs8(alg: SigningAlgorithm, der: &[u8], created_at: OffsetDateTime) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let malformed = || KeyError::Malformed("private key".into());
        let (pair, public_jwk, decoding) = match alg {
            SigningAlgorithm::EdDSA => {
                let pair = rsig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| malformed())?;
                let x = crypto::b64url(pair.public_key().as_ref());
                let decoding = DecodingKey::from_ed_der(pair.public_key().as_ref());
                (Pair::Ed25519(pair), json!({"kty": "OKP", "crv": "Ed25519", "x": x}), decoding)
            }
            SigningAlgorithm::ES256 => {
                let pair = rsig::EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map_err(|_| malformed())?;
                let point = pair.public_key().as_ref();
                let (x, y) = match point.split_first() {
                    Some((4, rest)) if rest.len() == 64 => rest.split_at(32),
                    _ => return Err(malformed()),
                };
                let jwk = json!({"kty": "EC", "crv": "P-256", "x": crypto::b64url(x), "y": crypto::b64url(y)});
                let decoding = DecodingKey::from_ec_der(point);
                (Pair::Es256(pair), jwk, decoding)
            }
        };
        // RFC 7638 thumbprint as the key id: stable, and derived from the
        // public key alone. serde_json's map keeps keys sorted, as the RFC's
        // canonical form requires.
        let kid = crypto::b64url(crypto::sha256(public_jwk.to_string().as_bytes()));
        let mut public_jwk = public_jwk;
        if let Value::Object(map) = &mut public_jwk {
            map.insert("kid".into(), Value::String(kid.clone()));
            map.insert("alg".into(), Value::String(alg.as_str().into()));
            map.insert("use".into(), Value::String("sig".into()));
        }
        Ok(Self { kid, alg, created_at, pair, public_jwk, decoding, rng })
    }

    pub fn generate(alg: SigningAlgorithm, now: OffsetDateTime) -> Result<(Self, Zeroizing<Vec<u8>>), KeyError> {
        let der = match alg {
            SigningAlgorithm::EdDSA => generate_ed25519_pkcs8_v1()?,
            SigningAlgorithm::ES256 => Zeroizing::new(
                rsig::EcdsaKeyPair::generate_pkcs8(&rsig::ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                    .map_err(|_| KeyError::Random)?
                    .as_ref()
                    .to_vec(),
            ),
        };
        Ok((Self::from_pkcs8(alg, &der, now)?, der))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> SigningAlgorithm {
        self.alg
    }

    pub fn jwt_algorithm(&self) -> Algorithm {
        match self.alg {
            SigningAlgorithm::EdDSA => Algorithm::EdDSA,
            SigningAlgorithm::ES256 => Algorithm::ES256,
        }
    }

    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    pub fn public_jwk(&self) -> &Value {
        &self.public_jwk
    }

    pub fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Pair::Es256(pair) => Ok(pair.sign(&self.rng, message).map_err(|_| KeyError::Sign)?.as_ref().to_vec()),
        }
    }

    /// Produces a compact JWS: `b64(header).b64(claims).b64(signature)`.
    pub fn sign_jwt(&self, typ: &str, claims: &impl Serialize) -> Result<String, KeyError> {
        let header = json!({"alg": self.alg.as_str(), "typ": typ, "kid": self.kid});
        let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Sign)?;
        let mut out = crypto::b64url(header.to_string());
        out.push('.');
        out.push_str(&crypto::b64url(payload));
        let signature = self.sign_bytes(out.as_bytes())?;
        out.push('.');
        out.push_str(&crypto::b64url(signature));
        Ok(out)
    }

    /// This key sealed under `kek`; `der` is its PKCS#8 document.
    pub fn seal(&self, der: &[u8], kek: &Kek) -> Result<SealedKey, KeyError> {
        Ok(SealedKey {
            kid: self.kid.clone(),
            alg: self.alg.as_str().into(),
            created_at: self.created_at,
            sealed: kek.seal(&seal_context(&self.kid, self.alg), der)?,
        })
    }

    /// Opens a sealed key; `name` says where it came from, for errors.
    pub fn unseal(sealed: &SealedKey, kek: &Kek, name: &str) -> Result<Self, KeyError> {
        let alg = match sealed.alg.as_str() {
            "EdDSA" => SigningAlgorithm::EdDSA,
            "ES256" => SigningAlgorithm::ES256,
            _ => return Err(KeyError::Malformed(name.to_owned())),
        };
        let der = kek.open(&seal_context(&sealed.kid, alg), &sealed.sealed)?;
        let key = Self::from_pkcs8(alg, &der, sealed.created_at)?;
        if key.kid != sealed.kid {
            return Err(KeyError::Malformed(name.to_owned()));
        }
        Ok(key)
    }

    /// Writes this key sealed under `kek` to `path` (mode 0600).
    pub fn store(&self, der: &[u8], kek: &Kek, path: &Path) -> Result<(), KeyError> {
        let text = serde_json::to_vec_pretty(&self.seal(der, kek)?).map_err(|e| KeyError::Io(e.to_string()))?;
        seal::write_private(path, &text)
    }

    pub fn load(path: &Path, kek: &Kek) -> Result<Self, KeyError> {
        Self::unseal(&read_sealed(path)?, kek, &path.display().to_string())
    }

    /// Loads the key at `path`, creating and storing a new one if absent.
    pub fn load_or_create(
        path: &Path,
        alg: SigningAlgorithm,
        kek: &Kek,
        now: OffsetDateTime,
    ) -> Result<Self, KeyError> {
        if path.exists() {
            return Self::load(path, kek);
        }
        let (key, der) = Self::generate(alg, now)?;
        key.store(&der, kek, path)?;
        Ok(key)
    }
}

fn read_sealed(path: &Path) -> Result<SealedKey, KeyError> {
    let name = path.display().to_string();
    let text = std::fs::read(path).map_err(|e| KeyError::Io(format!("{name}: {e}")))?;
    serde_json::from_slice(&text).map_err(|_| KeyError::Malformed(name))
}

fn seal_context(kid: &str, alg: SigningAlgorithm) -> String {
    format!("halflife-key-v1:{kid}:{}", alg.as_str())
}

/// The broker's signing keys: the current one signs, all are published.
#[derive(Debug, Clone)]
pub struct Keyring {
    current: Arc<SigningKey>,
    all: Vec<Arc<SigningKey>>,
    jwks: Arc<Value>,
}

impl Keyring {
    /// The `sig-*.json` keys earlier versions kept in `dir` (none if the
    /// directory does not exist), so they can move into the database.
    pub fn file_keys(dir: &Path) -> Result<Vec<SealedKey>, KeyError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(KeyError::Io(format!("{}: {e}", dir.display()))),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("sig-") && n.ends_with(".json"))
            })
            .collect();
        paths.sort();
        paths.iter().map(|p| read_sealed(p)).collect()
    }

    /// A new key of `alg`, sealed under `kek`.
    pub fn generate_sealed(alg: SigningAlgorithm, kek: &Kek, now: OffsetDateTime) -> Result<SealedKey, KeyError> {
        let (key, der) = SigningKey::generate(alg, now)?;
        key.seal(&der, kek)
    }

    /// Opens every stored key; the newest key of `alg` signs.
    pub fn from_sealed(sealed: &[SealedKey], alg: SigningAlgorithm, kek: &Kek) -> Result<Self, KeyError> {
        let keys = sealed
            .iter()
            .map(|k| SigningKey::unseal(k, kek, &format!("signing key {}", k.kid)).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_keys(keys, alg)
    }

    pub fn from_keys(mut keys: Vec<Arc<SigningKey>>, alg: SigningAlgorithm) -> Result<Self, KeyError> {
        keys.sort_by_key(|k| k.created_at);
        let current = keys
            .iter()
            .rev()
            .find(|k| k.alg == alg)
            .cloned()
            .ok_or_else(|| KeyError::Malformed("no signing key".into()))?;
        let jwks = json!({"keys": keys.iter().map(|k| k.public_jwk.clone()).collect::<Vec<_>>()});
        Ok(Self { current, all: keys, jwks: Arc::new(jwks) })
    }

    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    pub fn by_kid(&self, kid: &str) -> Option<&SigningKey> {
        self.all.iter().find(|k| k.kid == kid).map(Arc::as_ref)
    }

    /// The RFC 7517 key set.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut algs: Vec<_> = self.all.iter().map(|k| k.alg.as_str()).collect();
        algs.sort_unstable();
        algs.dedup();
        algs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use time::macros::datetime;

    fn kek() -> Kek {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        Kek::load(KekSource::Inline(&SecretString::from(text))).unwrap()
    }

    #[test]
    fn ed25519_v1_is_accepted_by_ring_and_jsonwebtoken() {
        crypto::install();
        let der = generate_ed25519_pkcs8_v1().unwrap();
        assert_eq!(der.len(), 48);
        let key = SigningKey::from_pkcs8(SigningAlgorithm::EdDSA, &der, datetime!(2026-01-01 0:00 UTC)).unwrap();
        // jsonwebtoken accepts the stored form as an encoding key and signs
        // with it; our own signature verifies through jsonwebtoken too.
        let encoding = jsonwebtoken::EncodingKey::from_ed_der(&der);
        let claims = json!({"sub": "x"});
        let theirs = jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::EdDSA), &claims, &encoding).unwrap();
        let ours = key.sign_jwt("at+jwt", &claims).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        for token in [theirs, ours] {
            let data = jsonwebtoken::decode::<Value>(&token, key.decoding_key(), &validation).unwrap();
            assert_eq!(data.claims["sub"], "x");
        }
    }

    #[test]
    fn es256_tokens_verify_with_jsonwebtoken() {
        crypto::install();
        let (key, _) = SigningKey::generate(SigningAlgorithm::ES256, datetime!(2026-01-01 0:00 UTC)).unwrap();
        let token = key.sign_jwt("at+jwt", &json!({"sub": "y"})).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(&token, key.decoding_key(), &validation).unwrap();
    }

    #[test]
    fn sealed_keys_reopen_and_the_newest_of_the_algorithm_signs() {
        let kek = kek();
        let now = datetime!(2026-01-01 0:00 UTC);
        let ed = Keyring::generate_sealed(SigningAlgorithm::EdDSA, &kek, now).unwrap();
        assert!(!ed.sealed.contains("PRIVATE") && ed.sealed.len() > 40, "key must be sealed");
        let ring = Keyring::from_sealed(std::slice::from_ref(&ed), SigningAlgorithm::EdDSA, &kek).unwrap();
        assert_eq!(ring.current().kid(), ed.kid);
        let jwk = &ring.jwks()["keys"][0];
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["kid"], ed.kid);
        // Switching algorithm adds a key and keeps the old one published.
        let es = Keyring::generate_sealed(SigningAlgorithm::ES256, &kek, now + time::Duration::DAY).unwrap();
        let ring = Keyring::from_sealed(&[ed.clone(), es.clone()], SigningAlgorithm::ES256, &kek).unwrap();
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);
        assert_eq!(ring.current().kid(), es.kid);
        assert!(ring.by_kid(&ed.kid).is_some());
        // Another key-encryption key, or an altered key id, does not open.
        let other = Kek::load(KekSource::Inline(&SecretString::from(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            [2u8; 32],
        ))))
        .unwrap();
        assert!(matches!(
            Keyring::from_sealed(std::slice::from_ref(&ed), SigningAlgorithm::EdDSA, &other),
            Err(KeyError::Unseal)
        ));
        let mut renamed = ed.clone();
        renamed.kid = es.kid.clone();
        assert!(Keyring::from_sealed(&[renamed], SigningAlgorithm::EdDSA, &kek).is_err());
    }

    #[test]
    fn key_files_of_earlier_versions_are_read_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let kek = kek();
        let (key, der) = SigningKey::generate(SigningAlgorithm::EdDSA, datetime!(2026-01-01 0:00 UTC)).unwrap();
        let path = dir.path().join(format!("sig-{}.json", key.kid()));
        key.store(&der, &kek, &path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let found = Keyring::file_keys(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kid, key.kid());
        assert!(Keyring::file_keys(&dir.path().join("absent")).unwrap().is_empty());
    }
}
