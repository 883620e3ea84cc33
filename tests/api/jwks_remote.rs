//! Issuers whose keys are fetched from a JWKS URI.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use serde_json::Value;
use tokio::sync::RwLock;

use crate::helpers::*;

const REMOTE_ISS: &str = "https://oidc.remote.example";
const REMOTE_SUBJECT: &str = "spiffe://remote.example/ns/ai/sa/agent";

struct Upstream {
    url: String,
    jwks: Arc<RwLock<Value>>,
    hits: Arc<AtomicUsize>,
}

async fn upstream(initial: Value) -> Upstream {
    let jwks = Arc::new(RwLock::new(initial));
    let hits = Arc::new(AtomicUsize::new(0));
    let (j, h) = (jwks.clone(), hits.clone());
    let router = Router::new().route(
        "/jwks",
        get(move || {
            let (j, h) = (j.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                axum::Json(j.read().await.clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Upstream { url: format!("http://{addr}/jwks"), jwks, hits }
}

fn remote_catalog() -> String {
    format!(
        "{}\n[[grants]]\nid = \"agent-remote\"\nsystem = \"indexer\"\nissuer = \"remote\"\nsubject = \"{REMOTE_SUBJECT}\"\naudiences = [\"docs-api\"]\nmax_ttl = \"5m\"\n",
        default_catalog()
    )
}

#[tokio::test]
async fn keys_are_fetched_refreshed_on_unknown_kid_and_rate_limited() {
    let first = TestIssuer::ec(REMOTE_ISS);
    let up = upstream(first.jwks()).await;
    let Some(app) = spawn_with(Options {
        extra_config: format!(
            "[[issuers]]\nname = \"remote\"\nissuer = \"{REMOTE_ISS}\"\njwks_uri = \"{}\"\nalgorithms = [\"ES256\"]\naudience = \"{AUD}\"\njwks_refresh_interval = \"1h\"\njwks_refresh_cooldown = \"1h\"\njwks_max_stale = \"2h\"\n",
            up.url
        ),
        catalog: remote_catalog(),
        ..Options::default()
    })
    .await
    else {
        return;
    };

    // Ready only once the JWKS has been fetched.
    let ready = eventually(Duration::from_secs(10), || async {
        app.client.get(app.url("/readyz")).send().await.unwrap().status() == 200
    })
    .await;
    assert!(ready, "readyz never became ready");
    app.exchange_ok(&first.token(REMOTE_SUBJECT, app.now()), &[]).await;
    let after_start = up.hits.load(Ordering::SeqCst);

    // The issuer rotates: a token with a new kid triggers one refetch.
    let second = TestIssuer::ec(REMOTE_ISS);
    *up.jwks.write().await = serde_json::json!({"keys": [first.public_jwk, second.public_jwk]});
    app.exchange_ok(&second.token(REMOTE_SUBJECT, app.now()), &[]).await;
    assert_eq!(up.hits.load(Ordering::SeqCst), after_start + 1);

    // A flood of unknown kids within the cooldown causes no further fetches.
    for i in 0..20 {
        let mut stranger = TestIssuer::ec(REMOTE_ISS);
        stranger.kid = format!("random-{i}");
        let response = app.exchange(&stranger.token(REMOTE_SUBJECT, app.now()), &[]).await;
        assert_eq!(response.status(), 400);
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), after_start + 1, "refetches must be rate limited");

    // The upstream breaks: a refresh fails, and the last good keys keep working.
    *up.jwks.write().await = serde_json::json!({"nonsense": true});
    let remote = app
        .broker
        .verifier
        .issuers()
        .find_map(|i| match &i.keys {
            halflife::attest::jwt::IssuerKeys::Remote(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    let hits = up.hits.load(Ordering::SeqCst);
    assert!(remote.refresh().await.is_err());
    assert_eq!(up.hits.load(Ordering::SeqCst), hits + 1);
    app.exchange_ok(&first.token(REMOTE_SUBJECT, app.now()), &[]).await;
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let fetches = format!("halflife_jwks_fetches_total{{issuer=\"remote\"}} {}", hits + 1);
    assert!(metrics.contains(&fetches), "{metrics}");
    assert!(metrics.contains("halflife_jwks_fetch_failures_total{issuer=\"remote\"} 1"), "{metrics}");

    // Past jwks_max_stale without a good fetch, the cached keys are no longer
    // trusted: verification fails closed and the broker reports not ready.
    app.clock.advance(Duration::from_secs(2 * 3600 + 1));
    let response = app.exchange(&first.token(REMOTE_SUBJECT, app.now()), &[]).await;
    assert_eq!(response.status(), 400);
    let denials = app.events("credential.denied").await;
    assert!(denials.last().unwrap().reason.as_deref().unwrap().contains("unavailable"), "{denials:?}");
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 503);

    // The upstream recovers: the next refresh restores service.
    *up.jwks.write().await = serde_json::json!({"keys": [first.public_jwk, second.public_jwk]});
    remote.refresh().await.unwrap();
    app.exchange_ok(&first.token(REMOTE_SUBJECT, app.now()), &[]).await;
}

/// A token verified once is remembered only for as long as the keys that
/// verified it: when the issuer withdraws its key, the very same token,
/// presented again byte for byte, is refused; and it is never accepted
/// past its expiry.
#[tokio::test]
async fn a_remembered_attestation_dies_with_its_key_and_its_expiry() {
    let first = TestIssuer::ec(REMOTE_ISS);
    let second = TestIssuer::ec(REMOTE_ISS);
    let up = upstream(serde_json::json!({"keys": [first.public_jwk, second.public_jwk]})).await;
    let Some(app) = spawn_with(Options {
        extra_config: format!(
            "[[issuers]]\nname = \"remote\"\nissuer = \"{REMOTE_ISS}\"\njwks_uri = \"{}\"\nalgorithms = [\"ES256\"]\naudience = \"{AUD}\"\njwks_refresh_interval = \"1h\"\njwks_refresh_cooldown = \"1h\"\n",
            up.url
        ),
        catalog: remote_catalog(),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let token = first.token(REMOTE_SUBJECT, app.now());
    for _ in 0..3 {
        app.exchange_ok(&token, &[]).await;
    }
    // The issuer withdraws the first key; the next refresh drops it.
    *up.jwks.write().await = serde_json::json!({"keys": [second.public_jwk]});
    let remote = app
        .broker
        .verifier
        .issuers()
        .find_map(|i| match &i.keys {
            halflife::attest::jwt::IssuerKeys::Remote(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    remote.refresh().await.unwrap();
    let response = app.exchange(&token, &[]).await;
    assert_eq!(response.status(), 400, "a withdrawn key verifies nothing, remembered or not");
    // A token of the remaining key, remembered, stops at its expiry (600 s).
    let other = second.token(REMOTE_SUBJECT, app.now());
    app.exchange_ok(&other, &[]).await;
    app.clock.advance(Duration::from_secs(600 + 31));
    let response = app.exchange(&other, &[]).await;
    assert_eq!(response.status(), 400);
    let denials = app.events("credential.denied").await;
    assert!(denials.last().unwrap().reason.as_deref().unwrap().contains("expired"), "{denials:?}");
}

#[tokio::test]
async fn plain_http_jwks_on_a_public_host_is_refused() {
    let err = halflife::config::Config::from_toml(
        "[dev]\nenabled = true\n[[issuers]]\nname = \"x\"\nissuer = \"https://x\"\njwks_uri = \"http://x.example/jwks\"\naudience = \"halflife\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("issuers[0].jwks_uri"), "{err}");
}
