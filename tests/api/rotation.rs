//! Signing-key rotation under load: the next key is published before it
//! signs, every token verifies against the JWKS a relying party fetches
//! after receiving it, tokens of the previous key stay valid until they
//! expire, and a retired key verifies nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use halflife::clock::Clock;
use halflife::domain::model::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// Load: exchanges in a loop; each token is verified against the JWKS
/// fetched right after it was received, as a relying party would.
struct Load {
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(app: &TestApp, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicUsize::new(0));
        let failures: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, issued, failures) = (stop.clone(), issued.clone(), failures.clone());
                let (client, base, rsa, clock) =
                    (app.client.clone(), app.base.clone(), app.rsa.clone(), app.clock.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let attestation = rsa.token(RSA_SUBJECT, clock.now().unix_timestamp());
                        let form = [
                            ("grant_type", TOKEN_EXCHANGE),
                            ("subject_token_type", JWT_TYPE),
                            ("subject_token", attestation.as_str()),
                        ];
                        let response = client.post(format!("{base}/oauth2/token")).form(&form).send().await.unwrap();
                        if response.status() != 200 {
                            failures.lock().unwrap().push(format!("exchange answered {}", response.status()));
                            continue;
                        }
                        let body: Value = response.json().await.unwrap();
                        let token = body["access_token"].as_str().unwrap().to_owned();
                        issued.fetch_add(1, Ordering::SeqCst);
                        let jwks: jsonwebtoken::jwk::JwkSet = client
                            .get(format!("{base}/.well-known/jwks.json"))
                            .send()
                            .await
                            .unwrap()
                            .json()
                            .await
                            .unwrap();
                        if let Err(why) = verify(&jwks, &token, &base) {
                            failures.lock().unwrap().push(why);
                        }
                    }
                })
            })
            .collect();
        Self { stop, issued, failures, tasks }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        (self.issued.load(Ordering::SeqCst), self.failures.lock().unwrap().clone())
    }
}

fn verify(jwks: &jsonwebtoken::jwk::JwkSet, token: &str, issuer: &str) -> Result<(), String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks.find(&kid).ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&["reports-api"]);
    validation.set_issuer(&[issuer]);
    // The broker's clock is a test clock; expiry is checked by the broker.
    validation.validate_exp = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|_| ()).map_err(|e| format!("{kid}: {e}"))
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

async fn published(app: &TestApp) -> Vec<String> {
    let jwks: Value = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

async fn fresh_token(app: &TestApp) -> String {
    app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn rotation_under_load_loses_no_verification_and_retired_keys_verify_nothing() {
    let options = Options { extra_config: "[rate_limits]\nper_workload_per_minute = 0\n".into(), ..Options::default() };
    let Some(app) = spawn_with(options).await else { return };
    let admin = app.admin_token(Role::Admin).await;
    let introspector = app.admin_token(Role::Introspector).await;
    let first = fresh_token(&app).await;
    let old_kid = kid_of(&first);
    assert_eq!(published(&app).await, std::slice::from_ref(&old_kid));

    // Rotate under load, with a one-minute pre-publish window.
    let load = Load::start(&app, 6);
    assert!(eventually(Duration::from_secs(10), || async { load.issued.load(Ordering::SeqCst) >= 20 }).await);
    let (status, body) = app.api(Method::POST, "/v1/keys/rotate", &admin, Some(json!({"pre_publish": "60s"}))).await;
    assert_eq!(status, 201, "{body}");
    let new_kid = body["key"]["kid"].as_str().unwrap().to_owned();
    assert_eq!(body["key"]["state"], "pending");
    assert_eq!(published(&app).await, [old_kid.clone(), new_kid.clone()], "published before it signs");
    let before_activation = fresh_token(&app).await;
    assert_eq!(kid_of(&before_activation), old_kid, "a pending key signs nothing");
    let issued_before = load.issued.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || async { load.issued.load(Ordering::SeqCst) >= issued_before + 20 })
            .await
    );

    app.clock.advance(Duration::from_secs(60));
    let after_activation = fresh_token(&app).await;
    assert_eq!(kid_of(&after_activation), new_kid, "the new key signs from its activation");
    let issued_after = load.issued.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || async { load.issued.load(Ordering::SeqCst) >= issued_after + 20 }).await
    );
    let (issued, failures) = load.finish().await;
    assert!(failures.is_empty(), "{} of {issued} failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);

    // The previous key's tokens are still valid, and the key cannot be
    // retired while they may be.
    for token in [&first, &before_activation] {
        assert_eq!(app.introspect(&introspector, token).await["active"], true);
    }
    let retire_old = format!("/v1/keys/{old_kid}/retire");
    let (status, body) = app.api(Method::POST, &retire_old, &admin, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("valid until"), "{body}");
    let (status, body) = app.api(Method::POST, &format!("/v1/keys/{new_kid}/retire"), &admin, None).await;
    assert_eq!(status, 409, "the signing key cannot be retired: {body}");
    let (status, body) = app.api(Method::POST, "/v1/keys/rotate", &admin, Some(json!({"pre_publish": "1h"}))).await;
    assert_eq!(status, 201, "{body}");
    let third = body["key"]["kid"].as_str().unwrap().to_owned();
    let (status, body) = app.api(Method::POST, "/v1/keys/rotate", &admin, None).await;
    assert_eq!(status, 409, "one pending rotation at a time: {body}");

    // Once every token the old key signed has expired, the leader retires
    // it: gone from the JWKS, refused by introspection.
    app.clock.advance(Duration::from_secs(3600 + 120));
    let (rotated, retired) = app.broker.maintain_keys(app.clock.now()).await.unwrap();
    assert_eq!((rotated, retired), (None, vec![old_kid.clone()]));
    assert!(!published(&app).await.contains(&old_kid));
    assert_eq!(kid_of(&fresh_token(&app).await), third, "the third key activated after its hour");

    let (status, body) = app.api(Method::GET, "/v1/keys", &admin, None).await;
    assert_eq!(status, 200, "{body}");
    let states: Vec<(&str, &str)> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["kid"].as_str().unwrap(), k["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [(old_kid.as_str(), "retired"), (new_kid.as_str(), "verifying"), (third.as_str(), "signing")]);

    // A key retired by force while its tokens are still valid: they stop
    // verifying at once, and the key leaves the JWKS.
    let by_third = fresh_token(&app).await;
    let (status, body) = app.api(Method::POST, "/v1/keys/rotate", &admin, Some(json!({"pre_publish": "0s"}))).await;
    assert_eq!(status, 201, "{body}");
    let fourth = body["key"]["kid"].as_str().unwrap().to_owned();
    assert_eq!(kid_of(&fresh_token(&app).await), fourth);
    assert_eq!(app.introspect(&introspector, &by_third).await["active"], true);
    let retire_third = format!("/v1/keys/{third}/retire");
    assert_eq!(app.api(Method::POST, &retire_third, &admin, None).await.0, 409);
    let (status, body) = app.api(Method::POST, &retire_third, &admin, Some(json!({"force": true}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"]["state"], "retired");
    assert_eq!(app.introspect(&introspector, &by_third).await, json!({"active": false}));
    assert!(!published(&app).await.contains(&third));

    // Only an admin rotates or retires; every change is in the audit log.
    let operator = app.admin_token(Role::Operator).await;
    assert_eq!(app.api(Method::POST, "/v1/keys/rotate", &operator, None).await.0, 403);
    assert_eq!(app.events("key.rotated").await.len(), 3);
    assert_eq!(app.events("key.retired").await.len(), 2);
    let report = app.broker.verify_audit(None, None).await.unwrap();
    assert!(report.ok, "{:?}", report.first_problem);
    println!("ROTATION issued_under_load={issued} verification_failures=0");
}
