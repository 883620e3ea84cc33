//! Per-operation crypto costs on the exchange path, measured with the same
//! ring primitives the broker uses.
//!
//! Run: `cargo bench --bench crypto`. Prints microseconds per operation
//! (median of 7 rounds); figures vary with the machine, so compare ratios.
#![expect(clippy::unwrap_used, reason = "a benchmark aborts on setup failure")]
#![expect(clippy::expect_used, reason = "a benchmark aborts on setup failure")]

use std::hint::black_box;
use std::time::Instant;

use halflife::keys::{SigningAlgorithm, SigningKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::json;

mod support;

fn per_op(iterations: u32, mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[3]
}

fn main() {
    halflife::crypto::install();
    let now = time::OffsetDateTime::UNIX_EPOCH;
    let claims = json!({"iss": "https://halflife.example", "sub": "spiffe://prod.example/ns/ai/sa/summarizer",
        "aud": "reports-api", "exp": 2_000_000_000i64, "iat": 1_999_999_700i64, "nbf": 1_999_999_700i64,
        "jti": "0193b8f0-7c1e-7a6b-9d55-0e1f2a3b4c5d", "scope": "reports:read", "client_id": "x", "system": "summarizer"});

    let (ed, ed_der) = SigningKey::generate(SigningAlgorithm::EdDSA, now).unwrap();
    let (es, es_der) = SigningKey::generate(SigningAlgorithm::ES256, now).unwrap();
    let ed_us = per_op(2000, || {
        black_box(ed.sign_jwt("at+jwt", &claims).unwrap());
    });
    let es_us = per_op(2000, || {
        black_box(es.sign_jwt("at+jwt", &claims).unwrap());
    });
    // jsonwebtoken's encode re-parses the PKCS#8 document on every call.
    let ed_enc = EncodingKey::from_ed_der(&ed_der);
    let es_enc = EncodingKey::from_ec_der(&es_der);
    let ed_reparse_us = per_op(2000, || {
        black_box(jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &ed_enc).unwrap());
    });
    let es_reparse_us = per_op(2000, || {
        black_box(jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &es_enc).unwrap());
    });

    // RS256 attestation verification through the ring-backed provider.
    let rsa = support::RsaKey::generate();
    let rs_token =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &EncodingKey::from_rsa_der(&rsa.pkcs8)).unwrap();
    let rs_key = DecodingKey::from_rsa_raw_components(&rsa.n, &rsa.e);
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.set_audience(&["reports-api"]);
    let rs_verify_us = per_op(2000, || {
        black_box(jsonwebtoken::decode::<serde_json::Value>(&rs_token, &rs_key, &validation).unwrap());
    });
    let es_token = es.sign_jwt("at+jwt", &claims).unwrap();
    let es_verify_us = per_op(2000, || {
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_exp = false;
        v.set_audience(&["reports-api"]);
        black_box(jsonwebtoken::decode::<serde_json::Value>(&es_token, es.decoding_key(), &v).unwrap());
    });

    println!("operation                                   µs/op");
    println!("EdDSA mint, cached ring key (ours)          {ed_us:8.1}");
    println!("ES256 mint, cached ring key (ours)          {es_us:8.1}");
    println!("EdDSA mint via jsonwebtoken::encode         {ed_reparse_us:8.1}");
    println!("ES256 mint via jsonwebtoken::encode         {es_reparse_us:8.1}");
    println!("RS256 attestation verify (ring provider)    {rs_verify_us:8.1}");
    println!("ES256 token verify (ring provider)          {es_verify_us:8.1}");
}
