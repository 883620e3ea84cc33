//! Console pages over a log of 1,000,000 audit events.
//!
//! Run: `cargo bench --bench console`. Starts the broker in this process
//! on a SQLite database in a temporary directory, with ten pilot systems;
//! writes 1,000,000 events through the broker's own audit writer (hashed
//! and chained, a signed checkpoint every 1,000 events as the checkpointer
//! writes them, the last one 1,000 events before the head: the overview's
//! worst case); signs in to the console; then fetches the overview, a
//! system's page, and the first and a later page of that system's audit
//! search, 21 times each, and prints the median and the slowest time in
//! milliseconds. Client and server share the loopback, so the times are
//! an upper bound of the server's.
#![expect(clippy::unwrap_used, reason = "a benchmark aborts on setup failure")]
#![expect(clippy::expect_used, reason = "a benchmark aborts on setup failure")]

use std::sync::Arc;
use std::time::Instant;

use halflife::app::App;
use halflife::audit::{AuditEvent, Outcome, RequestMeta};
use halflife::clock::{Clock, SystemClock};
use halflife::config::Config;
use halflife::domain::model::Role;

#[path = "../tests/fixtures/catalog.rs"]
mod catalog;
use catalog::{OWNERS, pilot_system};

const EVENTS: i64 = 1_000_000;
const SYSTEMS: usize = 10;
/// Events written at once (each through the group-commit writer).
const IN_FLIGHT: usize = 512;
const RUNS: usize = 21;

#[tokio::main]
async fn main() {
    halflife::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let systems: String = (0..SYSTEMS)
        .map(|i| pilot_system(&format!("system-{i}"), &format!("System {i}"), "Benchmark", "30d"))
        .collect();
    std::fs::write(dir.path().join("catalog.toml"), format!("{OWNERS}\n{systems}")).unwrap();
    let config = Config::from_toml(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[database]
url = "sqlite://{d}/console.db"

[keys]
dir = "{d}/keys"

[dev]
enabled = true

[bootstrap]
apply = ["{d}/catalog.toml"]
"#
    ))
    .unwrap();
    let app = App::build(config, Arc::new(SystemClock)).await.unwrap().without_background_jobs();
    let broker = app.broker().clone();
    let base = app.base_url().to_owned();

    let started = Instant::now();
    let meta = RequestMeta { request_id: None, source: Some("127.0.0.1".into()) };
    let mut written = 0;
    while written < EVENTS {
        let batch = (EVENTS - written).min(1000);
        let mut pending = Vec::with_capacity(IN_FLIGHT);
        for i in written..written + batch {
            let mut event = AuditEvent::new("credential.issued", Outcome::Success, SystemClock.now(), &meta);
            let system = i as usize % SYSTEMS;
            event.system_id = Some(format!("system-{system}"));
            event.owners = Some("biz tech".into());
            event.jti = Some(format!("bench-{i:07}"));
            event.subject = Some(format!("spiffe://bench.example/ns/ai/sa/w{}", i % 1000));
            event.attestation_issuer = Some("https://k8s.example".into());
            let log = Arc::clone(&broker.log);
            pending.push(tokio::spawn(async move { log.record_event(event).await }));
            if pending.len() == IN_FLIGHT {
                for task in pending.drain(..) {
                    task.await.unwrap().unwrap();
                }
            }
        }
        for task in pending {
            task.await.unwrap().unwrap();
        }
        written += batch;
        // A checkpoint every thousand events, as the checkpointer writes
        // them, but none after the last thousand: the overview then
        // verifies a thousand events, the most it meets with the default
        // `audit.checkpoint_events`.
        if written < EVENTS {
            broker.write_checkpoint(SystemClock.now()).await.unwrap();
        }
    }
    println!("wrote {EVENTS} audit events in {:.1} s", started.elapsed().as_secs_f64());

    let (_, token) = halflife::broker::admin::create_admin_token(
        broker.admin_tokens.as_ref(),
        Role::Auditor,
        "bench",
        halflife::broker::admin::DEFAULT_ADMIN_TOKEN_TTL,
        "bench",
        SystemClock.now(),
    )
    .await
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let client =
        reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    use secrecy::ExposeSecret;
    let signed_in =
        client.post(format!("{base}/console/sign-in")).form(&[("token", token.expose_secret())]).send().await.unwrap();
    assert_eq!(signed_in.status(), 303, "signed in");

    let first = client.get(format!("{base}/console/audit?system=system-3")).send().await.unwrap().text().await.unwrap();
    let cursor =
        first.split("cursor=").nth(1).and_then(|rest| rest.split('"').next()).expect("an older page").to_owned();
    let pages = [
        ("overview", "/console/".to_owned()),
        ("system page", "/console/systems/system-3".to_owned()),
        ("audit search, first page", "/console/audit?system=system-3".to_owned()),
        ("audit search, older page", format!("/console/audit?system=system-3&cursor={cursor}")),
        ("audit search, one kind over all systems", "/console/audit?kind=credential.issued".to_owned()),
    ];
    for (name, path) in pages {
        let mut runs = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let t = Instant::now();
            let response = client.get(format!("{base}{path}")).send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            runs.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(status, 200, "{path}: {body}");
        }
        runs.sort_by(f64::total_cmp);
        println!("{name:<42} median {:>7.2} ms   slowest {:>7.2} ms", runs[RUNS / 2], runs[RUNS - 1]);
    }
    let overview = client.get(format!("{base}/console/")).send().await.unwrap().text().await.unwrap();
    assert!(overview.contains("The chain verifies"), "the overview verified the recent chain");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
