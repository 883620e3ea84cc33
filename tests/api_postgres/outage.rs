//! PostgreSQL that hangs (connections open, nothing answers) or turns
//! read-only (as after a failover to a standby): exchanges answer 503 with
//! no credential within a bounded time, and service resumes by itself.
//! A stopped database is in `replicas.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

fn server_address() -> Option<SocketAddr> {
    let url = url::Url::parse(&std::env::var("HALFLIFE_TEST_DATABASE_URL").ok()?).ok()?;
    format!("{}:{}", url.host_str()?, url.port().unwrap_or(5432)).parse().ok()
}

/// `n` exchanges, one after another: (status, body, seconds taken).
async fn burst(app: &TestApp, n: usize) -> Vec<(u16, Value, f64)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let response = app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        out.push((status, body, started.elapsed().as_secs_f64()));
    }
    out
}

/// Exchanges until one is served (polling for at most 20 s).
async fn until_served(app: &TestApp) -> (bool, Vec<(u16, Value, f64)>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answers = Vec::new();
    while Instant::now() < deadline {
        let answer = burst(app, 1).await;
        let served = answer[0].0 == 200;
        answers.extend(answer);
        if served {
            return (true, answers);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (false, answers)
}

/// Every 200 has its issuance event; every other answer is a 503 without a
/// token. Returns how many 503s there were.
async fn check(app: &TestApp, answers: &[(u16, Value, f64)]) -> usize {
    let issued: Vec<String> = app.events("credential.issued").await.into_iter().filter_map(|e| e.jti).collect();
    let mut refused = 0;
    for (status, body, _) in answers {
        assert!(*status == 200 || *status == 503, "only 200 or 503 may answer: {status} {body}");
        if *status == 200 {
            let jti = parts(body["access_token"].as_str().unwrap()).1["jti"].as_str().unwrap().to_owned();
            assert!(issued.contains(&jti), "credential {jti} has no issuance event");
        } else {
            assert!(body.get("access_token").is_none() && body["error"] == "temporarily_unavailable", "{body}");
            refused += 1;
        }
    }
    refused
}

#[tokio::test]
async fn a_hung_database_means_bounded_503s_then_recovery() {
    let Some(target) = server_address() else { return };
    let proxy = Proxy::start(target).await;
    let options = Options { busy_timeout: "300ms", postgres_via: Some(proxy.port), ..Options::default() };
    let Some(app) = spawn_with(options).await else { return };
    let before = burst(&app, 3).await;
    assert!(before.iter().all(|(s, _, _)| *s == 200));

    proxy.stall();
    let hung = burst(&app, 4).await;
    proxy.resume();
    let statuses: Vec<u16> = hung.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(statuses, [503; 4], "a hung database must refuse: {hung:?}");
    // Bounded: twice the busy timeout for the write, plus a margin for the
    // machine; never the request timeout (10 s).
    assert!(hung.iter().all(|(_, _, secs)| *secs < 5.0), "503 took too long: {hung:?}");

    let (recovered, after) = until_served(&app).await;
    assert!(recovered, "service did not resume after the database answered again");
    let answers: Vec<_> = before.into_iter().chain(hung).chain(after).collect();
    let refused = check(&app, &answers).await;
    scoreboard("outage", refused, 0);
}

#[tokio::test]
async fn a_read_only_database_means_503s_then_recovery() {
    let Some(app) = spawn_with(Options { busy_timeout: "300ms", ..Options::default() }).await else { return };
    let TestDb::Postgres(db) = app.db.as_ref() else { return };
    let name = url::Url::parse(&db.url).unwrap().path().trim_start_matches('/').to_owned();
    let before = burst(&app, 3).await;
    assert!(before.iter().all(|(s, _, _)| *s == 200));

    // What a failover to a standby looks like to the broker: every session
    // it opens from now on is read-only, and its open ones are gone.
    let mut admin = app.raw().await;
    let reconnect_all = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    );
    admin.execute(&format!("ALTER DATABASE {name} SET default_transaction_read_only = on")).await.unwrap();
    admin.execute(&reconnect_all).await.unwrap();
    let mut read_only = Vec::new();
    for _ in 0..3 {
        read_only.extend(burst(&app, 4).await);
    }
    let refused = read_only.iter().filter(|(s, _, _)| *s == 503).count();
    admin.execute(&format!("ALTER DATABASE {name} RESET default_transaction_read_only")).await.unwrap();
    admin.execute(&reconnect_all).await.unwrap();
    // The first attempts after the reset may land on connections killed
    // above; from then on the broker must serve.
    assert!(refused >= 10, "writes on a read-only database: {read_only:?}");

    let (recovered, mut after) = until_served(&app).await;
    assert!(recovered, "service did not resume after the database became writable");
    after.extend(burst(&app, 3).await);
    assert!(after.iter().rev().take(3).all(|(s, _, _)| *s == 200), "{after:?}");
    let answers: Vec<_> = before.into_iter().chain(read_only).chain(after).collect();
    let refused = check(&app, &answers).await;
    scoreboard("outage", refused, 0);
}
