//! Load generator: a real `halflife serve` process driven over HTTP.
//!
//! Run: `cargo bench --bench load` (SQLite in a temporary directory), or
//! `cargo bench --bench load -- --database postgres://postgres@127.0.0.1:5432/test`
//! (creates and drops databases of its own on that server). Options:
//!
//! ```text
//! --database URL        sqlite (default) or a PostgreSQL server to create databases on
//! --duration SECS       length of each measured run (default 5)
//! --algorithm ALG       issued-token algorithm, ES256 (default) or EdDSA
//! --outstanding N,N,..  outstanding credentials for the revocation and growth runs
//!                       (default 10,1000,1000000)
//! --json FILE           also write the results as JSON
//! --paths-only          run only the other credential paths (5b below), to
//!                       compare two builds of one path quickly
//! --serve               only start a server and print a wrk command for it
//!                       (an independent cross-check), and curl commands for
//!                       its plain and mTLS token endpoints (as
//!                       scripts/profile-exchange sends); stop with Ctrl-C.
//!                       With one --outstanding N, N credentials are
//!                       preloaded first, as for the growth run with N
//!                       outstanding
//! ```
//!
//! What it measures, in this order:
//! 1. the crypto-only limit: RS256 attestation verification plus one
//!    signature of the issued token, in this process, on one core and on
//!    all cores; the ceiling no exchange rate can pass;
//! 2. start-up to ready and resident memory of an idle server;
//! 3. durable exchanges (RS256 attestation in, signed JWT out, credential
//!    and audit event committed before the answer) at concurrency 1, 16 and
//!    64, then at a fixed rate of half the peak (latency measured from each
//!    request's scheduled start, so a stall is not hidden; beside it the
//!    server's own view, from its `halflife_issuance_duration_seconds`
//!    histogram, and its database commits, from
//!    `halflife_commit_duration_seconds`);
//! 4. introspection of a valid token;
//! 5. storage per issuance record, in all and by table and index; then, on
//!    a fresh database, the other credential paths at concurrency 64: an
//!    opaque secret, a delegated exchange (a person's token with the
//!    workload's attestation as actor_token), a DPoP-bound exchange (a
//!    fresh ES256 proof per request, signed before the run) and a
//!    client_credentials exchange over mTLS (one of eight X.509-SVIDs per
//!    client connection, checked by the broker on every request; the
//!    connections' TLS handshakes are made before the run starts);
//! 6. for each outstanding count: a fresh database preloaded with that many
//!    unexpired credentials through the store, start-up to ready, resident
//!    memory once the credential index is loaded, exchanges at concurrency 64
//!    (cost growth), then revoke-by-system latency (covering those and the
//!    exchanges' credentials).
//!
//! The load generator shares the machine with the server: on a 2-core
//! machine they compete for the same cores, as the targets assume. Each
//! load run also prints the CPU time per request of the server and of the
//! generator, so a figure can be read against what the generator took.
#![expect(clippy::unwrap_used, reason = "a benchmark aborts on setup failure")]
#![expect(clippy::expect_used, reason = "a benchmark aborts on setup failure")]
#![expect(clippy::panic, reason = "a benchmark aborts on setup failure")]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use halflife::clock::{Clock, SystemClock};
use halflife::domain::values::{CredentialKind, GrantId, SystemId};
use halflife::keys::{SigningAlgorithm, SigningKey};
use halflife::store::{AuditEvent, Issuance, OpenOptions, Outcome, RequestMeta};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

mod support;

const ISS: &str = "https://bench.halflife.test";
const AUD: &str = "halflife";
const SYSTEM: &str = "bench";
/// The owners of the catalog's systems, shared with the test catalogs.
#[path = "../tests/fixtures/catalog.rs"]
mod catalog;
use catalog::{OWNERS as CATALOG_OWNERS, pilot_system};
/// Certificates for the mTLS listener, shared with the API tests.
#[path = "../tests/fixtures/pki.rs"]
mod pki;
const ATTESTATIONS: usize = 256;
/// Subjects of the people the delegated exchanges act for.
const PERSON_PREFIX: &str = "bench/people/";

struct Args {
    database: Option<String>,
    duration: Duration,
    algorithm: SigningAlgorithm,
    outstanding: Vec<u64>,
    json: Option<PathBuf>,
    paths_only: bool,
    serve: bool,
}

fn args() -> Args {
    let mut a = Args {
        database: None,
        duration: Duration::from_secs(5),
        algorithm: SigningAlgorithm::ES256,
        outstanding: vec![10, 1_000, 1_000_000],
        json: None,
        paths_only: false,
        serve: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--database" => a.database = Some(value()),
            "--duration" => a.duration = Duration::from_secs_f64(value().parse().expect("--duration SECS")),
            "--algorithm" => {
                a.algorithm = match value().as_str() {
                    "ES256" => SigningAlgorithm::ES256,
                    "EdDSA" => SigningAlgorithm::EdDSA,
                    other => panic!("--algorithm ES256 or EdDSA, not {other}"),
                }
            }
            "--outstanding" => {
                a.outstanding = value()
                    .split(',')
                    .filter(|n| !n.trim().is_empty())
                    .map(|n| n.trim().parse().expect("--outstanding N,N,..."))
                    .collect();
            }
            "--json" => a.json = Some(PathBuf::from(value())),
            "--paths-only" => a.paths_only = true,
            "--serve" => a.serve = true,
            other => panic!("unknown option {other}; see the comment at the top of benches/load.rs"),
        }
    }
    a
}

/// The RS256 attestation issuer the workloads' tokens come from.
struct Attester {
    key: support::RsaKey,
    kid: String,
    jwks: Value,
}

impl Attester {
    fn new() -> Self {
        let key = support::RsaKey::generate();
        let kid = "bench-rsa".to_owned();
        let jwks = json!({"keys": [{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(&key.n), "e": URL_SAFE_NO_PAD.encode(&key.e)}]});
        Self { key, kid, jwks }
    }

    /// Attestations for a few workload identities, valid for an hour.
    fn tokens(&self, count: usize) -> Vec<String> {
        self.signed(count, |i| format!("spiffe://bench.example/ns/ai/sa/agent-{}", i % 16))
    }

    /// Tokens of a few people (for delegated exchanges), valid for an hour.
    fn people(&self, count: usize) -> Vec<String> {
        self.signed(count, |i| format!("{PERSON_PREFIX}{}", i % 16))
    }

    fn signed(&self, count: usize, subject: impl Fn(usize) -> String) -> Vec<String> {
        let now = unix_now();
        let key = EncodingKey::from_rsa_der(&self.key.pkcs8);
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        (0..count)
            .map(|i| {
                let claims = json!({"iss": ISS, "sub": subject(i),
                    "aud": [AUD], "iat": now, "nbf": now, "exp": now + 3600, "jti": uuid::Uuid::new_v4().to_string()});
                jsonwebtoken::encode(&header, &claims, &key).unwrap()
            })
            .collect()
    }
}

fn unix_now() -> i64 {
    SystemClock.now().unix_timestamp()
}

// ---------------------------------------------------------------- disk

/// How long this machine's disk takes to make a small write durable, as
/// every commit does (SQLite's `synchronous = FULL`, PostgreSQL's WAL
/// flush): 8 KiB appended and `fdatasync`ed in a loop for `run`, in `dir`.
/// A commit can be no faster than this floor, and a stall here stalls every
/// request waiting on that commit.
fn disk_sync_latency(dir: &Path, run: Duration) -> RunResult {
    use std::io::Write as _;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = [0x5a_u8; 8192];
    let mut micros = Vec::new();
    let started = Instant::now();
    while started.elapsed() < run {
        file.write_all(&block).unwrap();
        let t = Instant::now();
        file.sync_data().unwrap();
        micros.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    drop(file);
    std::fs::remove_file(&path).unwrap();
    RunResult::from_latencies("write + fdatasync, 8 KiB", 1, micros, 0, started.elapsed(), None)
}

// ---------------------------------------------------------------- crypto

/// Exchanges per second if verification and signing were all there was.
fn crypto_limit(attester: &Attester, tokens: &[String], algorithm: SigningAlgorithm, threads: usize) -> f64 {
    let decoding = DecodingKey::from_rsa_raw_components(&attester.key.n, &attester.key.e);
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[AUD]);
    validation.set_issuer(&[ISS]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let (key, _) = SigningKey::generate(algorithm, SystemClock.now()).unwrap();
    let claims = json!({"iss": "http://127.0.0.1", "sub": "spiffe://bench.example/ns/ai/sa/agent-1",
        "aud": "reports-api", "exp": 2_000_000_000i64, "iat": 1_999_999_700i64, "nbf": 1_999_999_700i64,
        "jti": "0193b8f0-7c1e-7a6b-9d55-0e1f2a3b4c5d", "scope": "reports:read", "client_id": "x", "system": SYSTEM});
    let run = Duration::from_millis(1500);
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (decoding, validation, key, claims) = (&decoding, &validation, &key, &claims);
                s.spawn(move || {
                    let start = Instant::now();
                    let mut ops = 0u64;
                    while start.elapsed() < run {
                        let token = &tokens[(ops as usize + t) % tokens.len()];
                        std::hint::black_box(jsonwebtoken::decode::<Value>(token, decoding, validation).unwrap());
                        std::hint::black_box(key.sign_jwt("at+jwt", claims).unwrap());
                        ops += 1;
                    }
                    ops
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / run.as_secs_f64()
}

// ---------------------------------------------------------------- server

/// A database for one server: a file in the work directory, or a database
/// of its own on the PostgreSQL server named by `--database`.
struct Db {
    url: String,
    admin: Option<(String, String)>,
}

impl Db {
    async fn create(base: Option<&str>, dir: &Path, label: &str) -> Self {
        match base {
            None => Self { url: format!("sqlite://{}/{label}.db", dir.display()), admin: None },
            Some(base) => {
                let name = format!("halflife_bench_{}_{label}", std::process::id());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(base).await.unwrap();
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut conn).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
                let mut url = url::Url::parse(base).unwrap();
                url.set_path(&name);
                Self { url: url.to_string(), admin: Some((base.to_owned(), name)) }
            }
        }
    }

    async fn drop_database(self) {
        if let Some((base, name)) = self.admin {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base).await.unwrap();
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await.unwrap();
        }
    }

    /// Bytes the credentials and audit tables take with their indexes,
    /// largest first by table or index, and how many credentials there are.
    async fn footprint(&self, dir: &Path, label: &str) -> (Vec<(String, u64)>, i64) {
        let (parts, count): (Vec<(String, i64)>, i64) = if self.admin.is_some() {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url).await.unwrap();
            // Each table (with its TOAST data and maps) and each index.
            let parts = sqlx::query_as(
                "SELECT t.relname::text, pg_table_size(t.oid) FROM pg_class t \
                 WHERE t.relname IN ('credentials', 'audit_events') \
                 UNION ALL SELECT i.relname::text, pg_relation_size(i.oid) FROM pg_index x \
                 JOIN pg_class i ON i.oid = x.indexrelid \
                 WHERE x.indrelid IN ('credentials'::regclass, 'audit_events'::regclass)",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            let (count,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM credentials").fetch_one(&mut conn).await.unwrap();
            (parts, count)
        } else {
            let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&self.url).await.unwrap();
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await.unwrap();
            let parts = sqlx::query_as(
                "SELECT name, SUM(pgsize) FROM dbstat WHERE name IN ('credentials', 'audit_events') \
                 OR name IN (SELECT name FROM sqlite_master WHERE type = 'index' \
                             AND tbl_name IN ('credentials', 'audit_events')) GROUP BY name",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|_| {
                // A SQLite built without dbstat: the whole file.
                vec![("file".to_owned(), std::fs::metadata(dir.join(format!("{label}.db"))).unwrap().len() as i64)]
            });
            let (count,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM credentials").fetch_one(&mut conn).await.unwrap();
            (parts, count)
        };
        let mut parts: Vec<(String, u64)> = parts.into_iter().map(|(name, bytes)| (name, bytes as u64)).collect();
        parts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        (parts, count)
    }
}

struct Server {
    child: Child,
    base: String,
    config: PathBuf,
    log: PathBuf,
    started_in: Duration,
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write_config(dir: &Path, label: &str, db_url: &str, algorithm: SigningAlgorithm, attester: &Attester) -> PathBuf {
    std::fs::write(dir.join("bench.jwks"), attester.jwks.to_string()).unwrap();
    std::fs::write(
        dir.join("catalog.toml"),
        format!(
            r#"{CATALOG_OWNERS}
{}
{}

[[grants]]
id = "bench-agents"
system = "{SYSTEM}"
issuer = "bench"
subject = "spiffe://bench.example/ns/ai/sa/*"
audiences = ["reports-api"]
scopes = ["reports:read", "reports:write"]
default_scopes = ["reports:read"]
kinds = ["jwt", "secret"]
max_ttl = "15m"
on_behalf_of = [{{ issuer = "bench", subjects = ["{PERSON_PREFIX}*"] }}]
"#,
            pilot_system(SYSTEM, "Bench", "Load generation", "60d"),
            pilot_system("idle", "Idle", "Warms up the revocation path", "60d"),
        ),
    )
    .unwrap();
    let kek = STANDARD.encode([7u8; 32]);
    let alg = match algorithm {
        SigningAlgorithm::ES256 => "ES256",
        SigningAlgorithm::EdDSA => "EdDSA",
    };
    let d = dir.display();
    let path = dir.join(format!("{label}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[database]
url = "{db_url}"

[keys]
dir = "{d}/keys"
kek = "{kek}"
algorithm = "{alg}"

[bootstrap]
apply = ["{d}/catalog.toml"]

# The harness drives thousands of exchanges a second from 16 workloads on
# one address: it measures the broker, not its rate limits.
[rate_limits]
per_workload_per_minute = 0
failures_per_source_per_minute = 0

[[issuers]]
name = "bench"
issuer = "{ISS}"
jwks_file = "{d}/bench.jwks"
algorithms = ["RS256"]
audience = "{AUD}"
"#
        ),
    )
    .unwrap();
    path
}

/// The mTLS listener of a server: its address, the CA its certificate
/// comes from, and the X.509-SVIDs its clients present.
struct Mtls {
    addr: std::net::SocketAddr,
    pki: pki::ServerPki,
    leaves: Vec<pki::Leaf>,
}

/// Adds an mTLS listener to the configuration at `config`: a
/// `bench.example` trust domain whose X.509-SVIDs are the `bench` issuer's
/// workloads (so the `bench-agents` grant covers them, as it covers the
/// JWT attestations' subjects), and a few of its SVIDs for the clients.
fn add_mtls(dir: &Path, config: &Path) -> Mtls {
    let pki = pki::ServerPki::write(dir);
    let ca = pki::Ca::new("bench.example");
    std::fs::write(dir.join("bench.example.pem"), ca.pem()).unwrap();
    let leaves = (0..8).map(|i| ca.svid(&format!("spiffe://bench.example/ns/ai/sa/agent-{i}"))).collect();
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = dir.display();
    let mut text = std::fs::read_to_string(config).unwrap();
    write!(
        text,
        r#"
[mtls]
listen = "{addr}"
cert_file = "{d}/mtls-cert.pem"
key_file = "{d}/mtls-key.pem"

[[mtls.trust_domains]]
name = "bench.example"
bundle_file = "{d}/bench.example.pem"
issuer = "bench"
"#
    )
    .unwrap();
    std::fs::write(config, text).unwrap();
    Mtls { addr, pki, leaves }
}

impl Mtls {
    /// A TLS client configuration for each SVID.
    fn clients(&self) -> Vec<Arc<rustls::ClientConfig>> {
        self.leaves.iter().map(|leaf| Arc::new(self.pki.tls_config(Some(leaf)))).collect()
    }
}

/// `client_credentials` requests (RFC 8705 `tls_client_auth`: the client
/// certificate is the attestation).
fn client_credentials_bodies() -> Vec<String> {
    vec![
        form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("audience", "reports-api")
            .append_pair("scope", "reports:read")
            .finish(),
    ]
}

impl Server {
    async fn start(config: &Path, http: &reqwest::Client) -> Self {
        let port = free_port();
        let log = config.with_extension("log");
        let started = Instant::now();
        // HALFLIFE_BENCH_WRAP (e.g. "valgrind --tool=callgrind"): the
        // server runs under that command, as scripts/profile-exchange does.
        let wrap = std::env::var("HALFLIFE_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(env!("CARGO_BIN_EXE_halflife"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_halflife")),
        };
        let child = command
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("HALFLIFE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        loop {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "server not ready; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Self { child, base, config: config.to_owned(), log, started_in: started.elapsed() }
    }

    fn rss_mib(&self) -> f64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }

    /// Waits until the server logs that its credential index is loaded.
    async fn index_loaded(&self) -> Option<String> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains("credential index loaded")) {
                // "... credential index loaded credentials=N elapsed_ms=M", less colours.
                let plain = strip_ansi(line);
                return Some(plain.split("loaded").nth(1).unwrap_or(&plain).trim().to_owned());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    fn admin_token(&self, role: &str) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_halflife"))
            .args(["--config", self.config.to_str().unwrap(), "admin", "token", "create"])
            .args(["--role", role, "--name", &format!("bench-{role}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "admin token create: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        // What the server warned of during the run (a slow commit, a failed
        // checkpoint) explains a latency spike or an error count.
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let warnings: Vec<String> =
            log.lines().map(strip_ansi).filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
        for line in warnings.iter().take(10) {
            println!("  server: {line}");
        }
        if warnings.len() > 10 {
            println!("  server: ... {} more warnings in all", warnings.len() - 10);
        }
    }
}

// ---------------------------------------------------------------- load

/// Where load goes: `POST {path}` on the server at `addr`, with request
/// bodies taken in turn.
#[derive(Clone)]
struct Target {
    addr: std::net::SocketAddr,
    host: String,
    path: String,
    bodies: Arc<Vec<bytes::Bytes>>,
    bearer: Option<String>,
    /// A `DPoP` header for each request, used once each.
    dpop: Option<Arc<Vec<String>>>,
    /// Over TLS: client configurations, one per connection in turn.
    tls: Option<Arc<Vec<Arc<rustls::ClientConfig>>>>,
    server_pid: u32,
}

impl Target {
    fn new(server: &Server, path: &str, bodies: &[String], bearer: Option<String>) -> Self {
        let url = url::Url::parse(&server.base).unwrap();
        let host = url.host_str().unwrap().to_owned();
        let port = url.port_or_known_default().unwrap();
        Self {
            addr: format!("{host}:{port}").parse().unwrap(),
            host: format!("{host}:{port}"),
            path: path.to_owned(),
            bodies: Arc::new(bodies.iter().map(|b| bytes::Bytes::from(b.clone())).collect()),
            bearer,
            dpop: None,
            tls: None,
            server_pid: server.child.id().unwrap(),
        }
    }

    /// The same requests, each with the next of `proofs`.
    fn with_dpop(mut self, proofs: Vec<String>) -> Self {
        self.dpop = Some(Arc::new(proofs));
        self
    }

    /// The same requests to the mTLS listener, each connection presenting
    /// the certificate of the next of `clients`.
    fn over_mtls(mut self, mtls: &Mtls) -> Self {
        self.addr = mtls.addr;
        self.host = mtls.addr.to_string();
        self.tls = Some(Arc::new(mtls.clients()));
        self
    }
}

/// CPU time (user and system, all threads) process `pid` has used, or this
/// process when `None`. `/proc` counts in USER_HZ, 100 per second on Linux.
fn cpu_time(pid: Option<u32>) -> Duration {
    let path = pid.map_or_else(|| "/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name, which ends with the last ')'.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect());
    // utime and stime are fields 14 and 15, counted from 1 with the pid.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU the server and this load generator spend during a run.
struct CpuMeter {
    server_pid: u32,
    server: Duration,
    generator: Duration,
}

impl CpuMeter {
    fn start(target: &Target) -> Self {
        Self { server_pid: target.server_pid, server: cpu_time(Some(target.server_pid)), generator: cpu_time(None) }
    }

    /// Microseconds of CPU per request: the server's, the generator's.
    fn per_request(&self, requests: usize) -> (f64, f64) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / requests.max(1) as f64;
        (
            per(cpu_time(Some(self.server_pid)).saturating_sub(self.server)),
            per(cpu_time(None).saturating_sub(self.generator)),
        )
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct RunResult {
    label: String,
    concurrency: usize,
    requests: u64,
    errors: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// CPU per request, in microseconds: the server's and the load
    /// generator's (which shares the machine).
    server_cpu_us: f64,
    generator_cpu_us: f64,
}

impl RunResult {
    fn from_latencies(
        label: &str,
        concurrency: usize,
        mut micros: Vec<u32>,
        errors: u64,
        elapsed: Duration,
        cpu: Option<&CpuMeter>,
    ) -> Self {
        let (server_cpu_us, generator_cpu_us) = cpu.map_or((0.0, 0.0), |c| c.per_request(micros.len()));
        micros.sort_unstable();
        let pct = |p: f64| {
            if micros.is_empty() {
                return 0.0;
            }
            let i = ((micros.len() as f64 * p).ceil() as usize).clamp(1, micros.len()) - 1;
            f64::from(micros[i]) / 1000.0
        };
        Self {
            label: label.to_owned(),
            concurrency,
            requests: micros.len() as u64,
            errors,
            rps: (micros.len() as u64 - errors) as f64 / elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
            max_ms: micros.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
            server_cpu_us,
            generator_cpu_us,
        }
    }

    fn print(&self) {
        println!(
            "  {:<34} c={:<3} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  errors {}  \
             CPU/req {:.0} µs server, {:.0} µs generator",
            self.label,
            self.concurrency,
            self.rps,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.errors,
            self.server_cpu_us,
            self.generator_cpu_us
        );
    }
}

/// One of the server's own histograms, (upper bound in seconds,
/// cumulative count) per bucket: its issuance durations
/// (`halflife_issuance_duration_seconds`: from a request reaching the
/// broker to its record committing) or its batches' commit durations
/// (`halflife_commit_duration_seconds`). The gap between the first and
/// what the generator measures is the generator's own delay plus the HTTP
/// exchange around the broker; the second tells the disk's part.
struct ServerHistogram(Vec<(f64, f64)>);

const ISSUANCES: &str = "halflife_issuance_duration_seconds";
const COMMITS: &str = "halflife_commit_duration_seconds";

impl ServerHistogram {
    async fn read(http: &reqwest::Client, base: &str, name: &str) -> Self {
        let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let prefix = format!("{name}_bucket{{le=\"");
        let buckets = text
            .lines()
            .filter_map(|line| line.strip_prefix(prefix.as_str()))
            .filter_map(|rest| {
                let (bound, count) = rest.split_once("\"} ")?;
                let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().ok()? };
                Some((bound, count.trim().parse().ok()?))
            })
            .collect();
        Self(buckets)
    }

    /// The issuances between `earlier` and this reading.
    fn since(&self, earlier: &Self) -> Self {
        Self(self.0.iter().zip(&earlier.0).map(|((bound, now), (_, then))| (*bound, now - then)).collect())
    }

    fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, n)| *n)
    }

    /// The `q` quantile in milliseconds, interpolated linearly within its
    /// bucket as Prometheus's `histogram_quantile` does; beyond the last
    /// finite bound, that bound.
    fn quantile_ms(&self, q: f64) -> f64 {
        let rank = q * self.count();
        let (mut lower, mut below) = (0.0, 0.0);
        for &(bound, cumulative) in &self.0 {
            if cumulative >= rank && cumulative > below {
                if bound.is_infinite() {
                    return lower * 1e3;
                }
                return (lower + (bound - lower) * (rank - below) / (cumulative - below)) * 1e3;
            }
            (lower, below) = (bound, cumulative);
        }
        lower * 1e3
    }

    /// The upper bound, in milliseconds, of the slowest bucket holding any
    /// observation.
    fn slowest_le_ms(&self) -> f64 {
        let mut below = 0.0;
        let mut slowest = 0.0;
        for &(bound, cumulative) in &self.0 {
            if cumulative > below {
                slowest = bound;
            }
            below = cumulative;
        }
        slowest * 1e3
    }

    fn print(&self, what: &str, unit: &str) {
        println!(
            "    {what} (interpolated): p50 {:.1} ms  p99 {:.1} ms  slowest ≤ {:.1} ms  of {:.0} {unit}",
            self.quantile_ms(0.5),
            self.quantile_ms(0.99),
            self.slowest_le_ms(),
            self.count()
        );
    }
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// One client's keep-alive HTTP/1.1 connection, as wrk holds one: hyper's
/// client connection without a pool, so the generator takes less of the two
/// cores it shares with the server. Per exchange it spends 20–23 µs of CPU
/// where reqwest's pooled client spent 36–41 µs (2026-12-03, the CPU/req
/// figures of one run each). Reconnects after a failure.
struct Connection {
    target: Target,
    /// Which of the target's TLS client configurations it uses.
    client: usize,
    sender: Option<Sender>,
}

impl Connection {
    fn new(target: &Target, client: usize) -> Self {
        Self { target: target.clone(), client, sender: None }
    }

    /// Connects now, so that the connection's set-up (a TLS handshake
    /// above all) is not part of a measured request.
    async fn open(&mut self) {
        let sender = self.connect().await.unwrap_or_else(|e| panic!("{}: {e}", self.target.host));
        self.sender = Some(sender);
    }

    async fn connect(&self) -> Result<Sender, String> {
        let stream = tokio::net::TcpStream::connect(self.target.addr).await.map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let Some(clients) = &self.target.tls else { return http1(stream).await };
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&clients[self.client % clients.len()]))
            .connect(self.target.addr.ip().into(), stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        http1(tls).await
    }

    /// Sends request `i`; true when it was answered with a success.
    async fn send(&mut self, i: usize) -> bool {
        match self.try_send(i).await {
            Ok(()) => true,
            Err(e) => {
                report_failure(&e);
                false
            }
        }
    }

    async fn try_send(&mut self, i: usize) -> Result<(), String> {
        use http_body_util::BodyExt as _;
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        sender.ready().await.map_err(|e| format!("{e:?}"))?;
        let t = &self.target;
        let mut request = hyper::Request::post(&t.path)
            .header(hyper::header::HOST, &t.host)
            .header(hyper::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(bearer) = &t.bearer {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {bearer}"));
        }
        if let Some(proofs) = &t.dpop {
            request = request.header("dpop", &proofs[i % proofs.len()]);
        }
        let body = http_body_util::Full::new(t.bodies[i % t.bodies.len()].clone());
        let response =
            sender.send_request(request.body(body).map_err(|e| e.to_string())?).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
        self.sender = Some(sender);
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)])));
        }
        Ok(())
    }
}

/// An HTTP/1.1 client connection over `io`, driven by a task of its own.
async fn http1<I>(io: I) -> Result<Sender, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Prints the first few failed requests, so an error count says what went
/// wrong.
fn report_failure(what: &str) {
    static REPORTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    if REPORTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
        eprintln!("  request failed: {what}");
    }
}

/// What one client saw: latencies in microseconds, and failures.
#[derive(Default)]
struct Tally {
    micros: Vec<u32>,
    errors: u64,
}

impl Tally {
    /// Sends request `i` and records its latency counted from `since`.
    async fn send(&mut self, connection: &mut Connection, i: usize, since: Instant) {
        if !connection.send(i).await {
            self.errors += 1;
        }
        self.micros.push(u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX));
    }

    async fn gather(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
        let mut all = Tally::default();
        for t in tasks {
            let one = t.await.unwrap();
            all.micros.extend(one.micros);
            all.errors += one.errors;
        }
        all
    }
}

/// `concurrency` clients, each sending its next request as soon as the last
/// is answered. Their connections are opened first, outside the run.
async fn closed_loop(target: &Target, label: &str, concurrency: usize, run: Duration) -> RunResult {
    let mut connections = Vec::new();
    for worker in 0..concurrency {
        let mut connection = Connection::new(target, worker);
        connection.open().await;
        connections.push(connection);
    }
    let cpu = CpuMeter::start(target);
    let started = Instant::now();
    let deadline = started + run;
    let mut tasks = Vec::new();
    for (worker, mut connection) in connections.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            for i in worker * 7919.. {
                if Instant::now() >= deadline {
                    break;
                }
                tally.send(&mut connection, i, Instant::now()).await;
            }
            tally
        }));
    }
    let all = Tally::gather(tasks).await;
    RunResult::from_latencies(label, concurrency, all.micros, all.errors, started.elapsed(), Some(&cpu))
}

/// Requests at a fixed total rate from 64 clients; each latency counts
/// from when the request was due, so a server stall shows up in full.
async fn fixed_rate(target: &Target, label: &str, rate: f64, run: Duration) -> RunResult {
    const CLIENTS: usize = 64;
    let cpu = CpuMeter::start(target);
    let period = Duration::from_secs_f64(CLIENTS as f64 / rate);
    let started = tokio::time::Instant::now();
    let deadline = started + run;
    let mut tasks = Vec::new();
    for worker in 0..CLIENTS {
        let mut connection = Connection::new(target, worker);
        let first = started + period.mul_f64(worker as f64 / CLIENTS as f64);
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(first, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tally = Tally::default();
            for i in worker * 7919.. {
                let due = ticks.tick().await;
                if due >= deadline {
                    break;
                }
                tally.send(&mut connection, i, due.into_std()).await;
            }
            tally
        }));
    }
    let all = Tally::gather(tasks).await;
    RunResult::from_latencies(label, CLIENTS, all.micros, all.errors, run, Some(&cpu))
}

fn exchange_bodies(tokens: &[String]) -> Arc<Vec<String>> {
    Arc::new(
        tokens
            .iter()
            .map(|t| {
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")
                    .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
                    .append_pair("subject_token", t)
                    .append_pair("audience", "reports-api")
                    .append_pair("scope", "reports:read")
                    .finish()
            })
            .collect(),
    )
}

/// Exchanges for opaque secrets instead of JWTs.
fn secret_bodies(tokens: &[String]) -> Vec<String> {
    exchange_bodies(tokens)
        .iter()
        .map(|b| format!("{b}&requested_token_type=urn%3Ahalflife%3Atoken-type%3Asecret"))
        .collect()
}

/// Delegated exchanges (RFC 8693 §2.1): a person's token as the subject,
/// a workload's attestation as the actor.
fn delegated_bodies(people: &[String], agents: &[String]) -> Vec<String> {
    people
        .iter()
        .zip(agents)
        .map(|(person, agent)| {
            form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")
                .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
                .append_pair("subject_token", person)
                .append_pair("actor_token_type", "urn:ietf:params:oauth:token-type:jwt")
                .append_pair("actor_token", agent)
                .append_pair("audience", "reports-api")
                .append_pair("scope", "reports:read")
                .finish()
        })
        .collect()
}

/// `count` DPoP proofs (RFC 9449) of one ES256 key for `POST htu`, each
/// with its own `jti` and `iat` now: one per request, as a client sends.
fn dpop_proofs(htu: &str, count: usize) -> Vec<String> {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = key.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
    let header = URL_SAFE_NO_PAD.encode(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}).to_string());
    let now = unix_now();
    (0..count)
        .map(|_| {
            let claims = json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "POST", "htu": htu, "iat": now});
            let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
            let signature = key.sign(&rng, input.as_bytes()).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
        })
        .collect()
}

async fn one_exchange(http: &reqwest::Client, base: &str, bodies: &[String]) -> String {
    let r = http
        .post(format!("{base}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(bodies[0].clone())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "exchange failed: {}", r.text().await.unwrap_or_default());
    let body: Value = r.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------- preload

/// Records `count` unexpired credentials of the bench system through the
/// store (credential row and audit event each, as an exchange writes them).
async fn preload(db_url: &str, count: u64) -> Duration {
    let opened = halflife::store::open(&OpenOptions {
        url: db_url.to_owned(),
        busy_timeout: Duration::from_secs(30),
        max_connections: 4,
        auto_migrate: false,
        application_name: "halflife-bench-preload".into(),
    })
    .await
    .unwrap();
    let store = opened.store;
    let started = Instant::now();
    let now = SystemClock.now();
    let exp = now + time::Duration::hours(1);
    let system = SystemId::parse(SYSTEM).unwrap();
    let grant = GrantId::parse("bench-agents").unwrap();
    let meta = RequestMeta { request_id: None, source: Some("bench preload".into()) };
    let mut inflight = tokio::task::JoinSet::new();
    for i in 0..count {
        if inflight.len() >= 2048 {
            inflight.join_next().await.unwrap().unwrap();
        }
        let jti = halflife::broker::exchange::new_jti(now);
        let subject = format!("spiffe://bench.example/ns/ai/sa/agent-{}", i % 16);
        let mut event = AuditEvent::new("credential.issued", Outcome::Success, now, &meta);
        event.system_id = Some(SYSTEM.into());
        event.grant_id = Some("bench-agents".into());
        event.jti = Some(jti.clone());
        event.attestation_issuer = Some("bench".into());
        event.subject = Some(subject.clone());
        event.audience = Some("reports-api".into());
        event.scopes = Some("reports:read".into());
        event.iat = Some(now.unix_timestamp());
        event.exp = Some(exp.unix_timestamp());
        event.owners = Some("biz tech".into());
        let issuance = Issuance {
            jti,
            kind: CredentialKind::Jwt,
            system_id: system.clone(),
            grant_id: grant.clone(),
            grant_version: 0,
            issuer: "bench".into(),
            subject,
            principal: None,
            audience: "reports-api".into(),
            scopes: "reports:read".into(),
            iat: now,
            exp,
            replay: Vec::new(),
            secret_hash: None,
            db_role: None,
            approval: None,
            event,
        };
        let store = Arc::clone(&store);
        inflight.spawn(async move { store.record_issuance(issuance).await.unwrap() });
    }
    while let Some(r) = inflight.join_next().await {
        r.unwrap();
    }
    let took = started.elapsed();
    drop(store);
    // The bulk load leaves up to gigabytes of dirty pages that the kernel
    // would write back during the next minute, competing with the measured
    // run's commits: flush them now (PostgreSQL's shared buffers first).
    if db_url.starts_with("postgres") {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db_url).await.unwrap();
        sqlx::query("CHECKPOINT").execute(&mut conn).await.unwrap();
    }
    assert!(std::process::Command::new("sync").status().unwrap().success(), "sync");
    took
}

// ---------------------------------------------------------------- wrk

/// Starts a server, writes a wrk script that exchanges one (reusable)
/// attestation, prints the command, and runs until Ctrl-C. Prints a curl
/// command for a client_credentials exchange over mTLS (one SVID) too.
async fn serve_for_wrk(args: &Args, dir: &Path, attester: &Attester, tokens: &[String], http: &reqwest::Client) {
    let db = Db::create(args.database.as_deref(), dir, "wrk").await;
    let config = write_config(dir, "wrk", &db.url, args.algorithm, attester);
    let mtls = add_mtls(dir, &config);
    if let [n] = args.outstanding[..] {
        // As the growth run does: migrate, preload, then start afresh.
        Server::start(&config, http).await.stop().await;
        let took = preload(&db.url, n).await;
        println!("preloaded {n} outstanding credentials in {:.1} s", took.as_secs_f64());
    }
    let server = Server::start(&config, http).await;
    if let [n] = args.outstanding[..] {
        let loaded = server.index_loaded().await;
        println!(
            "{n} outstanding: RSS {:.1} MiB ({})",
            server.rss_mib(),
            loaded.as_deref().unwrap_or("index load not reported")
        );
    }
    let body = exchange_bodies(&tokens[..1])[0].clone();
    let script = dir.join("exchange.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\nwrk.body = \"{body}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("exchange.body"), &body).unwrap();
    println!("server: {} (pid {}), database {}", server.base, server.child.id().unwrap_or(0), db.url);
    println!("wrk -t2 -c32 -d10s --latency -s {} {}/oauth2/token", script.display(), server.base);
    println!(
        "oha -z 10s -c 32 -m POST -T application/x-www-form-urlencoded -D {} {}/oauth2/token",
        dir.join("exchange.body").display(),
        server.base
    );
    let (cacert, cert, key, form) =
        (dir.join("mtls-ca.pem"), dir.join("svid.pem"), dir.join("svid-key.pem"), dir.join("mtls.body"));
    std::fs::write(&cacert, mtls.pki.ca.pem()).unwrap();
    mtls.leaves[0].write_pem(&cert, &key);
    std::fs::write(&form, &client_credentials_bodies()[0]).unwrap();
    println!(
        "mtls: curl --cacert {} --cert {} --key {} --data-binary @{} https://{}/oauth2/token",
        cacert.display(),
        cert.display(),
        key.display(),
        form.display(),
        mtls.addr
    );
    println!("Ctrl-C stops the server and removes {}", dir.display());
    let _ = tokio::signal::ctrl_c().await;
    server.stop().await;
    db.drop_database().await;
}

// ---------------------------------------------------------------- other paths

/// The other credential paths, each a durable exchange at concurrency 64
/// like the plain one, on a database of their own (their records would
/// change the plain run's storage figures).
async fn other_paths(
    args: &Args,
    dir: &Path,
    attester: &Attester,
    tokens: &[String],
    http: &reqwest::Client,
) -> Vec<RunResult> {
    println!("other exchanges (POST /oauth2/token, c=64):");
    let db = Db::create(args.database.as_deref(), dir, "paths").await;
    let config = write_config(dir, "paths", &db.url, args.algorithm, attester);
    let mtls = add_mtls(dir, &config);
    let server = Server::start(&config, http).await;
    let mut paths = Vec::new();
    let secret = Target::new(&server, "/oauth2/token", &secret_bodies(tokens), None);
    paths.push(closed_loop(&secret, "exchange for an opaque secret", 64, args.duration).await);
    let people = attester.people(ATTESTATIONS);
    let delegated = Target::new(&server, "/oauth2/token", &delegated_bodies(&people, tokens), None);
    paths.push(closed_loop(&delegated, "delegated exchange (actor_token)", 64, args.duration).await);
    // Proofs are signed before the run (as many as the fastest path could
    // use), so the generator's cost stays that of the plain exchange.
    let proofs =
        dpop_proofs(&format!("{}/oauth2/token", server.base), (20_000.0 * args.duration.as_secs_f64()) as usize);
    let dpop = Target::new(&server, "/oauth2/token", &exchange_bodies(tokens), None).with_dpop(proofs);
    paths.push(closed_loop(&dpop, "DPoP-bound exchange", 64, args.duration).await);
    let certified = Target::new(&server, "/oauth2/token", &client_credentials_bodies(), None).over_mtls(&mtls);
    paths.push(closed_loop(&certified, "client_credentials over mTLS", 64, args.duration).await);
    for r in &paths {
        r.print();
    }
    server.stop().await;
    db.drop_database().await;
    paths
}

// ---------------------------------------------------------------- main

/// Writes `about` and `results` (two JSON objects) as one to `path`.
fn write_report(path: &Path, about: &Value, results: Value) {
    let mut report = about.clone();
    if let (Some(report), Value::Object(results)) = (report.as_object_mut(), results) {
        report.extend(results);
    }
    std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("results written to {}", path.display());
}

#[derive(serde::Serialize)]
struct Outstanding {
    outstanding: u64,
    preload_s: f64,
    startup_ms: f64,
    index_loaded: Option<String>,
    rss_mib: f64,
    exchange: RunResult,
    revoke_by_system_ms: f64,
    revoke_empty_system_median_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    halflife::crypto::install();
    let args = args();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let backend = if args.database.is_some() { "postgres" } else { "sqlite" };
    println!("halflife load: {backend}, {cores} cores, commit {commit}, {:?} per run", args.duration);
    let dir = tempfile::tempdir().unwrap();
    // Idle connections are dropped before the server closes them (after
    // `server.header_read_timeout`, 5 s): a request sent on a connection the
    // server is closing at that moment fails.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap();

    let attester = Attester::new();
    let tokens = attester.tokens(ATTESTATIONS);
    let bodies = exchange_bodies(&tokens);

    if args.serve {
        return serve_for_wrk(&args, dir.path(), &attester, &tokens, &http).await;
    }
    let about = json!({"backend": backend, "cores": cores, "commit": commit,
        "algorithm": format!("{:?}", args.algorithm), "run_seconds": args.duration.as_secs_f64()});
    if args.paths_only {
        let paths = other_paths(&args, dir.path(), &attester, &tokens, &http).await;
        if let Some(path) = &args.json {
            write_report(path, &about, json!({"other_exchanges": paths}));
        }
        return;
    }

    // 1. Crypto-only limit.
    let crypto_one = crypto_limit(&attester, &tokens, args.algorithm, 1);
    let crypto_all = crypto_limit(&attester, &tokens, args.algorithm, cores);
    println!(
        "crypto-only limit (RS256 verify + {:?} sign): {crypto_one:.0}/s on one core, {crypto_all:.0}/s on {cores}",
        args.algorithm
    );

    let disk = disk_sync_latency(dir.path(), Duration::from_secs(3));
    println!(
        "disk: {:.0} durable 8 KiB writes/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, slowest {:.1} ms",
        disk.rps, disk.p50_ms, disk.p99_ms, disk.p999_ms, disk.max_ms
    );

    // 2. Start-up and idle memory.
    let db = Db::create(args.database.as_deref(), dir.path(), "main").await;
    let config = write_config(dir.path(), "main", &db.url, args.algorithm, &attester);
    let first = Server::start(&config, &http).await;
    let startup_new_ms = first.started_in.as_secs_f64() * 1e3;
    first.stop().await;
    let server = Server::start(&config, &http).await;
    let startup_empty_ms = server.started_in.as_secs_f64() * 1e3;
    let rss_idle = server.rss_mib();
    println!(
        "start-up to ready: {startup_new_ms:.0} ms on a new database (migrations, key, catalog), \
         {startup_empty_ms:.0} ms on an empty one; idle RSS {rss_idle:.1} MiB"
    );

    // 3. Exchanges.
    println!("durable exchanges (POST /oauth2/token):");
    let exchange = Target::new(&server, "/oauth2/token", &bodies, None);
    closed_loop(&exchange, "warm-up", 16, Duration::from_secs(1)).await;
    let mut exchanges = Vec::new();
    for c in [1, 16, 64] {
        let r = closed_loop(&exchange, "exchange", c, args.duration).await;
        r.print();
        exchanges.push(r);
    }
    let peak = exchanges.iter().map(|r| r.rps).fold(0.0, f64::max);
    let before = ServerHistogram::read(&http, &server.base, ISSUANCES).await;
    let commits_before = ServerHistogram::read(&http, &server.base, COMMITS).await;
    let half =
        fixed_rate(&exchange, &format!("exchange at {:.0}/s (half peak)", peak / 2.0), peak / 2.0, args.duration).await;
    half.print();
    let half_server = ServerHistogram::read(&http, &server.base, ISSUANCES).await.since(&before);
    half_server.print("server side, its own histogram", "issuances");
    let half_commits = ServerHistogram::read(&http, &server.base, COMMITS).await.since(&commits_before);
    half_commits.print("its database commits", "batches");
    let rss_loaded = server.rss_mib();

    // 4. Introspection.
    println!("introspection (POST /oauth2/introspect):");
    let introspector = server.admin_token("introspector");
    let token = one_exchange(&http, &server.base, &bodies).await;
    let introspect = Target::new(
        &server,
        "/oauth2/introspect",
        &[form_urlencoded::Serializer::new(String::new()).append_pair("token", &token).finish()],
        Some(introspector),
    );
    closed_loop(&introspect, "warm-up", 16, Duration::from_secs(1)).await;
    let mut introspections = Vec::new();
    for c in [16, 64] {
        let r = closed_loop(&introspect, "introspect", c, args.duration).await;
        r.print();
        introspections.push(r);
    }

    server.stop().await;

    // 5. Storage per issuance.
    let (parts, records) = db.footprint(dir.path(), "main").await;
    let per = |bytes: u64| bytes as f64 / records.max(1) as f64;
    let per_record = per(parts.iter().map(|(_, bytes)| bytes).sum());
    println!(
        "storage: {per_record:.0} bytes per issuance record (credential row + audit event, with indexes; {records} records); RSS after load {rss_loaded:.1} MiB"
    );
    let breakdown: Vec<String> = parts.iter().map(|(name, bytes)| format!("{name} {:.0}", per(*bytes))).collect();
    println!("  by table and index: {}", breakdown.join(", "));
    let storage_parts: serde_json::Map<String, Value> =
        parts.iter().map(|(name, bytes)| (name.clone(), json!(per(*bytes)))).collect();
    db.drop_database().await;

    // 5b. The other credential paths.
    let paths = other_paths(&args, dir.path(), &attester, &tokens, &http).await;

    // 6. Outstanding credentials: start-up, memory, growth, revocation.
    let mut outstanding = Vec::new();
    for &n in &args.outstanding {
        let label = format!("out{n}");
        let db = Db::create(args.database.as_deref(), dir.path(), &label).await;
        let config = write_config(dir.path(), &label, &db.url, args.algorithm, &attester);
        Server::start(&config, &http).await.stop().await;
        let preload_took = preload(&db.url, n).await;
        let server = Server::start(&config, &http).await;
        let index_loaded = server.index_loaded().await;
        let rss = server.rss_mib();
        // Cost growth first, with the n credentials outstanding (after the
        // revocation below, a background job marks their rows).
        let exchange = Target::new(&server, "/oauth2/token", &bodies, None);
        let warm = closed_loop(&exchange, "warm-up", 16, Duration::from_secs(1)).await;
        let growth = closed_loop(&exchange, &format!("exchange, {n} outstanding"), 64, args.duration).await;
        // Revoke-by-system: only the first revocation finds the n
        // credentials outstanding, so it is measured once, after warming
        // the path up on a system that holds none.
        let operator = server.admin_token("operator");
        let revoke = async |system: &str| {
            let t = Instant::now();
            let r = http
                .post(format!("{}/v1/systems/{system}/revoke", server.base))
                .bearer_auth(&operator)
                .json(&json!({"reason": "bench"}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "revoke: {}", r.text().await.unwrap_or_default());
            let body: Value = r.json().await.unwrap();
            (t.elapsed().as_secs_f64() * 1e3, body["revoked"].as_u64().unwrap_or(0))
        };
        let mut revokes = Vec::new();
        for _ in 0..5 {
            revokes.push(revoke("idle").await.0);
        }
        let (revoke_ms, revoked) = revoke(SYSTEM).await;
        let issued_since = warm.requests - warm.errors + growth.requests - growth.errors;
        assert_eq!(revoked, n + issued_since, "the revocation reports every outstanding credential");
        let startup_ms = server.started_in.as_secs_f64() * 1e3;
        println!(
            "{n} outstanding: preload {:.1} s, start-up to ready {startup_ms:.0} ms, RSS {rss:.1} MiB ({}), \
             revoke-by-system {revoke_ms:.2} ms (an empty system: median {:.2} ms)",
            preload_took.as_secs_f64(),
            index_loaded.as_deref().unwrap_or("index load not reported"),
            median(revokes.clone()),
        );
        growth.print();
        server.stop().await;
        db.drop_database().await;
        outstanding.push(Outstanding {
            outstanding: n,
            preload_s: preload_took.as_secs_f64(),
            startup_ms,
            index_loaded,
            rss_mib: rss,
            exchange: growth,
            revoke_by_system_ms: revoke_ms,
            revoke_empty_system_median_ms: median(revokes),
        });
    }

    if let Some(path) = &args.json {
        let results = json!({
            "crypto_limit_per_s": {"one_core": crypto_one, "all_cores": crypto_all},
            "disk_sync": disk,
            "startup_ms": {"new_database": startup_new_ms, "empty_database": startup_empty_ms},
            "rss_mib": {"idle": rss_idle, "after_load": rss_loaded},
            "exchanges": exchanges, "exchange_half_peak": half, "introspection": introspections,
            "other_exchanges": paths,
            "exchange_half_peak_server_side_ms": {
                "p50": half_server.quantile_ms(0.5), "p99": half_server.quantile_ms(0.99),
                "issuances": half_server.count(),
            },
            "exchange_half_peak_commits_ms": {
                "p50": half_commits.quantile_ms(0.5), "p99": half_commits.quantile_ms(0.99),
                "slowest_le": half_commits.slowest_le_ms(), "batches": half_commits.count(),
            },
            "storage_bytes_per_issuance": per_record,
            "storage_bytes_per_issuance_by_relation": storage_parts,
            "peak_over_crypto_limit": peak / crypto_all,
            "outstanding": outstanding,
        });
        write_report(path, &about, results);
    }
    let mut summary = String::new();
    let _ = write!(summary, "peak exchanges {peak:.0}/s = {:.0} % of the crypto-only limit", 100.0 * peak / crypto_all);
    println!("{summary}");
}
