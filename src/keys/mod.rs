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

/// Algorithm of issued tokens (`keys.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SigningAlgorithm {
    EdDSA,
    ES256,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
        }
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
    /// When it starts signing; `None`: from `created_at`.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub activates_at: Option<OffsetDateTime>,
    /// When it was withdrawn: no longer published, signs and verifies
    /// nothing.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<OffsetDateTime>,
}

impl SealedKey {
    /// When this key signs from.
    pub fn activation(&self) -> OffsetDateTime {
        self.activates_at.unwrap_or(self.created_at)
    }
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
    /// The header's members are in the order a `json!` object writes
    /// them (sorted), so the header is byte for byte what it was.
    pub fn sign_jwt(&self, typ: &str, claims: &impl Serialize) -> Result<String, KeyError> {
        let header = Header { alg: self.alg.as_str(), kid: &self.kid, typ };
        let header = serde_json::to_vec(&header).map_err(|_| KeyError::Sign)?;
        let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Sign)?;
        let mut out = crypto::b64url(header);
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
            activates_at: None,
            retired_at: None,
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

/// One key with its schedule: published from when it is stored, signing
/// from `activates_at`, withdrawn at `retired_at`.
#[derive(Debug, Clone)]
pub struct ScheduledKey {
    pub key: Arc<SigningKey>,
    pub activates_at: OffsetDateTime,
    pub retired_at: Option<OffsetDateTime>,
}

impl ScheduledKey {
    fn live(&self, now: OffsetDateTime) -> bool {
        self.retired_at.is_none_or(|r| r > now)
    }
}

/// What a key is doing at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published, not signing yet (a rotation's pre-publish window).
    Pending,
    /// Signs what is issued now.
    Signing,
    /// Superseded; published until the tokens it signed have expired.
    Verifying,
    /// Withdrawn: not published, verifies nothing.
    Retired,
}

/// The broker's signing keys and their schedule: at any time exactly one
/// key of the configured algorithm signs, and every key not retired is
/// published.
#[derive(Debug, Clone)]
pub struct Keyring {
    alg: SigningAlgorithm,
    /// By activation time, oldest first.
    keys: Vec<ScheduledKey>,
    /// The last key of `alg`: signs if every key has been retired since
    /// this keyring was built.
    fallback: usize,
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

    /// Opens every stored key. `known` supplies keys already opened (by
    /// kid), so a reload parses only new ones.
    pub fn from_sealed(sealed: &[SealedKey], alg: SigningAlgorithm, kek: &Kek) -> Result<Self, KeyError> {
        Self::reopen(sealed, alg, kek, None)
    }

    /// Like [`Keyring::from_sealed`], reusing the parsed keys of `previous`.
    pub fn reopen(
        sealed: &[SealedKey],
        alg: SigningAlgorithm,
        kek: &Kek,
        previous: Option<&Keyring>,
    ) -> Result<Self, KeyError> {
        let keys = sealed
            .iter()
            .map(|k| {
                let key = match previous.and_then(|p| p.find(&k.kid)) {
                    Some(known) => Arc::clone(&known.key),
                    None => Arc::new(SigningKey::unseal(k, kek, &format!("signing key {}", k.kid))?),
                };
                Ok(ScheduledKey { key, activates_at: k.activation(), retired_at: k.retired_at })
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        Self::from_keys(keys, alg)
    }

    pub fn from_keys(mut keys: Vec<ScheduledKey>, alg: SigningAlgorithm) -> Result<Self, KeyError> {
        keys.sort_by(|a, b| a.activates_at.cmp(&b.activates_at).then_with(|| a.key.kid.cmp(&b.key.kid)));
        if !keys.iter().any(|k| k.key.alg == alg && k.retired_at.is_none()) {
            return Err(KeyError::Malformed(format!("no {} signing key that is not retired", alg.as_str())));
        }
        let fallback = keys.iter().rposition(|k| k.key.alg == alg && k.retired_at.is_none()).unwrap_or_default();
        Ok(Self { alg, keys, fallback })
    }

    fn find(&self, kid: &str) -> Option<&ScheduledKey> {
        self.keys.iter().find(|k| k.key.kid == kid)
    }

    /// The key that signs at `now`: of the configured algorithm, not
    /// retired, the latest to have activated (before any has, the first
    /// that will).
    pub fn signing(&self, now: OffsetDateTime) -> &SigningKey {
        let candidates = || self.keys.iter().filter(|k| k.key.alg == self.alg && k.live(now));
        let chosen = candidates().rfind(|k| k.activates_at <= now).or_else(|| candidates().next());
        // Every key retired since this keyring was built: the last one of
        // the algorithm keeps signing until a reload replaces the keyring
        // (`from_keys` refuses to build one without a live key).
        chosen.map_or_else(|| self.keys[self.fallback].key.as_ref(), |k| k.key.as_ref())
    }

    /// A published key by kid: what tokens it signed verify against.
    pub fn verifying(&self, kid: &str, now: OffsetDateTime) -> Option<&SigningKey> {
        self.find(kid).filter(|k| k.live(now)).map(|k| k.key.as_ref())
    }

    /// Any key this broker ever stored, retired or not: for checking the
    /// broker's own old signatures (audit checkpoints).
    pub fn any(&self, kid: &str) -> Option<&SigningKey> {
        self.find(kid).map(|k| k.key.as_ref())
    }

    /// The RFC 7517 key set published at `now`: every key not retired.
    pub fn jwks(&self, now: OffsetDateTime) -> Value {
        json!({"keys": self.keys.iter().filter(|k| k.live(now)).map(|k| k.key.public_jwk.clone()).collect::<Vec<_>>()})
    }

    /// Every key ever stored, retired ones too (to verify old checkpoints).
    pub fn all_jwks(&self) -> Value {
        json!({"keys": self.keys.iter().map(|k| k.key.public_jwk.clone()).collect::<Vec<_>>()})
    }

    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut algs: Vec<_> = self.keys.iter().map(|k| k.key.alg.as_str()).collect();
        algs.sort_unstable();
        algs.dedup();
        algs
    }

    /// Each key with what it does at `now`, oldest first.
    pub fn schedule(&self, now: OffsetDateTime) -> Vec<(&ScheduledKey, KeyState)> {
        let signing = self.signing(now).kid.clone();
        self.keys
            .iter()
            .map(|k| {
                let state = if !k.live(now) {
                    KeyState::Retired
                } else if k.key.kid == signing {
                    KeyState::Signing
                } else if k.activates_at > now && k.key.alg == self.alg {
                    KeyState::Pending
                } else {
                    KeyState::Verifying
                };
                (k, state)
            })
            .collect()
    }

    /// When the key `kid` stopped signing: the activation of the next key
    /// of its algorithm, if one has activated by `now`. Unknown (`None`)
    /// for a key of another algorithm than the configured one: it signed
    /// until the configuration changed.
    pub fn superseded_at(&self, kid: &str, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let key = self.find(kid)?;
        self.keys
            .iter()
            .filter(|k| k.key.alg == key.key.alg && k.activates_at > key.activates_at && k.activates_at <= now)
            .map(|k| k.activates_at)
            .min()
    }
}

/// The keyring in use, replaced as keys are rotated: readers take a
/// snapshot, cheap to clone.
#[derive(Debug)]
pub struct KeyringHandle {
    current: std::sync::RwLock<Arc<Keyring>>,
    /// Held from reading the stored keys to swapping the keyring, so a
    /// reload that read the store before a rotation cannot replace the
    /// keyring the rotation installed with its older view.
    reloading: tokio::sync::Mutex<()>,
}

impl KeyringHandle {
    pub fn new(keyring: Keyring) -> Self {
        Self { current: std::sync::RwLock::new(Arc::new(keyring)), reloading: tokio::sync::Mutex::new(()) }
    }

    /// Serializes reloads: hold the guard from reading the store until
    /// the keyring is swapped.
    pub async fn reloading(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reloading.lock().await
    }

    pub fn get(&self) -> Arc<Keyring> {
        Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn set(&self, keyring: Keyring) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keyring);
    }
}

/// A JWS protected header as the broker writes it.
#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    kid: &'a str,
    typ: &'a str,
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
        // The protected header's exact text: its members sorted, compact.
        let text = crypto::b64url_decode(token.split('.').next().unwrap()).unwrap();
        let expected = format!(r#"{{"alg":"ES256","kid":"{}","typ":"at+jwt"}}"#, key.kid());
        assert_eq!(String::from_utf8(text).unwrap(), expected);
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
        assert_eq!(ring.signing(now).kid(), ed.kid);
        let jwk = &ring.jwks(now)["keys"][0];
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["kid"], ed.kid);
        // Switching algorithm adds a key and keeps the old one published.
        let es = Keyring::generate_sealed(SigningAlgorithm::ES256, &kek, now + time::Duration::DAY).unwrap();
        let ring = Keyring::from_sealed(&[ed.clone(), es.clone()], SigningAlgorithm::ES256, &kek).unwrap();
        let later = now + time::Duration::DAY * 2;
        assert_eq!(ring.jwks(later)["keys"].as_array().unwrap().len(), 2);
        assert_eq!(ring.signing(later).kid(), es.kid);
        assert!(ring.verifying(&ed.kid, later).is_some());
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
    fn a_rotation_publishes_first_signs_at_activation_and_a_retired_key_verifies_nothing() {
        let kek = kek();
        let t0 = datetime!(2026-01-01 0:00 UTC);
        let old = Keyring::generate_sealed(SigningAlgorithm::EdDSA, &kek, t0).unwrap();
        let mut next = Keyring::generate_sealed(SigningAlgorithm::EdDSA, &kek, t0 + time::Duration::DAY).unwrap();
        let activation = t0 + time::Duration::DAY + time::Duration::minutes(10);
        next.activates_at = Some(activation);
        let ring = Keyring::from_sealed(&[old.clone(), next.clone()], SigningAlgorithm::EdDSA, &kek).unwrap();
        let kids = |at| -> Vec<String> {
            ring.jwks(at)["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
        };

        // Pre-publish: both published, the old key still signs.
        let before = activation - time::Duration::SECOND;
        assert_eq!(ring.signing(before).kid(), old.kid);
        assert_eq!(kids(before), [old.kid.clone(), next.kid.clone()]);
        let states: Vec<KeyState> = ring.schedule(before).into_iter().map(|(_, s)| s).collect();
        assert_eq!(states, [KeyState::Signing, KeyState::Pending]);
        assert_eq!(ring.superseded_at(&old.kid, before), None);

        // From activation the new key signs; the old one still verifies.
        assert_eq!(ring.signing(activation).kid(), next.kid);
        assert!(ring.verifying(&old.kid, activation).is_some());
        assert_eq!(ring.superseded_at(&old.kid, activation), Some(activation));
        let states: Vec<KeyState> = ring.schedule(activation).into_iter().map(|(_, s)| s).collect();
        assert_eq!(states, [KeyState::Verifying, KeyState::Signing]);

        // Retired: unpublished and refused, but still known for checking
        // the broker's own old signatures.
        let retired_at = activation + time::Duration::HOUR;
        let mut retired = old.clone();
        retired.retired_at = Some(retired_at);
        let ring = Keyring::from_sealed(&[retired, next.clone()], SigningAlgorithm::EdDSA, &kek).unwrap();
        assert!(ring.verifying(&old.kid, retired_at).is_none());
        assert!(ring.verifying(&old.kid, retired_at - time::Duration::SECOND).is_some());
        assert!(ring.any(&old.kid).is_some());
        assert_eq!(ring.all_jwks()["keys"].as_array().unwrap().len(), 2);
        assert_eq!(ring.jwks(retired_at)["keys"].as_array().unwrap().len(), 1);

        // A keyring whose every key of the algorithm is retired is refused.
        let mut only = next;
        only.retired_at = Some(retired_at);
        assert!(Keyring::from_sealed(&[only], SigningAlgorithm::EdDSA, &kek).is_err());
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
