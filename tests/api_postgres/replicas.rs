//! Several `halflife serve` processes sharing one PostgreSQL database, the
//! way production runs them behind a load balancer.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use halflife::clock::{Clock, SystemClock};
use halflife::domain::model::Role;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::helpers::*;

/// The issuer name every replica puts in tokens: the load balancer's URL.
const PUBLIC_URL: &str = "https://halflife.test";
const PILOT_SUBJECT: &str = "spiffe://prod.example/ns/pilot/sa/agent";
const TICK_MS: u64 = 300;

struct Replica {
    child: Child,
    base: String,
    port: u16,
}

struct Cluster {
    db: TestDatabase,
    dir: TempDir,
    issuer: TestIssuer,
    client: reqwest::Client,
    replicas: Vec<Replica>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn now() -> i64 {
    SystemClock.now().unix_timestamp()
}

impl Cluster {
    /// A database, a catalog whose `pilot` system's pilot ends at
    /// `pilot_ends_at`, and no replicas yet.
    async fn new(pilot_ends_at: i64) -> Option<Self> {
        let db = TestDatabase::create().await?;
        let dir = tempfile::tempdir().unwrap();
        let issuer = TestIssuer::ec(EC_ISS);
        std::fs::write(dir.path().join("spire.jwks"), issuer.jwks().to_string()).unwrap();
        let pilot_end = time::OffsetDateTime::from_unix_timestamp(pilot_ends_at)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let catalog = format!(
            r#"{CATALOG_OWNERS}
{}
{}

[[grants]]
id = "indexer-spire"
system = "indexer"
issuer = "spire"
subject = "spiffe://prod.example/ns/ai/*"
audiences = ["docs-api"]
scopes = ["docs:read"]
max_ttl = "30m"

[[grants]]
id = "pilot-spire"
system = "pilot"
issuer = "spire"
subject = "{PILOT_SUBJECT}"
audiences = ["docs-api"]
scopes = ["docs:read"]
max_ttl = "30m"
"#,
            pilot_system("indexer", "Indexer", "Indexes documents", "30d"),
            pilot_system("pilot", "Pilot agent", "Tries things out", &pilot_end),
        );
        std::fs::write(dir.path().join("catalog.toml"), catalog).unwrap();
        halflife::crypto::install();
        Some(Self { db, dir, issuer, client: reqwest::Client::new(), replicas: Vec::new() })
    }

    /// Writes a replica's config (its own key directory: keys are shared
    /// through the database) and starts `halflife serve`.
    fn spawn(&self, database_url: &str) -> Replica {
        let port = free_port();
        let d = self.dir.path().display();
        let own = self.dir.path().join(format!("replica-{port}"));
        std::fs::create_dir_all(&own).unwrap();
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "{PUBLIC_URL}"

[database]
url = "{database_url}"
busy_timeout = "500ms"

[keys]
dir = "{own}/keys"
kek = "{kek}"

[lifecycle]
tick = "{TICK_MS}ms"

[bootstrap]
apply = ["{d}/catalog.toml"]

[[issuers]]
name = "spire"
issuer = "{EC_ISS}"
jwks_file = "{d}/spire.jwks"
algorithms = ["ES256"]
audience = "{AUD}"
max_token_age = "1h"
"#,
            own = own.display(),
            kek = kek_b64(),
        );
        let path = own.join("halflife.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(own.join("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_halflife"))
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .env_remove("HALFLIFE_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Replica { child, base: format!("http://127.0.0.1:{port}"), port }
    }

    async fn wait_ready(&self, replica: &Replica) {
        let url = format!("{}/readyz", replica.base);
        let ready = eventually(Duration::from_secs(30), || async {
            self.client.get(&url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ready, "replica on port {} did not become ready; log: {}", replica.port, self.log(replica));
    }

    fn log(&self, replica: &Replica) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("replica-{}/log", replica.port))).unwrap_or_default()
    }

    /// Starts `n` replicas at once (racing to create the signing key).
    async fn start(&mut self, n: usize) {
        let started: Vec<Replica> = (0..n).map(|_| self.spawn(&self.db.url)).collect();
        for replica in &started {
            self.wait_ready(replica).await;
        }
        self.replicas = started;
    }

    async fn admin_token(&self, role: Role) -> String {
        let store = halflife::store::open(&halflife::store::OpenOptions {
            url: self.db.url.clone(),
            busy_timeout: Duration::from_secs(5),
            max_connections: 1,
            auto_migrate: false,
            application_name: "halflife test".into(),
        })
        .await
        .unwrap()
        .store;
        let (_, token) = halflife::broker::admin::create_admin_token(
            store.as_ref(),
            role,
            "test",
            halflife::broker::admin::DEFAULT_ADMIN_TOKEN_TTL,
            "test",
            SystemClock.now(),
        )
        .await
        .unwrap();
        token.expose_secret().to_owned()
    }

    async fn exchange(&self, base: &str, subject: &str) -> (u16, Value) {
        let attestation = self.issuer.token(subject, now());
        let form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token_type", JWT_TYPE),
            ("subject_token", attestation.as_str()),
            ("audience", "docs-api"),
        ];
        let response = self.client.post(format!("{base}/oauth2/token")).form(&form).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn active(&self, base: &str, introspector: &str, token: &str) -> bool {
        let response = self
            .client
            .post(format!("{base}/oauth2/introspect"))
            .bearer_auth(introspector)
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["active"] == true
    }

    async fn raw(&self) -> PgConnection {
        PgConnection::connect(&self.db.url).await.unwrap()
    }
}

#[tokio::test]
async fn a_revocation_through_one_replica_reaches_the_others_within_a_second() {
    let Some(mut cluster) = Cluster::new(now() + 86_400).await else { return };
    cluster.start(3).await;
    let introspector = cluster.admin_token(Role::Introspector).await;
    let operator = cluster.admin_token(Role::Operator).await;
    let [a, b, c] = [0, 1, 2].map(|i| cluster.replicas[i].base.clone());

    // One signing key, created by whichever replica came first, published
    // identically by all three.
    let mut jwks = Vec::new();
    for base in [&a, &b, &c] {
        jwks.push(
            cluster.client.get(format!("{base}/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap(),
        );
    }
    assert!(jwks.iter().all(|j| *j == jwks[0]), "replicas publish different keys: {jwks:?}");
    let mut db = cluster.raw().await;
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM signing_keys").fetch_one(&mut db).await.unwrap();
    assert_eq!(keys, 1, "replicas starting together must agree on one key");

    // A token issued by A is active everywhere; its holder revokes it through B.
    let (status, body) = cluster.exchange(&a, EC_SUBJECT).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert!(cluster.active(&b, &introspector, &token).await);
    assert!(cluster.active(&c, &introspector, &token).await);
    let revoked = cluster.client.post(format!("{b}/oauth2/revoke")).form(&[("token", token.as_str())]).send().await;
    assert_eq!(revoked.unwrap().status(), 200);
    let gone = eventually(Duration::from_secs(1), || async { !cluster.active(&c, &introspector, &token).await }).await;
    assert!(gone, "replica C still accepts a token revoked through B");

    // Revoking a whole system through C reaches A's tokens on B.
    let (_, body) = cluster.exchange(&a, EC_SUBJECT).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert!(cluster.active(&b, &introspector, &token).await);
    let response = cluster
        .client
        .post(format!("{c}/v1/systems/indexer/revoke"))
        .bearer_auth(&operator)
        .json(&json!({"reason": "key leak drill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let gone = eventually(Duration::from_secs(1), || async { !cluster.active(&b, &introspector, &token).await }).await;
    assert!(gone, "replica B still accepts a token of a system revoked through C");
}

/// The replica holding the leader lock, by its session's name.
async fn leader_port(cluster: &Cluster) -> Option<u16> {
    let mut db = cluster.raw().await;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE '%(leader lock)' \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(names.len() <= 1, "more than one leader: {names:?}");
    let name = names.first()?;
    cluster.replicas.iter().map(|r| r.port).find(|p| name.contains(&format!(":{p} ")))
}

#[tokio::test]
async fn when_the_leader_dies_another_replica_ends_the_pilot() {
    // The pilot ends a few seconds from now: after the leader is killed.
    let pilot_ends_at = now() + 8;
    let Some(mut cluster) = Cluster::new(pilot_ends_at).await else { return };
    cluster.start(3).await;
    let introspector = cluster.admin_token(Role::Introspector).await;
    let operator = cluster.admin_token(Role::Operator).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let leader = loop {
        if let Some(port) = leader_port(&cluster).await {
            break port;
        }
        assert!(tokio::time::Instant::now() < deadline, "no replica took the leader lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let survivor = cluster.replicas.iter().find(|r| r.port != leader).unwrap().base.clone();
    let (status, body) = cluster.exchange(&survivor, PILOT_SUBJECT).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();

    let index = cluster.replicas.iter().position(|r| r.port == leader).unwrap();
    cluster.replicas[index].child.kill().await.unwrap(); // SIGKILL: no clean shutdown
    assert!(now() < pilot_ends_at, "the leader must die before the pilot ends");

    // After the pilot ends, a surviving replica suspends the system and its
    // credentials stop working within two ticks (plus scheduling slack).
    let wait = Duration::from_secs(u64::try_from(pilot_ends_at - now()).unwrap_or(0))
        + Duration::from_millis(2 * TICK_MS)
        + Duration::from_secs(2);
    let suspended = eventually(wait, || async {
        let response =
            cluster.client.get(format!("{survivor}/v1/systems/pilot")).bearer_auth(&operator).send().await.unwrap();
        response.json::<Value>().await.unwrap()["state"] == "suspended"
    })
    .await;
    assert!(suspended, "no surviving replica ended the pilot; survivor log: {}", cluster.log(&cluster.replicas[0]));
    assert!(!cluster.active(&survivor, &introspector, &token).await);
    let new_leader = leader_port(&cluster).await;
    assert!(new_leader.is_some_and(|p| p != leader), "leadership did not move: {new_leader:?}");
}

#[tokio::test]
async fn concurrent_exchanges_on_three_replicas_keep_one_gapless_audit_chain() {
    let Some(mut cluster) = Cluster::new(now() + 86_400).await else { return };
    cluster.start(3).await;
    let auditor = cluster.admin_token(Role::Auditor).await;
    let cluster = Arc::new(cluster);
    let tasks: Vec<JoinHandle<(u16, Value)>> = (0..60)
        .map(|i| {
            let cluster = Arc::clone(&cluster);
            tokio::spawn(async move {
                let base = cluster.replicas[i % 3].base.clone();
                cluster.exchange(&base, EC_SUBJECT).await
            })
        })
        .collect();
    let mut jtis = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        jtis.push(parts(body["access_token"].as_str().unwrap()).1["jti"].as_str().unwrap().to_owned());
    }

    let mut db = cluster.raw().await;
    let (count, last): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), MAX(seq) FROM audit_events").fetch_one(&mut db).await.unwrap();
    assert_eq!(count, last, "sequence numbers have gaps");
    let issued: Vec<String> =
        sqlx::query_scalar("SELECT halflife_id_text(jti) FROM audit_events WHERE kind = 'credential.issued'")
            .fetch_all(&mut db)
            .await
            .unwrap();
    for jti in &jtis {
        assert!(issued.contains(jti), "issued credential {jti} has no issuance event");
    }
    let report: Value = cluster
        .client
        .get(format!("{}/v1/audit/verify", cluster.replicas[2].base))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["events_checked"], count, "{report}");
}

#[tokio::test]
async fn losing_the_database_mid_load_means_503s_then_recovery_and_no_unrecorded_credential() {
    let Some(mut cluster) = Cluster::new(now() + 86_400).await else { return };
    let db_url = url::Url::parse(&cluster.db.url).unwrap();
    let target: SocketAddr =
        format!("{}:{}", db_url.host_str().unwrap(), db_url.port().unwrap_or(5432)).parse().unwrap();
    let proxy = Proxy::start(target).await;
    let mut proxied = db_url.clone();
    proxied.set_host(Some("127.0.0.1")).unwrap();
    proxied.set_port(Some(proxy.port)).unwrap();
    let replica = cluster.spawn(proxied.as_str());
    cluster.wait_ready(&replica).await;
    let base = replica.base.clone();
    cluster.replicas.push(replica);
    let cluster = Arc::new(cluster);

    // Eight clients exchange in a loop and keep every answer.
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(u16, Value)>>> = Arc::default();
    let workers: Vec<JoinHandle<()>> = (0..8)
        .map(|_| {
            let (cluster, stop, results, base) =
                (Arc::clone(&cluster), Arc::clone(&stop), Arc::clone(&results), base.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let answer = cluster.exchange(&base, EC_SUBJECT).await;
                    results.lock().await.push(answer);
                }
            })
        })
        .collect();
    let count = |status: u16| {
        let results = Arc::clone(&results);
        async move { results.lock().await.iter().filter(|(s, _)| *s == status).count() }
    };

    assert!(eventually(Duration::from_secs(10), || async { count(200).await >= 20 }).await, "no load before the cut");
    proxy.cut().await;
    assert!(
        eventually(Duration::from_secs(15), || async { count(503).await >= 5 }).await,
        "exchanges must fail with 503 while the database is gone"
    );
    let served_before = count(200).await;
    proxy.restore();
    assert!(
        eventually(Duration::from_secs(20), || async { count(200).await >= served_before + 20 }).await,
        "service did not resume by itself after the database came back"
    );
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }

    let results = results.lock().await;
    let unexpected: Vec<_> = results.iter().filter(|(s, _)| *s != 200 && *s != 503).collect();
    assert!(unexpected.is_empty(), "only 200 or 503 are acceptable: {unexpected:?}");
    for (_, body) in results.iter().filter(|(s, _)| *s == 503) {
        assert!(body.get("access_token").is_none(), "a 503 carried a token: {body}");
    }
    let mut db = cluster.raw().await;
    let issued: Vec<String> =
        sqlx::query_scalar("SELECT halflife_id_text(jti) FROM audit_events WHERE kind = 'credential.issued'")
            .fetch_all(&mut db)
            .await
            .unwrap();
    for (_, body) in results.iter().filter(|(s, _)| *s == 200) {
        let jti = parts(body["access_token"].as_str().unwrap()).1["jti"].as_str().unwrap().to_owned();
        assert!(issued.contains(&jti), "a client holds credential {jti} that has no issuance event");
    }
}
