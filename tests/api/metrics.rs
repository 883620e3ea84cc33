//! `/metrics`: what an operator graphs and alerts on, counted as it
//! happens, named `halflife_*`, with no identity or token in any label.

use std::time::Duration;

use halflife::domain::model::Role;
use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

/// The value of one sample line (`name{labels} value`), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.parse().unwrap()))
}

async fn scrape(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_exchanges_introspections_revocations_and_the_reaper() {
    let Some(app) = spawn_app().await else { return };
    let introspector = app.admin_token(Role::Introspector).await;
    let operator = app.admin_token(Role::Operator).await;
    let commits_before = sample(&scrape(&app).await, "halflife_commit_duration_seconds_count").unwrap();

    let issued: Vec<String> = {
        let mut tokens = Vec::new();
        for _ in 0..3 {
            let body = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
            tokens.push(body["access_token"].as_str().unwrap().to_owned());
        }
        tokens
    };
    let forged = TestIssuer::rsa("https://stranger.example").token(RSA_SUBJECT, app.now());
    assert_eq!(app.exchange(&forged, &[]).await.status(), 400);
    assert_eq!(app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[("scope", "admin")]).await.status(), 400);
    assert_eq!(app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[("requested_ttl", "x")]).await.status(), 400);
    assert_eq!(app.introspect(&introspector, &issued[0]).await["active"], true);
    assert_eq!(app.introspect(&introspector, "not-a-token").await["active"], false);
    let revoked = app.client.post(app.url("/oauth2/revoke")).form(&[("token", &issued[1])]).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    let (status, _) = app
        .api(Method::POST, "/v1/systems/summarizer/revoke", &operator, Some(json!({"reason": "metrics drill"})))
        .await;
    assert_eq!(status, 200);
    app.clock.advance(Duration::from_secs(31 * 86400));
    app.reap().await;

    let text = scrape(&app).await;
    let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
    assert_eq!(get(r#"halflife_exchanges_total{outcome="issued",code=""}"#), 3.0);
    assert_eq!(get(r#"halflife_exchanges_total{outcome="denied",code="invalid_grant"}"#), 1.0);
    assert_eq!(get(r#"halflife_exchanges_total{outcome="denied",code="invalid_scope"}"#), 1.0);
    assert_eq!(get(r#"halflife_exchanges_total{outcome="denied",code="invalid_request"}"#), 1.0);
    assert_eq!(get("halflife_issuance_duration_seconds_count"), 3.0);
    assert!(get("halflife_issuance_duration_seconds_sum") > 0.0);
    // Each exchange waits for the batch that holds its record; these
    // ran one after another, so each had a batch of its own.
    assert!(get("halflife_commit_duration_seconds_count") >= commits_before + 3.0);
    assert!(get("halflife_commit_duration_seconds_sum") > 0.0);
    assert_eq!(get(r#"halflife_introspections_total{result="active"}"#), 1.0);
    assert_eq!(get(r#"halflife_introspections_total{result="inactive"}"#), 1.0);
    assert_eq!(get(r#"halflife_revocations_total{kind="holder"}"#), 1.0);
    assert_eq!(get(r#"halflife_revocations_total{kind="system"}"#), 1.0);
    assert!(get("halflife_reaper_runs_total") >= 1.0);
    assert_eq!(get("halflife_reaper_suspensions_total"), 1.0, "the summarizer's pilot ended");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("halflife_"), "unprefixed metric: {line}");
        assert!(!line.contains(RSA_SUBJECT) && !line.contains("eyJ"), "identity or token in a label: {line}");
    }
}

#[tokio::test]
async fn active_credentials_are_counted_per_system_and_drop_on_revocation() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    for _ in 0..2 {
        app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    }
    app.exchange_ok(&app.ec.token(EC_SUBJECT, app.now()), &[("audience", "docs-api")]).await;
    let text = scrape(&app).await;
    assert_eq!(sample(&text, r#"halflife_active_credentials{system="summarizer"}"#), Some(2.0), "{text}");
    assert_eq!(sample(&text, r#"halflife_active_credentials{system="indexer"}"#), Some(1.0), "{text}");

    let (status, _) =
        app.api(Method::POST, "/v1/systems/summarizer/revoke", &operator, Some(json!({"reason": "drill"}))).await;
    assert_eq!(status, 200);
    let text = scrape(&app).await;
    assert_eq!(sample(&text, r#"halflife_active_credentials{system="summarizer"}"#), None, "{text}");
    assert_eq!(sample(&text, r#"halflife_active_credentials{system="indexer"}"#), Some(1.0));
    // Expiry ends the rest.
    app.clock.advance(Duration::from_secs(3601));
    let text = scrape(&app).await;
    assert_eq!(sample(&text, r#"halflife_active_credentials{system="indexer"}"#), None, "{text}");
}

#[tokio::test]
async fn storage_outages_are_counted() {
    let Some(app) = spawn_with(Options { busy_timeout: "200ms", ..Options::default() }).await else { return };
    let lock = app.lock_database().await;
    assert_eq!(app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await.status(), 503);
    drop(lock);
    let text = scrape(&app).await;
    assert_eq!(sample(&text, "halflife_storage_unavailable_total"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, r#"halflife_exchanges_total{outcome="unavailable",code="temporarily_unavailable"}"#),
        Some(1.0)
    );
}
