//! `kill -9` under load, repeatedly: after each restart, every credential
//! a client received has its issuance record, the database passes its
//! integrity check, and the audit chain verifies.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_halflife");
const ROUNDS: usize = 3;
/// Credentials received in a round before the server is killed.
const PER_ROUND: usize = 150;
const CLIENTS: usize = 8;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn kill_9_under_load_loses_no_record_and_corrupts_nothing() {
    halflife::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = TestDb::create(dir.path()).await else { return };
    let rsa = Arc::new(TestIssuer::rsa(RSA_ISS));
    let d = dir.path().display();
    std::fs::write(dir.path().join("k8s.jwks"), rsa.jwks().to_string()).unwrap();
    std::fs::write(dir.path().join("spire.jwks"), TestIssuer::ec(EC_ISS).jwks().to_string()).unwrap();
    std::fs::write(dir.path().join("catalog.toml"), default_catalog()).unwrap();
    let config = dir.path().join("halflife.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[database]
url = "{url}"
[keys]
dir = "{d}/keys"
kek = "{kek}"
[bootstrap]
apply = ["{d}/catalog.toml"]
[rate_limits]
per_workload_per_minute = 0
[[issuers]]
name = "k8s"
issuer = "{RSA_ISS}"
jwks_file = "{d}/k8s.jwks"
algorithms = ["RS256"]
audience = "{AUD}"
[[issuers]]
name = "spire"
issuer = "{EC_ISS}"
jwks_file = "{d}/spire.jwks"
algorithms = ["ES256"]
audience = "{AUD}"
"#,
            url = db.url(),
            kek = kek_b64()
        ),
    )
    .unwrap();

    let client = reqwest::Client::new();
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut kills = 0;
    for round in 1..=ROUNDS {
        let port = free_port();
        let log = std::fs::File::create(dir.path().join(format!("server-{round}.log"))).unwrap();
        let child = Command::new(BIN)
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("HALFLIFE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = Server(child);
        let base = format!("http://127.0.0.1:{port}");
        let ready = eventually(Duration::from_secs(30), || async {
            matches!(client.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        let log_text = || std::fs::read_to_string(dir.path().join(format!("server-{round}.log"))).unwrap();
        assert!(ready, "round {round}: the server did not come back: {}", log_text());

        let target = round * PER_ROUND;
        let mut workers = Vec::new();
        for _ in 0..CLIENTS {
            let (client, base, rsa, received) = (client.clone(), base.clone(), rsa.clone(), received.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let now = halflife::clock::Clock::now(&halflife::clock::SystemClock).unix_timestamp();
                    let form = [
                        ("grant_type", TOKEN_EXCHANGE.to_owned()),
                        ("subject_token_type", JWT_TYPE.to_owned()),
                        ("subject_token", rsa.token(RSA_SUBJECT, now)),
                    ];
                    let Ok(response) = client.post(format!("{base}/oauth2/token")).form(&form).send().await else {
                        return; // the server is gone
                    };
                    let Ok(body) = response.json::<Value>().await else { return };
                    if let Some(token) = body["access_token"].as_str() {
                        let jti = parts(token).1["jti"].as_str().unwrap().to_owned();
                        let mut received = received.lock().unwrap();
                        received.push(jti);
                        if received.len() >= target {
                            return;
                        }
                    }
                }
            }));
        }
        // Kill as soon as the round's credentials are out, while the other
        // clients still have exchanges in flight.
        let reached = eventually(Duration::from_secs(60), || async { received.lock().unwrap().len() >= target }).await;
        assert!(reached, "round {round}: exchanges stalled: {}", log_text());
        assert!(Command::new("kill").args(["-9", &server.0.id().to_string()]).status().unwrap().success());
        let _ = server.0.wait();
        kills += 1;
        for worker in workers {
            worker.await.unwrap();
        }
        drop(server);
    }

    // Every jti a client received has its credential row and its event.
    let received = received.lock().unwrap().clone();
    let mut raw = db.raw().await;
    let mut missing = Vec::new();
    for jti in &received {
        let events = raw
            .scalar(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE kind = 'credential.issued' AND {}",
                raw.id_is("jti", jti)
            ))
            .await;
        let rows = raw.scalar(&format!("SELECT COUNT(*) FROM credentials WHERE {}", raw.id_is("jti", jti))).await;
        if events != 1 || rows != 1 {
            missing.push(jti.clone());
        }
    }
    if let RawDb::Sqlite(c) = &mut raw {
        let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(c).await.unwrap();
        assert_eq!(check, "ok");
    }
    drop(raw);

    // The chain verifies, read by a fresh broker on the same database.
    let config = halflife::config::Config::load(&config).unwrap();
    let app = halflife::app::App::build(config, Arc::new(halflife::clock::SystemClock)).await.unwrap();
    let report = app.broker().verify_audit(None, None).await.unwrap();
    assert!(report.ok, "audit chain broken after kill -9: {:?}", report.first_problem);
    assert!(report.events_checked >= u64::try_from(received.len()).unwrap());

    println!("CRASH kills={kills} received={} missing={}", received.len(), missing.len());
    scoreboard("crash", kills, missing.len());
    assert!(missing.is_empty(), "credentials without a record after kill -9: {missing:?}");
}
