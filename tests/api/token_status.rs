//! `POST /oauth2/token-status`: a credential asks about itself, as it
//! revokes itself (RFC 7009): `{"active": bool}`, nothing more. A
//! sender-constrained token must prove possession as it would to a
//! resource server.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::mtls::{BINDING_GRANTS, DpopKey, MtlsApp, SVID};

const SECRET_GRANT: &str = r#"
[[grants]]
id = "summarizer-secrets"
system = "summarizer"
issuer = "k8s"
subject = "system:serviceaccount:ai:secret-agent"
audiences = ["reports-api"]
kinds = ["jwt", "secret"]
max_ttl = "10m"
"#;

async fn status(app: &TestApp, url: &str, token: &str, dpop: Option<&str>) -> (u16, Value) {
    let mut request = app.client.post(url).form(&[("token", token)]);
    if let Some(proof) = dpop {
        request = request.header("DPoP", proof);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(response.headers()["cache-control"], "no-store");
    (status, response.json().await.unwrap())
}

/// A proof for the status endpoint, with `ath` for `token` (or `ath` as given).
fn status_proof(key: &DpopKey, htu: &str, ath: Option<String>, iat: i64) -> String {
    let mut claims = json!({"jti": uuid_like(), "htm": "POST", "htu": htu, "iat": iat});
    if let Some(ath) = ath {
        claims["ath"] = json!(ath);
    }
    key.sign(&json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk()}), &claims)
}

fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(halflife::crypto::sha256(token.as_bytes()))
}

#[tokio::test]
async fn a_token_asks_about_itself_and_learns_one_bit() {
    let catalog = format!("{}{SECRET_GRANT}", default_catalog());
    let Some(app) = spawn_with(Options { catalog, ..Options::default() }).await else { return };
    let url = app.url("/oauth2/token-status");
    let jwt =
        app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await["access_token"].as_str().unwrap().to_owned();
    let secret = app
        .exchange_ok(
            &app.rsa.token("system:serviceaccount:ai:secret-agent", app.now()),
            &[("requested_token_type", "urn:halflife:token-type:secret")],
        )
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(status(&app, &url, &jwt, None).await, (200, json!({"active": true})));
    assert_eq!(status(&app, &url, &secret, None).await, (200, json!({"active": true})));

    // Unknown, malformed and foreign tokens: simply inactive.
    let (head, _) = jwt.rsplit_once('.').unwrap();
    let forged_secret = format!("hlf_{}", "A".repeat(49));
    for token in ["garbage", &format!("{head}.AAAA"), &app.rsa.token(RSA_SUBJECT, app.now()), &forged_secret] {
        assert_eq!(status(&app, &url, token, None).await, (200, json!({"active": false})), "{token}");
    }
    // Malformed requests are refused like the other OAuth endpoints'.
    let response = app.client.post(&url).form(&[("token", "")]).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let response = app.client.post(&url).json(&json!({"token": jwt})).send().await.unwrap();
    assert_eq!(response.status(), 415);
    let response = app.client.post(&url).form(&[("token", "x".repeat(20_000))]).send().await.unwrap();
    assert_eq!(response.status(), 413);

    // The holder revokes the JWT; an operator suspends the system: each
    // turns inactive for its own holder at once.
    app.client.post(app.url("/oauth2/revoke")).form(&[("token", &jwt)]).send().await.unwrap();
    assert_eq!(status(&app, &url, &jwt, None).await, (200, json!({"active": false})));
    let operator = app.admin_token(halflife::domain::model::Role::Operator).await;
    let (code, _) = app
        .api(Method::POST, "/v1/systems/summarizer/suspend", &operator, Some(json!({"reason": "audit finding"})))
        .await;
    assert_eq!(code, 200);
    assert_eq!(status(&app, &url, &secret, None).await, (200, json!({"active": false})));
}

#[tokio::test]
async fn a_dpop_bound_token_must_prove_its_key_before_it_learns_anything() {
    let catalog = format!("{}{BINDING_GRANTS}", default_catalog());
    let Some(app) = spawn_with(Options { catalog, ..Options::default() }).await else { return };
    let key = DpopKey::new();
    let proof = key.proof("POST", &app.url("/oauth2/token"), app.now());
    let response = app
        .client
        .post(app.url("/oauth2/token"))
        .header("DPoP", proof)
        .form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token_type", JWT_TYPE),
            ("subject_token", &app.rsa.token("system:serviceaccount:ai:dpop-agent", app.now())),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token = response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let url = app.url("/oauth2/token-status");
    let now = app.now();

    let thief = DpopKey::new();
    let refused = [
        ("no proof", None),
        ("no ath", Some(status_proof(&key, &url, None, now))),
        ("another token's ath", Some(status_proof(&key, &url, Some(ath("other")), now))),
        ("the token endpoint's htu", Some(status_proof(&key, &app.url("/oauth2/token"), Some(ath(&token)), now))),
        ("a stale proof", Some(status_proof(&key, &url, Some(ath(&token)), now - 300))),
        ("a thief's key", Some(status_proof(&thief, &url, Some(ath(&token)), now))),
        ("not a proof", Some("garbage".to_owned())),
    ];
    for (case, proof) in &refused {
        let (code, body) = status(&app, &url, &token, proof.as_deref()).await;
        assert_eq!(code, 400, "{case}: {body}");
        assert_eq!(body["error"], "invalid_dpop_proof", "{case}: {body}");
        assert!(body.get("active").is_none(), "{case}: {body}");
        refused_one();
    }

    let proof = status_proof(&key, &url, Some(ath(&token)), now);
    assert_eq!(status(&app, &url, &token, Some(&proof)).await, (200, json!({"active": true})));
    // A proof works once.
    let (code, body) = status(&app, &url, &token, Some(&proof)).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "{body}");
    refused_one();

    // Once revoked, its holder (with a proof) learns so; a thief still
    // learns nothing.
    app.client.post(app.url("/oauth2/revoke")).form(&[("token", &token)]).send().await.unwrap();
    let proof = status_proof(&key, &url, Some(ath(&token)), now);
    assert_eq!(status(&app, &url, &token, Some(&proof)).await, (200, json!({"active": false})));
    let (code, _) = status(&app, &url, &token, None).await;
    assert_eq!(code, 400);
    refused_one();
    report_refused("hostile");
}

#[tokio::test]
async fn a_certificate_bound_token_asks_over_mtls_with_its_certificate() {
    let Some(m) = MtlsApp::start("").await else { return };
    let leaf = m.prod.svid(SVID);
    let response = m.client_credentials(&leaf, &[("audience", "search-api")]).await.unwrap();
    assert_eq!(response.status(), 200);
    let token = response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();

    let ask = |client: reqwest::Client, url: String| {
        let token = token.clone();
        async move {
            let response = client.post(url).form(&[("token", token)]).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let mtls_url = m.mtls_url("/oauth2/token-status");
    assert_eq!(ask(m.pki.client(Some(&leaf)), mtls_url.clone()).await, (200, json!({"active": true})));
    // Without the certificate: on the plain listener, or with another SVID.
    let (code, body) = ask(m.app.client.clone(), m.app.url("/oauth2/token-status")).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
    let other = m.prod.svid("spiffe://prod.example/ns/ai/sa/other");
    let (code, body) = ask(m.pki.client(Some(&other)), mtls_url).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
}
