//! Rate limits on the token endpoint: request N+1 gets 429 with
//! `Retry-After`, nothing is issued, other workloads are unaffected, and a
//! source that sends too many failed attestations is refused unchecked.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

const LIMITS: &str = "
[rate_limits]
per_workload_per_minute = 3
failures_per_source_per_minute = 2
";

async fn assert_throttled(response: reqwest::Response, retry_after: u64, whose: &str) {
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], retry_after.to_string().as_str());
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert_eq!(body["retry_after"], retry_after, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains(whose), "{body}");
    assert!(body.get("access_token").is_none());
}

async fn refused_count(app: &TestApp, limit: &str) -> u64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let prefix = format!("halflife_rate_limited_total{{limit=\"{limit}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn a_workload_over_its_rate_waits_and_others_are_served() {
    let Some(app) = spawn_with(Options { extra_config: LIMITS.into(), ..Options::default() }).await else { return };
    for _ in 0..3 {
        app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    }
    let credentials = app.credential_count().await;
    let denials = app.events("credential.denied").await.len();
    // Quota 3/minute: one exchange comes back every 20 s.
    assert_throttled(app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await, 20, "this workload").await;
    assert_eq!(app.credential_count().await, credentials, "nothing is issued when throttled");
    assert_eq!(app.events("credential.denied").await.len(), denials, "throttling is counted, not audited");
    assert_eq!(refused_count(&app, "workload").await, 1);

    // Another workload is not affected.
    app.exchange_ok(&app.ec.token(EC_SUBJECT, app.now()), &[("audience", "search-api")]).await;

    app.clock.advance(Duration::from_secs(19));
    assert_throttled(app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await, 1, "this workload").await;
    app.clock.advance(Duration::from_secs(1));
    app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    assert_eq!(refused_count(&app, "workload").await, 2);
}

#[tokio::test]
async fn a_source_sending_forgeries_is_refused_before_verification() {
    let Some(app) = spawn_with(Options { extra_config: LIMITS.into(), ..Options::default() }).await else { return };
    let forged = || {
        let mut impostor = TestIssuer::rsa(RSA_ISS);
        impostor.kid = app.rsa.kid.clone();
        impostor.token(RSA_SUBJECT, app.now())
    };
    // Successes never count against the source.
    app.exchange_ok(&app.ec.token(EC_SUBJECT, app.now()), &[("audience", "search-api")]).await;
    // The allowance (2) and one more failure are checked and recorded...
    for _ in 0..3 {
        assert_eq!(app.exchange(&forged(), &[]).await.status(), 400);
    }
    let denials = app.events("credential.denied").await.len();
    assert_eq!(denials, 3);
    // ...then the source is refused unchecked, even with a valid token.
    assert_throttled(app.exchange(&forged(), &[]).await, 30, "failed attestations").await;
    assert_throttled(app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await, 30, "failed attestations").await;
    assert_eq!(app.events("credential.denied").await.len(), denials);
    assert_eq!(refused_count(&app, "source").await, 2);

    app.clock.advance(Duration::from_secs(30));
    app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
}
