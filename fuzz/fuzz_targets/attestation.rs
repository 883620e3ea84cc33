//! The attestation front end: `Verifier::verify` on hostile tokens.
//!
//! One trusted issuer is built the way the server builds it (a TOML
//! configuration through `Config::from_toml` and `attest::issuer_from_config`)
//! with a static JWKS of three public keys whose private halves are thrown
//! away (P-256 and Ed25519 generated at start, a fixed RSA-2048 modulus), so
//! no input can carry a valid signature: `verify` must refuse everything, and
//! never panic.
//!
//! Each input is tried twice: as a token string (when it is UTF-8), and as
//! `header 0xFF payload 0xFF signature`, each piece base64url-encoded and
//! joined with dots, so the fuzzer gets past the encoding checks to the
//! header rules, the claims JSON, issuer and key selection and the signature
//! check.

#![no_main]

use std::sync::{Arc, LazyLock};

use halflife::attest::issuer_from_config;
use halflife::attest::jwt::{IssuerKeys, Rejection, Verifier};
use halflife::clock::{ManualClock, SharedClock};
use halflife::config::Config;
use halflife::crypto::b64url;
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use time::OffsetDateTime;

/// The trusted issuer's `iss`; the seeds use it.
const ISSUER: &str = "https://issuer.fuzz.example";
/// 2026-01-01T00:00:00Z: a fixed clock keeps runs reproducible.
const NOW: i64 = 1_767_225_600;
/// A 2048-bit RSA modulus whose private key was discarded when it was made.
const RSA_N: &str = "ukZN3fvFBjBP6KkpDJcDtPvP_-rOkjBbWdVHQNYI75kPTvTO9dFXYwUDF7EVNyxALGA02PPWYb4OTN-eQg1dj2pwMcodAYa5RpNExcR68-DEzbvQ_esCXQyP1Ad7pQxud1ky63EC2RgWo-voMXkVC-zSW04BXXSaqltoers8qLqiRq0ZofGqG-hlxEdc4GhJcY2oCGyQNzqy0zom6_u8xlvkq3gyNKIc2B8jv6b4ju6KFCv5uBnCbvLeaGm8W6MFCfMdv_vh_S4oAfRSGOoDKJ-Obc_oj1qWUW_NM5VF_XjsAlIT-OAppgbilcam97x0wBOQAo4mTFtb2ZyJ8flXqw";

struct Harness {
    verifier: Verifier,
    runtime: tokio::runtime::Runtime,
    now: OffsetDateTime,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(build);

/// A JWKS of public keys only: P-256 (`kid` "ec"), RSA (`kid` "rsa") and
/// Ed25519 (no `kid`, so every EdDSA token without one meets it).
fn jwks() -> serde_json::Value {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate P-256 key");
    let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("P-256 key");
    let point = ec.public_key().as_ref();
    assert_eq!(point.len(), 65, "uncompressed P-256 point");
    let (x, y) = point[1..].split_at(32);
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate Ed25519 key");
    let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key");
    serde_json::json!({"keys": [
        {"kty": "EC", "crv": "P-256", "x": b64url(x), "y": b64url(y), "kid": "ec", "alg": "ES256", "use": "sig"},
        {"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": "rsa", "alg": "RS256", "use": "sig"},
        {"kty": "OKP", "crv": "Ed25519", "x": b64url(ed.public_key().as_ref())},
    ]})
}

fn build() -> Harness {
    halflife::crypto::install();
    let now = OffsetDateTime::from_unix_timestamp(NOW).expect("fixed time");

    let dir = std::env::temp_dir().join(format!("halflife-fuzz-attestation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, jwks().to_string()).expect("write JWKS");
    let jwks_path = jwks_file.to_str().expect("UTF-8 temp path");
    assert!(!jwks_path.contains('\''), "temp path must fit a TOML literal string");
    // dev.enabled only satisfies validation (no key-encryption key needed);
    // the dev issuer itself is never built here.
    let config = Config::from_toml(&format!(
        r#"
[dev]
enabled = true

[[issuers]]
name = "fuzz"
issuer = "{ISSUER}"
jwks_file = '{jwks_path}'
audience = "halflife"
algorithms = ["RS256", "ES256", "EdDSA"]
max_token_age = "1h"
single_audience = true
"#
    ))
    .unwrap_or_else(|e| panic!("fuzz configuration: {e}"));

    let client = halflife::attest::jwks::http_client().expect("HTTP client (unused by static keys)");
    let clock: SharedClock = Arc::new(ManualClock::new(now));
    let issuers: Vec<_> = config
        .issuers
        .iter()
        .map(|c| issuer_from_config(c, &client, &clock).unwrap_or_else(|e| panic!("issuer {}: {e}", c.name)))
        .collect();
    // The key set is read when the issuer is built; the file is not needed.
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        matches!(&issuers[..], [issuer] if matches!(&issuer.keys, IssuerKeys::Static(set) if set.len() == 3)),
        "one issuer with three static keys"
    );

    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("tokio runtime");
    Harness { verifier: Verifier::new(issuers), runtime, now }
}

/// `header 0xFF payload 0xFF signature` as a compact JWS.
fn assemble(data: &[u8]) -> Option<String> {
    let mut parts = data.splitn(3, |&b| b == 0xFF);
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    Some(format!("{}.{}.{}", b64url(header), b64url(payload), b64url(signature)))
}

impl Harness {
    fn check(&self, token: &str) {
        match self.runtime.block_on(self.verifier.verify(token, self.now)) {
            Ok(attestation) => panic!("a token no key signed was accepted: {attestation:?}"),
            Err(rejection @ Rejection::KeysUnavailable(_)) => panic!("static keys reported unavailable: {rejection}"),
            Err(rejection) => {
                // The audit log renders every rejection.
                let _ = rejection.to_string();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let harness = &*HARNESS;
    if let Ok(token) = std::str::from_utf8(data) {
        harness.check(token);
    }
    if let Some(token) = assemble(data) {
        harness.check(&token);
    }
});
