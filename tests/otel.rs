//! With the `otel` feature (`cargo test --features otel --test otel`), the
//! broker exports its request spans over OTLP/HTTP to the endpoint in
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, and flushes them when it stops.
#![cfg(feature = "otel")]
#![expect(clippy::unwrap_used, reason = "test setup aborts the test on failure")]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn request_spans_reach_an_otlp_collector_and_are_flushed_on_stop() {
    halflife::crypto::install();
    // A collector that keeps every body POSTed to /v1/traces.
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let store = Arc::clone(&received);
    let collector = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let store = Arc::clone(&store);
            async move {
                store.lock().unwrap().push(body);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["halflife.toml", "dev-catalog.toml"] {
        std::fs::copy(root.join("config").join(file), dir.path().join("config").join(file)).unwrap();
    }
    let port = free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_halflife"))
        .arg("serve")
        .current_dir(dir.path())
        .env("HALFLIFE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector_addr}"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..300 {
        if client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the server did not start");
    let refused = client.post(format!("{base}/oauth2/token")).form(&[("grant_type", "password")]).send().await.unwrap();
    assert_eq!(refused.status(), 400);

    // SIGTERM: the server stops and the exporter flushes what it holds.
    assert!(Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || server.wait()).await.unwrap().unwrap();
    assert!(status.success());

    let bodies = received.lock().unwrap().clone();
    assert!(!bodies.is_empty(), "no spans reached the collector");
    let all: Vec<u8> = bodies.iter().flat_map(|b| b.iter().copied()).collect();
    let contains = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"halflife"), "the service name is missing from the exported spans");
    assert!(contains(b"/oauth2/token"), "the token request's span is missing");
}
