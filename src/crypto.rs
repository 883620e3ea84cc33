//! One crypto implementation: `ring`.
//!
//! jsonwebtoken (>= 10) no longer ships a ring backend, so this module gives it
//! a small ring-backed [`CryptoProvider`]. It verifies the asymmetric
//! algorithms only: HMAC is refused outright, so a token "signed" with an
//! issuer's public key as an HMAC secret can never verify. Issued tokens are
//! signed by [`crate::keys`] with parsed ring key pairs held in memory.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{self as rsig, KeyPair};

/// Installs the ring provider for jsonwebtoken; idempotent.
pub fn install() {
    // A second install (tests build several apps per process) is harmless:
    // the provider is the same static.
    let _ = RING_PROVIDER.install_default();
    let _ = rustls::crypto::ring::default_provider().install_default();
}

static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_from_private_key,
        rsa_pub_components_from_public_key: |_| Err(ErrorKind::InvalidKeyFormat.into()),
        ec_pub_components_from_private_key: ec_components_from_private_key,
        ed_pub_components_from_private_key: ed_components_from_private_key,
        compute_digest,
    },
};

pub fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    sha256_all([bytes])
}

/// The SHA-256 of `parts`, one after the other.
pub fn sha256_all<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

pub fn hex(bytes: &[u8]) -> String {
    // By table, not `write!` per byte: every issuance hexes its audit chain
    // hash, and the formatter took about 8,000 instructions to do it.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Fills a fresh buffer with `N` random bytes from the OS generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], ring::error::Unspecified> {
    let mut buf = [0u8; N];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut buf)?;
    Ok(buf)
}

fn sig_err(_: ring::error::Unspecified) -> signature::Error {
    signature::Error::new()
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> jsonwebtoken::errors::Result<Vec<u8>> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(ring::digest::digest(alg, data).as_ref().to_vec())
}

fn rsa_key_pair(der: &[u8]) -> Result<rsig::RsaKeyPair, JwtError> {
    rsig::RsaKeyPair::from_pkcs8(der)
        .or_else(|_| rsig::RsaKeyPair::from_der(der))
        .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()).into())
}

fn rsa_components_from_private_key(der: &[u8]) -> jsonwebtoken::errors::Result<(Vec<u8>, Vec<u8>)> {
    let pair = rsa_key_pair(der)?;
    let components = rsig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    Ok((components.n, components.e))
}

fn ecdsa_signing_alg(alg: Algorithm) -> Option<&'static rsig::EcdsaSigningAlgorithm> {
    match alg {
        Algorithm::ES256 => Some(&rsig::ECDSA_P256_SHA256_FIXED_SIGNING),
        Algorithm::ES384 => Some(&rsig::ECDSA_P384_SHA384_FIXED_SIGNING),
        _ => None,
    }
}

fn ec_components_from_private_key(
    der: &[u8],
    alg: Algorithm,
) -> jsonwebtoken::errors::Result<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    let (signing, curve, len) = match alg {
        Algorithm::ES256 => (&rsig::ECDSA_P256_SHA256_FIXED_SIGNING, EllipticCurve::P256, 32),
        Algorithm::ES384 => (&rsig::ECDSA_P384_SHA384_FIXED_SIGNING, EllipticCurve::P384, 48),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let pair = rsig::EcdsaKeyPair::from_pkcs8(signing, der, &SystemRandom::new())
        .map_err(|_| JwtError::from(ErrorKind::InvalidEcdsaKey))?;
    let point = pair.public_key().as_ref();
    match point.split_first() {
        Some((4, rest)) if rest.len() == 2 * len => {
            let (x, y) = rest.split_at(len);
            Ok((curve, x.to_vec(), y.to_vec()))
        }
        _ => Err(ErrorKind::InvalidEcdsaKey.into()),
    }
}

fn ed_components_from_private_key(der: &[u8], curve: &EllipticCurve) -> jsonwebtoken::errors::Result<Vec<u8>> {
    match curve {
        EllipticCurve::Ed25519 => Ok(rsig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| JwtError::from(ErrorKind::InvalidEddsaKey))?
            .public_key()
            .as_ref()
            .to_vec()),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

enum RingSigner {
    Ecdsa(Algorithm, rsig::EcdsaKeyPair),
    Ed25519(rsig::Ed25519KeyPair),
    Rsa(Algorithm, rsig::RsaKeyPair),
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = SystemRandom::new();
        match self {
            Self::Ecdsa(_, pair) => Ok(pair.sign(&rng, msg).map_err(sig_err)?.as_ref().to_vec()),
            Self::Ed25519(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
            Self::Rsa(alg, pair) => {
                let encoding: &'static dyn rsig::RsaEncoding = match alg {
                    Algorithm::RS384 => &rsig::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &rsig::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &rsig::RSA_PSS_SHA256,
                    Algorithm::PS384 => &rsig::RSA_PSS_SHA384,
                    Algorithm::PS512 => &rsig::RSA_PSS_SHA512,
                    _ => &rsig::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(encoding, &rng, msg, &mut out).map_err(sig_err)?;
                Ok(out)
            }
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        match self {
            Self::Ecdsa(alg, _) | Self::Rsa(alg, _) => *alg,
            Self::Ed25519(_) => Algorithm::EdDSA,
        }
    }
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    let der = key.as_bytes();
    let signer = match alg {
        Algorithm::ES256 | Algorithm::ES384 => {
            let signing = ecdsa_signing_alg(*alg).ok_or(ErrorKind::InvalidAlgorithm)?;
            let pair = rsig::EcdsaKeyPair::from_pkcs8(signing, der, &SystemRandom::new())
                .map_err(|_| JwtError::from(ErrorKind::InvalidEcdsaKey))?;
            RingSigner::Ecdsa(*alg, pair)
        }
        Algorithm::EdDSA => RingSigner::Ed25519(
            rsig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|_| JwtError::from(ErrorKind::InvalidEddsaKey))?,
        ),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => RingSigner::Rsa(*alg, rsa_key_pair(der)?),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(signer))
}

struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let params: &'static dyn rsig::VerificationAlgorithm = match self.alg {
            Algorithm::ES256 => &rsig::ECDSA_P256_SHA256_FIXED,
            Algorithm::ES384 => &rsig::ECDSA_P384_SHA384_FIXED,
            Algorithm::EdDSA => &rsig::ED25519,
            Algorithm::RS256 => &rsig::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &rsig::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::RS512 => &rsig::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::PS256 => &rsig::RSA_PSS_2048_8192_SHA256,
            Algorithm::PS384 => &rsig::RSA_PSS_2048_8192_SHA384,
            Algorithm::PS512 => &rsig::RSA_PSS_2048_8192_SHA512,
            _ => return Err(signature::Error::new()),
        };
        match self.key.kind() {
            DecodingKeyKind::SecretOrDer(bytes) => {
                rsig::UnparsedPublicKey::new(params, bytes).verify(msg, sig).map_err(sig_err)
            }
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                let rsa: &'static rsig::RsaParameters = match self.alg {
                    Algorithm::RS256 => &rsig::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &rsig::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &rsig::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &rsig::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &rsig::RSA_PSS_2048_8192_SHA384,
                    Algorithm::PS512 => &rsig::RSA_PSS_2048_8192_SHA512,
                    _ => return Err(signature::Error::new()),
                };
                rsig::RsaPublicKeyComponents { n, e }.verify(rsa, msg, sig).map_err(sig_err)
            }
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    use jsonwebtoken::AlgorithmFamily as F;
    // The key's family must match the algorithm's: an RSA key can never be
    // used as an HMAC secret or an EC point, and HMAC is not offered at all.
    let ok = matches!((alg.family(), key.family()), (F::Rsa, F::Rsa) | (F::Ec, F::Ec) | (F::Ed, F::Ed));
    if !ok {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(RingVerifier { alg: *alg, key: key.clone() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), expected);
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn hmac_is_never_verified() {
        install();
        let key = DecodingKey::from_secret(b"public key bytes");
        assert!(new_verifier(&Algorithm::HS256, &key).is_err());
    }

    #[test]
    fn es256_round_trip_through_jsonwebtoken() {
        install();
        let rng = SystemRandom::new();
        let pkcs8 = rsig::EcdsaKeyPair::generate_pkcs8(&rsig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
        let header = jsonwebtoken::Header::new(Algorithm::ES256);
        let token = jsonwebtoken::encode(&header, &serde_json::json!({"sub": "x"}), &encoding).unwrap();
        let pair =
            rsig::EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let decoding = DecodingKey::from_ec_der(pair.public_key().as_ref());
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(data.claims["sub"], "x");
    }
}
