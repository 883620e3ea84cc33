//! A single-use attestation works once, whatever the encoding of its
//! signature: its use is remembered by `(issuer, jti)`, or by the issuer and
//! the SHA-256 of its JWS signing input (`header.payload`) when it has no
//! `jti`, and the audit trail names it by that same id in every event.
//!
//! An ES256 signature `(r, s)` has a second valid form `(r, n - s)`: a
//! different token text for the same attestation. Ed25519 signatures are
//! not malleable that way (ring refuses an `S` of `L` or more), so there
//! the test shows that the id is the signing input's all the same.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature as rsig;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::rejections::assert_refused;

const ED_ISS: &str = "https://ed.test.example";
const ED_SUBJECT: &str = "spiffe://prod.example/ns/ai/sa/ed-agent";

/// The order n of the P-256 group, big-endian (SEC 2, secp256r1).
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The order L of the Ed25519 base point, little-endian (RFC 8032 §5.1:
/// 2^252 + 27742317777372353535851937790883648493).
const ED25519_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
];

/// `n - s` for the 32-byte big-endian `s < n`: subtraction with borrow,
/// from the least significant byte up.
fn p256_n_minus(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut digit = i16::from(P256_N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(digit < 0);
        digit += 256 * borrow;
        out[i] = u8::try_from(digit).unwrap();
    }
    assert_eq!(borrow, 0, "s is below n");
    out
}

/// `s + L` for the 32-byte little-endian `s < L` (the sum stays below
/// 2^254, so within 32 bytes).
fn ed25519_s_plus_l(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(s[i]) + u16::from(ED25519_L[i]) + carry;
        out[i] = u8::try_from(sum & 0xff).unwrap();
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

#[test]
fn the_big_number_helpers_are_right() {
    // n - 1, and n - (n - 1) = 1.
    let mut one = [0u8; 32];
    one[31] = 1;
    let mut n_minus_one = P256_N;
    n_minus_one[31] -= 1;
    assert_eq!(p256_n_minus(&one), n_minus_one);
    assert_eq!(p256_n_minus(&n_minus_one), one);
    // A borrow across bytes: n ends 0x25 0x51, and 0x2551 - 0x52 = 0x24ff.
    let mut s = [0u8; 32];
    s[31] = 0x52;
    let out = p256_n_minus(&s);
    assert_eq!((out[29], out[30], out[31]), (0x63, 0x24, 0xff));
    // 0 + L = L, and a carry across bytes: 0x13 + 0xed = 0x100.
    assert_eq!(ed25519_s_plus_l(&[0u8; 32]), ED25519_L);
    let mut s = [0u8; 32];
    s[0] = 0x13;
    assert_eq!(ed25519_s_plus_l(&s)[..2], [0x00, 0xd4]);
}

/// The same attestation with its ES256 signature `(r, s)` replaced by
/// `(r, n - s)`, checked to verify on its own.
fn es256_twin(issuer: &TestIssuer, token: &str) -> String {
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let mut twin = signature.clone();
    twin[32..].copy_from_slice(&p256_n_minus(&signature[32..]));
    assert_ne!(twin, signature);
    let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(issuer.public_jwk[name].as_str().unwrap()).unwrap();
    let point = [vec![4u8], coordinate("x"), coordinate("y")].concat();
    rsig::UnparsedPublicKey::new(&rsig::ECDSA_P256_SHA256_FIXED, &point)
        .verify(input.as_bytes(), &twin)
        .expect("(r, n - s) is a valid signature of the same signing input");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(twin))
}

/// The same attestation with its Ed25519 signature `(R, S)` replaced by
/// `(R, S + L)`, which ring refuses.
fn ed25519_twin(token: &str) -> String {
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let mut twin = signature.clone();
    twin[32..].copy_from_slice(&ed25519_s_plus_l(&signature[32..]));
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(twin))
}

/// `sha256:` and the hex SHA-256 of the token's signing input.
fn signing_input_id(token: &str) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
    format!("sha256:{}", digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A server on which the ES256 issuer (`spire`) is single-use, with a
/// second single-use issuer (`ed`) signing EdDSA and a grant for it.
async fn spawn_single_use(ed: &TestIssuer, dir: &std::path::Path) -> Option<TestApp> {
    let jwks = dir.join("ed.jwks");
    std::fs::write(&jwks, ed.jwks().to_string()).unwrap();
    let extra_config = format!(
        "single_use = true\n\n[[issuers]]\nname = \"ed\"\nissuer = \"{ED_ISS}\"\njwks_file = \"{}\"\n\
         algorithms = [\"EdDSA\"]\naudience = \"{AUD}\"\nmax_token_age = \"1h\"\nsingle_use = true\n",
        jwks.display()
    );
    let catalog = format!(
        "{}\n[[grants]]\nid = \"indexer-ed\"\nsystem = \"indexer\"\nissuer = \"ed\"\nsubject = \"{ED_SUBJECT}\"\n\
         audiences = [\"docs-api\"]\nscopes = [\"docs:read\"]\nmax_ttl = \"30m\"\n",
        default_catalog()
    );
    spawn_with(Options { extra_config, catalog, ..Options::default() }).await
}

/// Every event that names `id` as its attestation, as (kind, reason).
async fn events_naming(app: &TestApp, id: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for kind in ["credential.issued", "credential.denied"] {
        for event in app.events(kind).await {
            if event.attestation_id.as_deref() == Some(id) {
                out.push((kind, event.reason.unwrap_or_default()));
            }
        }
    }
    out
}

#[tokio::test]
async fn a_single_use_attestation_works_once_whatever_its_signature_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let ed = TestIssuer::ed25519(ED_ISS);
    let Some(app) = spawn_single_use(&ed, dir.path()).await else { return };
    let audience = [("audience", "docs-api")];
    let mut rounds = 0;
    for (issuer, subject) in [(&*app.ec, EC_SUBJECT), (&ed, ED_SUBJECT)] {
        for with_jti in [false, true] {
            let case = format!("{:?} {}", issuer.alg, if with_jti { "with jti" } else { "without jti" });
            let mut claims = issuer.claims(subject, app.now());
            if !with_jti {
                claims.as_object_mut().unwrap().remove("jti");
            }
            let token = issuer.sign(&claims);
            let id = match &claims["jti"] {
                Value::String(jti) => jti.clone(),
                _ => signing_input_id(&token),
            };
            let credentials = app.credential_count().await;

            app.exchange_ok(&token, &audience).await;
            assert_refused(&app, &token, &audience, "invalid_grant", "replay").await;
            let twin = if issuer.alg == jsonwebtoken::Algorithm::ES256 {
                let twin = es256_twin(issuer, &token);
                let body = assert_refused(&app, &twin, &audience, "invalid_grant", "replay").await;
                assert!(body["error_description"].as_str().unwrap().contains("already been used"), "{case}: {body}");
                twin
            } else {
                // Not a second signature: ring refuses S >= L, so it is a
                // forgery, named by its signing input like any other.
                let twin = ed25519_twin(&token);
                assert_refused(&app, &twin, &audience, "invalid_grant", "signature does not verify").await;
                twin
            };
            assert_eq!(app.credential_count().await, credentials + 1, "{case}: one attestation, one credential");

            // One attestation, one id: the issuance and the refused replay
            // name it alike, and nothing else was issued under any name.
            let named = events_naming(&app, &id).await;
            let issued = named.iter().filter(|(kind, _)| *kind == "credential.issued").count();
            assert_eq!(issued, 1, "{case}: {named:?}");
            let replays = named.iter().filter(|(_, reason)| reason.contains("replay")).count();
            let expected_replays = if issuer.alg == jsonwebtoken::Algorithm::ES256 { 2 } else { 1 };
            assert_eq!(replays, expected_replays, "{case}: {named:?}");
            // The ES256 twin verifies, so it is named like the attestation;
            // the refused Ed25519 one by its signing input (the token's own,
            // so the attestation's id when it has no jti).
            let denials = app.events("credential.denied").await;
            let twin_denial = denials.last().unwrap().attestation_id.clone().unwrap();
            let expected =
                if issuer.alg == jsonwebtoken::Algorithm::ES256 { id.clone() } else { signing_input_id(&twin) };
            assert_eq!(twin_denial, expected, "{case}");
            rounds += 1;
        }
    }

    // The jti is remembered per issuer: another issuer's attestation with
    // the same jti is a different attestation.
    let mut claims = app.ec.claims(EC_SUBJECT, app.now());
    claims["jti"] = json!("shared-jti");
    app.exchange_ok(&app.ec.sign(&claims), &audience).await;
    let mut claims = ed.claims(ED_SUBJECT, app.now());
    claims["jti"] = json!("shared-jti");
    let token = ed.sign(&claims);
    app.exchange_ok(&token, &audience).await;
    assert_refused(&app, &token, &audience, "invalid_grant", "replay").await;
    scoreboard("replay", rounds, 0);
    report_refused("hostile");
}

/// Ed25519 under its fully specified name (RFC 9864): an issuer may list
/// `Ed25519` among its algorithms, and a token whose header says
/// `"alg": "Ed25519"` verifies like one that says `EdDSA`. A forged
/// signature under either name does not.
#[tokio::test]
async fn an_attestation_signed_ed25519_under_either_name_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ed = TestIssuer::ed25519(ED_ISS);
    let jwks = dir.path().join("ed.jwks");
    // The key set names the algorithm the new way too.
    let mut set = ed.jwks();
    set["keys"][0]["alg"] = json!("Ed25519");
    std::fs::write(&jwks, set.to_string()).unwrap();
    let extra_config = format!(
        "\n[[issuers]]\nname = \"ed\"\nissuer = \"{ED_ISS}\"\njwks_file = \"{}\"\n\
         algorithms = [\"Ed25519\"]\naudience = \"{AUD}\"\nmax_token_age = \"1h\"\n",
        jwks.display()
    );
    let catalog = format!(
        "{}\n[[grants]]\nid = \"indexer-ed\"\nsystem = \"indexer\"\nissuer = \"ed\"\nsubject = \"{ED_SUBJECT}\"\n\
         audiences = [\"docs-api\"]\nmax_ttl = \"30m\"\n",
        default_catalog()
    );
    let Some(app) = spawn_with(Options { extra_config, catalog, ..Options::default() }).await else { return };
    for alg in ["EdDSA", "Ed25519"] {
        let header = json!({"alg": alg, "kid": ed.kid, "typ": "JWT"});
        let token = ed.sign_raw(&header, &ed.claims(ED_SUBJECT, app.now()));
        app.exchange_ok(&token, &[("audience", "docs-api")]).await;
        let (input, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
        assert_refused(&app, &forged, &[("audience", "docs-api")], "invalid_grant", "signature does not verify").await;
    }
    report_refused("hostile");
}
