//! Every refusal: the right RFC 6749/8693 error, no credential, a denial
//! record with the precise reason, and one generic message for every forged
//! or untrusted subject token (no oracle).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::helpers::*;
use halflife::clock::Clock;

const GENERIC: &str = "subject_token is invalid, expired, or not issued by a trusted issuer for this audience";

/// Exchanges, expects `status`/`code`, checks nothing was issued and that a
/// new denial record carries `reason_part`.
pub async fn assert_refused(
    app: &TestApp,
    token: &str,
    extra: &[(&str, &str)],
    code: &str,
    reason_part: &str,
) -> Value {
    let before = app.events("credential.denied").await.len();
    let credentials = app.credential_count().await;
    let response = app.exchange(token, extra).await;
    assert_eq!(response.status(), 400, "case {reason_part}: {}", &token[..token.len().min(300)]);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "case {reason_part}: {body}");
    assert!(body.get("access_token").is_none());
    assert_eq!(app.credential_count().await, credentials, "case {reason_part}: a credential was stored");
    let denials = app.events("credential.denied").await;
    assert_eq!(denials.len(), before + 1, "case {reason_part}: no denial record");
    let reason = denials.last().unwrap().reason.clone().unwrap_or_default();
    assert!(reason.contains(reason_part), "case {reason_part}: recorded reason was {reason:?}");
    refused_one();
    body
}

pub async fn assert_forged(app: &TestApp, token: &str, reason_part: &str) {
    let body = assert_refused(app, token, &[], "invalid_grant", reason_part).await;
    assert_eq!(body["error_description"], GENERIC, "case {reason_part} must not reveal which check failed");
}

#[tokio::test]
async fn forged_and_invalid_attestations_are_refused_alike() {
    let Some(app) = spawn_app().await else { return };
    let now = app.now();
    let rsa = &app.rsa;

    // Bad signature: signed by another key that claims the issuer's kid.
    let mut impostor = TestIssuer::rsa(RSA_ISS);
    impostor.kid = rsa.kid.clone();
    assert_forged(&app, &impostor.token(RSA_SUBJECT, now), "signature does not verify").await;

    // Flipped signature byte.
    let good = rsa.token(RSA_SUBJECT, now);
    let (head, sig) = good.rsplit_once('.').unwrap();
    let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig_bytes[10] ^= 1;
    assert_forged(&app, &format!("{head}.{}", URL_SAFE_NO_PAD.encode(sig_bytes)), "signature does not verify").await;

    // alg: none, with and without a signature.
    let claims = rsa.claims(RSA_SUBJECT, now);
    let none_header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    assert_forged(&app, &format!("{none_header}.{body}."), "malformed").await;
    assert_forged(&app, &format!("{none_header}.{body}.AAAA"), "malformed").await;

    // HMAC "signed" with the issuer's public key (JWK modulus and DER bytes).
    for secret in [
        URL_SAFE_NO_PAD.decode(rsa.public_jwk["n"].as_str().unwrap()).unwrap(),
        rsa.public_jwk.to_string().into_bytes(),
    ] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": rsa.kid}).to_string());
        let input = format!("{header}.{body}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let mac = ring::hmac::sign(&key, input.as_bytes());
        assert_forged(&app, &format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref())), "not allowed").await;
    }

    // Algorithm outside the issuer's allow-list (ES256 token claiming the RS256-only issuer).
    let mut es_for_rsa_issuer = TestIssuer::ec(RSA_ISS);
    es_for_rsa_issuer.kid = rsa.kid.clone();
    assert_forged(&app, &es_for_rsa_issuer.token(RSA_SUBJECT, now), "not allowed").await;

    // Unknown issuer, and a token signed by issuer B claiming issuer A.
    let stranger = TestIssuer::ec("https://stranger.example");
    assert_forged(&app, &stranger.token(RSA_SUBJECT, now), "not trusted").await;
    let mut b_claims_a = app.ec.claims(EC_SUBJECT, now);
    b_claims_a["iss"] = json!(RSA_ISS);
    assert_forged(&app, &app.ec.sign(&b_claims_a), "not allowed").await;

    // Unknown kid.
    let mut unknown_kid = TestIssuer::rsa(RSA_ISS);
    unknown_kid.kid = "no-such-key".into();
    assert_forged(&app, &unknown_kid.token(RSA_SUBJECT, now), "no key of issuer k8s").await;

    // Forbidden headers: the broker never follows a key a token points at.
    for (name, value) in [
        ("jku", json!("https://attacker.example/jwks")),
        ("x5u", json!("https://attacker.example/cert")),
        ("jwk", rsa.public_jwk.clone()),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(["exp"])),
    ] {
        let mut header = json!({"alg": "RS256", "kid": rsa.kid, "typ": "JWT"});
        header[name] = value;
        assert_forged(&app, &rsa.sign_raw(&header, &claims), &format!("header \"{name}\"")).await;
    }

    // Wrong audience, and an empty audience list.
    for aud in [json!("someone-else"), json!([]), json!(["a", "b"])] {
        let mut c = rsa.claims(RSA_SUBJECT, now);
        c["aud"] = aud;
        assert_forged(&app, &rsa.sign(&c), "audience").await;
    }

    // Expired beyond the leeway; nbf and iat in the future beyond it.
    let mut c = rsa.claims(RSA_SUBJECT, now);
    c["iat"] = json!(now - 700);
    c["exp"] = json!(now - 31);
    assert_forged(&app, &rsa.sign(&c), "expired").await;
    let mut c = rsa.claims(RSA_SUBJECT, now);
    c["nbf"] = json!(now + 31);
    assert_forged(&app, &rsa.sign(&c), "not valid before").await;
    let mut c = rsa.claims(RSA_SUBJECT, now);
    c["iat"] = json!(now + 31);
    assert_forged(&app, &rsa.sign(&c), "issued in the future").await;

    // Missing required claims.
    for claim in ["exp", "aud", "sub", "iat"] {
        let mut c = rsa.claims(RSA_SUBJECT, now);
        c.as_object_mut().unwrap().remove(claim);
        assert_forged(&app, &rsa.sign(&c), "missing").await;
    }
    let mut c = rsa.claims(RSA_SUBJECT, now);
    c.as_object_mut().unwrap().remove("iss");
    assert_forged(&app, &rsa.sign(&c), "\"iss\" is missing").await;

    // Mistyped time claims.
    for (exp, reason) in [
        (json!("9999999999"), "claims are invalid"),
        (json!(1.5e9), "claims are invalid"),
        (json!(u64::MAX), "claims are invalid"),
        (json!(-1), "exp"),
        (json!(0), "exp"),
    ] {
        let mut c = rsa.claims(RSA_SUBJECT, now);
        c["exp"] = exp;
        assert_forged(&app, &rsa.sign(&c), reason).await;
    }

    // An access token is not an attestation, even from a trusted issuer.
    let header = json!({"alg": "RS256", "kid": rsa.kid, "typ": "at+jwt"});
    assert_forged(&app, &rsa.sign_raw(&header, &rsa.claims(RSA_SUBJECT, now)), "header \"typ\"").await;

    // Lifetime longer than the issuer's max_token_age (1h for spire).
    let mut c = app.ec.claims(EC_SUBJECT, now);
    c["exp"] = json!(now + 3601);
    assert_forged(&app, &app.ec.sign(&c), "max_token_age").await;

    // Not a JWS at all.
    for junk in ["", "a.b", "a.b.c.d.e", "not a token", "eyJ.eyJ.%%%"] {
        if junk.is_empty() {
            continue;
        }
        assert_forged(&app, junk, "malformed").await;
    }
    report_refused("hostile");
}

#[tokio::test]
async fn leeway_boundary_is_exact() {
    let Some(app) = spawn_app().await else { return };
    let now = app.now();
    // Expired 29 s ago: inside the 30 s leeway, accepted.
    let mut c = app.rsa.claims(RSA_SUBJECT, now);
    c["iat"] = json!(now - 600);
    c["exp"] = json!(now - 29);
    app.exchange_ok(&app.rsa.sign(&c), &[]).await;
    // Expired 30 s ago: refused.
    c["exp"] = json!(now - 30);
    c["jti"] = json!(uuid_like());
    assert_forged(&app, &app.rsa.sign(&c), "expired").await;
    report_refused("hostile");
}

#[tokio::test]
async fn requests_outside_the_grant_are_refused_with_the_right_code() {
    let Some(app) = spawn_app().await else { return };
    let token = || app.rsa.token(RSA_SUBJECT, app.now());

    let body =
        assert_refused(&app, &token(), &[("scope", "reports:read admin:all")], "invalid_scope", "admin:all").await;
    assert!(body["error_description"].as_str().unwrap().contains("admin:all"));
    assert_refused(&app, &token(), &[("scope", "*")], "invalid_scope", "not allowed").await;
    assert_refused(&app, &token(), &[("audience", "billing-api")], "invalid_target", "billing-api").await;
    assert_refused(&app, &token(), &[("audience", "search-api")], "invalid_target", "search-api").await;
    let body = assert_refused(&app, &token(), &[("requested_ttl", "901")], "invalid_request", "exceeds").await;
    assert!(body["error_description"].as_str().unwrap().contains("900"), "{body}");

    // A workload with no grant.
    let body = assert_refused(
        &app,
        &app.rsa.token("system:serviceaccount:ai:other", app.now()),
        &[],
        "unauthorized_client",
        "no grant allows",
    )
    .await;
    assert!(body["error_description"].as_str().unwrap().contains("system:serviceaccount:ai:other"));

    // Audience required when the grant allows several.
    assert_refused(&app, &app.ec.token(EC_SUBJECT, app.now()), &[], "invalid_target", "audience is required").await;
    report_refused("hostile");
}

#[tokio::test]
async fn malformed_requests_are_refused_and_recorded() {
    let Some(app) = spawn_app().await else { return };
    let token = app.rsa.token(RSA_SUBJECT, app.now());
    for (extra, needle) in [
        (vec![("requested_ttl", "0")], "requested_ttl"),
        (vec![("requested_ttl", "-1")], "requested_ttl"),
        (vec![("requested_ttl", "1.5")], "requested_ttl"),
        (vec![("requested_ttl", "18446744073709551615")], "requested_ttl"),
        (vec![("requested_token_type", "urn:x")], "requested_token_type"),
        (vec![("scope", "a a")], "repeated"),
    ] {
        let before = app.events("credential.denied").await.len();
        let response = app.exchange(&token, &extra).await;
        assert_eq!(response.status(), 400, "{needle}");
        let denials = app.events("credential.denied").await;
        assert_eq!(denials.len(), before + 1, "{needle}: not recorded");
        assert!(denials.last().unwrap().reason.as_deref().unwrap().contains(needle));
        assert!(denials.last().unwrap().attestation_id.as_deref().unwrap().starts_with("sha256:"));
        let body: Value = response.json().await.unwrap();
        assert!(body["error"] == "invalid_request" || body["error"] == "invalid_scope", "{needle}: {body}");
        assert!(body["error_description"].as_str().unwrap().contains(needle), "{needle}: {body}");
    }
    let response = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[("grant_type", "password"), ("subject_token", token.as_str())])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
    // client_credentials authenticates with the TLS client certificate
    // alone; a subject_token with it is a malformed request.
    let response = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[("grant_type", "client_credentials"), ("subject_token", token.as_str())])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert!(body["error_description"].as_str().unwrap().contains("tls_client_auth"), "{body}");
    let response = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[("grant_type", TOKEN_EXCHANGE), ("subject_token_type", JWT_TYPE)])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_description"], "missing required parameter subject_token");
    assert_eq!(app.credential_count().await, 0);
}

#[tokio::test]
async fn single_use_issuer_refuses_a_replay() {
    let Some(app) = spawn_app().await else { return };
    let token = dev_token(&app);
    app.exchange_ok(&token, &[]).await;
    let body = assert_refused(&app, &token, &[], "invalid_grant", "replay").await;
    assert!(body["error_description"].as_str().unwrap().contains("already been used"));
    report_refused("hostile");
}

#[tokio::test]
async fn concurrent_uses_of_one_single_use_token_issue_exactly_once() {
    let Some(app) = spawn_app().await else { return };
    const ROUNDS: usize = 4;
    for round in 0..ROUNDS {
        replay_round(&app, round).await;
    }
    scoreboard("replay", ROUNDS, 0);
}

/// 50 concurrent uses of one fresh single-use token: exactly one succeeds.
async fn replay_round(app: &TestApp, round: usize) {
    let token = dev_token(app);
    let before = app.credential_count().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = app.client.clone();
        let url = app.url("/oauth2/token");
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .form(&[
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token_type", JWT_TYPE),
                    ("subject_token", token.as_str()),
                ])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 1, "round {round}: exactly one use of a single-use token may succeed");
    assert_eq!(app.credential_count().await, before + 1);
}

#[tokio::test]
async fn system_past_its_pilot_end_is_refused() {
    let Some(app) = spawn_app().await else { return };
    app.clock.advance(std::time::Duration::from_secs(30 * 86400 + 1));
    let body = assert_refused(&app, &app.rsa.token(RSA_SUBJECT, app.now()), &[], "access_denied", "pilot ended").await;
    assert!(body["error_description"].as_str().unwrap().contains("pilot ended"));
    report_refused("hostile");
}

/// A single-use dev attestation for the summarizer, minted in-process.
fn dev_token(app: &TestApp) -> String {
    let kek = halflife::keys::Kek::load(halflife::keys::KekSource::Inline(&secrecy::SecretString::from(kek_b64())));
    let dev = halflife::attest::dev::DevIssuer::load_or_create(&dev_config(app), &kek.unwrap(), app.clock.now());
    dev.unwrap().mint("spiffe://dev.local/ns/ai/sa/summarizer", None, None, app.clock.now()).unwrap()
}

/// The config the test app runs with, for minting dev tokens in-process.
fn dev_config(app: &TestApp) -> halflife::config::Config {
    let d = app.dir.path().display();
    halflife::config::Config::from_toml(&format!(
        "[server]\npublic_url = \"{}\"\n[keys]\ndir = \"{d}/keys\"\n[dev]\nenabled = true\n",
        app.base
    ))
    .unwrap()
}
