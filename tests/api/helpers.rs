//! Test harness: real server on a random port, a fresh database, test
//! attestation issuers with keys created per test, and a manual clock.
//!
//! The same tests run against both backends: the `api` binary on SQLite,
//! the `api_postgres` binary (same sources) on a database of its own per
//! test on the PostgreSQL server `HALFLIFE_TEST_DATABASE_URL` names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use halflife::app::App;
use halflife::clock::{Clock, ManualClock};
use halflife::config::Config;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self as rsig, KeyPair};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, SqliteConnection};
use tempfile::TempDir;
use tokio::sync::oneshot;

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const RSA_ISS: &str = "https://k8s.test.example";
pub const EC_ISS: &str = "https://spire.test.example";
pub const AUD: &str = "halflife";
/// The organisation's identity provider people sign in with (its keys
/// from a file: no provider runs in most tests; tests/api/people.rs runs
/// a real one).
pub const PEOPLE_ISS: &str = "https://people.test.example";
pub const PEOPLE_CLIENT: &str = "halflife-cli";
pub const RSA_SUBJECT: &str = "system:serviceaccount:ai:summarizer";
pub const EC_SUBJECT: &str = "spiffe://prod.example/ns/ai/sa/indexer";

/// An attestation issuer whose keys the test holds.
pub struct TestIssuer {
    pub iss: String,
    pub kid: String,
    pub alg: Algorithm,
    pub pkcs8: Vec<u8>,
    pub public_jwk: Value,
}

impl TestIssuer {
    /// RS256 with a 2048-bit key created now (by openssl, which ring cannot
    /// replace: ring does not generate RSA keys).
    pub fn rsa(iss: &str) -> Self {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-outform", "DER"])
            .output()
            .expect("openssl is needed to create RSA test keys");
        assert!(out.status.success(), "openssl failed: {}", String::from_utf8_lossy(&out.stderr));
        let pkcs8 = out.stdout;
        let pair = rsig::RsaKeyPair::from_der(&pkcs8).expect("openssl produced an RSA private key");
        let c = rsig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        let kid = format!("rsa-{}", &hex8(&c.n));
        let public_jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e)});
        Self { iss: iss.into(), kid, alg: Algorithm::RS256, pkcs8, public_jwk }
    }

    pub fn ec(iss: &str) -> Self {
        let rng = SystemRandom::new();
        let doc = rsig::EcdsaKeyPair::generate_pkcs8(&rsig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = rsig::EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let kid = format!("ec-{}", hex8(point));
        let public_jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
        Self { iss: iss.into(), kid, alg: Algorithm::ES256, pkcs8: doc.as_ref().to_vec(), public_jwk }
    }

    /// EdDSA (Ed25519) with a key created now.
    pub fn ed25519(iss: &str) -> Self {
        let doc = rsig::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = rsig::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let x = pair.public_key().as_ref();
        let kid = format!("ed-{}", hex8(x));
        let public_jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(x)});
        Self { iss: iss.into(), kid, alg: Algorithm::EdDSA, pkcs8: doc.as_ref().to_vec(), public_jwk }
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [self.public_jwk]})
    }

    fn encoding_key(&self) -> EncodingKey {
        match self.alg {
            Algorithm::RS256 => EncodingKey::from_rsa_der(&self.pkcs8),
            Algorithm::EdDSA => EncodingKey::from_ed_der(&self.pkcs8),
            _ => EncodingKey::from_ec_der(&self.pkcs8),
        }
    }

    /// Standard valid claims at `now` for `subject`.
    pub fn claims(&self, subject: &str, now: i64) -> Value {
        json!({"iss": self.iss, "sub": subject, "aud": [AUD], "iat": now, "nbf": now, "exp": now + 600,
               "jti": uuid_like()})
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding_key()).unwrap()
    }

    /// Signs with an explicit header object (for hostile-header tests).
    pub fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &self.encoding_key(), self.alg).unwrap();
        format!("{signing_input}.{sig}")
    }

    /// Signs claims given as raw JSON text (duplicate keys, numbers serde
    /// cannot hold).
    pub fn sign_text(&self, header: &Value, claims: &str) -> String {
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims));
        let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &self.encoding_key(), self.alg).unwrap();
        format!("{signing_input}.{sig}")
    }

    /// The standard header: `alg` and `kid`.
    pub fn header(&self) -> Value {
        json!({"alg": format!("{:?}", self.alg), "kid": self.kid, "typ": "JWT"})
    }

    pub fn token(&self, subject: &str, now: i64) -> String {
        self.sign(&self.claims(subject, now))
    }
}

/// One line per test area for `scripts/scoreboard`: how many hostile cases
/// were tried and how many got something they should not have. The test
/// itself asserts `bad == 0`; the line only makes the count visible.
pub fn scoreboard(area: &str, tried: usize, bad: usize) {
    println!("SCOREBOARD {area} tried={tried} bad={bad}");
}

thread_local! {
    /// Hostile cases refused so far by the test on this thread (every
    /// `#[tokio::test]` runs on its own thread).
    static REFUSED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts one hostile case that was refused as it should be.
pub fn refused_one() {
    REFUSED.with(|c| c.set(c.get() + 1));
}

/// Prints this test's scoreboard line: every counted case was refused (a
/// case that was not would have failed the test before this line).
pub fn report_refused(area: &str) {
    scoreboard(area, REFUSED.with(|c| c.replace(0)), 0);
}

fn hex8(bytes: &[u8]) -> String {
    bytes.iter().rev().take(4).map(|b| format!("{b:02x}")).collect()
}

pub fn uuid_like() -> String {
    let bytes: [u8; 16] = halflife::crypto::random_bytes().unwrap();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Options for one test server.
pub struct Options {
    pub extra_config: String,
    pub busy_timeout: &'static str,
    pub catalog: String,
    /// Signing algorithm of issued tokens.
    pub algorithm: &'static str,
    pub max_body_bytes: usize,
    /// Where the SQLite file lives (ignored on PostgreSQL); default the
    /// test's temporary directory.
    pub sqlite_path: Option<PathBuf>,
    /// On PostgreSQL: connect through this local port (a [`Proxy`]).
    pub postgres_via: Option<u16>,
    /// More `[server]` keys.
    pub server_extra: String,
    /// Systems of the catalog promoted to production once the server is up,
    /// by an operator who owns none of them.
    pub promote: Vec<&'static str>,
    pub header_read_timeout: &'static str,
    /// Whether people sign in ([`people_config`]).
    pub people: bool,
    /// Listen on this port (one [`listen_port`] gave); default a fresh one.
    pub listen_port: Option<u16>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            extra_config: String::new(),
            busy_timeout: "5s",
            catalog: default_catalog(),
            algorithm: "EdDSA",
            max_body_bytes: 16384,
            sqlite_path: None,
            postgres_via: None,
            server_extra: String::new(),
            promote: vec!["indexer"],
            header_read_timeout: "1s",
            people: true,
            listen_port: None,
        }
    }
}

#[path = "../fixtures/catalog.rs"]
mod catalog;
pub use catalog::{OWNERS as CATALOG_OWNERS, pilot_system};

/// Two owners, a pilot system with grants for both test issuers, and a
/// second system for another workload (a pilot that [`Options::promote`]
/// takes to production: a catalog file cannot).
pub fn default_catalog() -> String {
    format!(
        r#"{CATALOG_OWNERS}
{}
{}data_classification = "internal"

[[grants]]
id = "summarizer-k8s"
system = "summarizer"
issuer = "k8s"
subject = "{RSA_SUBJECT}"
audiences = ["reports-api"]
scopes = ["reports:read", "reports:write"]
default_scopes = ["reports:read"]
max_ttl = "15m"

[[grants]]
id = "indexer-spire"
system = "indexer"
issuer = "spire"
subject = "spiffe://prod.example/ns/ai/*"
audiences = ["search-api", "docs-api"]
scopes = ["docs:read", "search:write"]
max_ttl = "30m"

[[grants]]
id = "summarizer-dev"
system = "summarizer"
issuer = "dev"
subject = "spiffe://dev.local/ns/ai/sa/summarizer"
audiences = ["reports-api"]
scopes = ["reports:read"]
max_ttl = "10m"
"#,
        pilot_system("summarizer", "Summarizer", "Summarizes reports", "30d"),
        pilot_system("indexer", "Indexer", "Indexes documents", "30d"),
    )
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The mTLS listener, when the config has `[mtls]`.
    pub mtls: Option<SocketAddr>,
    pub base: String,
    pub client: reqwest::Client,
    pub clock: ManualClock,
    pub dir: TempDir,
    pub db: Arc<TestDb>,
    pub rsa: Arc<TestIssuer>,
    pub ec: Arc<TestIssuer>,
    /// Signs people's ID tokens ([`TestApp::person_token`]).
    pub people: Arc<TestIssuer>,
    pub broker: halflife::broker::Broker,
    config_text: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn kek_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode([42u8; 32])
}

/// The backend this test binary runs on.
pub fn postgres() -> bool {
    env!("CARGO_CRATE_NAME") == "api_postgres"
}

/// A PostgreSQL database created for one test and dropped with it.
pub struct TestDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    /// Creates an empty database, or `None` (with the reason printed) when
    /// `HALFLIFE_TEST_DATABASE_URL` is not set.
    pub async fn create() -> Option<Self> {
        let Ok(admin_url) = std::env::var("HALFLIFE_TEST_DATABASE_URL") else {
            eprintln!(
                "skipped: HALFLIFE_TEST_DATABASE_URL is not set (PostgreSQL tests need a server; .ci/run sets it)"
            );
            return None;
        };
        let name = format!("halflife_t_{}", hex8(&halflife::crypto::random_bytes::<8>().unwrap()));
        let mut admin = PgConnection::connect(&admin_url).await.expect("HALFLIFE_TEST_DATABASE_URL must be reachable");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&format!("/{name}"));
        Some(Self { url: url.to_string(), admin_url, name })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside async code: use a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
                }
            });
        })
        .join();
    }
}

/// Where a test's data lives.
pub enum TestDb {
    Sqlite(PathBuf),
    Postgres(TestDatabase),
}

impl TestDb {
    pub async fn create(dir: &Path) -> Option<Self> {
        if postgres() {
            TestDatabase::create().await.map(Self::Postgres)
        } else {
            Some(Self::Sqlite(dir.join("halflife.db")))
        }
    }

    pub fn url(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres(db) => db.url.clone(),
        }
    }

    /// Applies only the migrations numbered below `sqlite` (or `postgres`):
    /// the schema as a release before them left it, for upgrade tests.
    pub async fn migrate_before(&self, dir: &Path, sqlite: i64, postgres: i64) {
        let (backend, before) = match self {
            Self::Sqlite(_) => ("sqlite", sqlite),
            Self::Postgres(_) => ("postgres", postgres),
        };
        let older = dir.join(format!("migrations-before-{before}"));
        std::fs::create_dir(&older).unwrap();
        for entry in std::fs::read_dir(format!("{}/migrations/{backend}", env!("CARGO_MANIFEST_DIR"))).unwrap() {
            let path = entry.unwrap().path();
            let version: i64 = path.file_name().unwrap().to_str().unwrap()[..4].parse().unwrap();
            if version < before {
                std::fs::copy(&path, older.join(path.file_name().unwrap())).unwrap();
            }
        }
        let migrator = sqlx::migrate::Migrator::new(older.as_path()).await.unwrap();
        match self {
            Self::Sqlite(path) => {
                let url = format!("sqlite://{}?mode=rwc", path.display());
                migrator.run(&mut SqliteConnection::connect(&url).await.unwrap()).await.unwrap();
            }
            Self::Postgres(db) => migrator.run(&mut PgConnection::connect(&db.url).await.unwrap()).await.unwrap(),
        }
    }

    /// A connection from outside the server.
    pub async fn raw(&self) -> RawDb {
        match self {
            Self::Sqlite(path) => {
                RawDb::Sqlite(SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap())
            }
            Self::Postgres(db) => RawDb::Postgres(PgConnection::connect(&db.url).await.unwrap()),
        }
    }
}

/// A connection to a test's database from outside the server.
pub enum RawDb {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl RawDb {
    pub async fn execute(&mut self, statement: &str) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Self::Sqlite(c) => sqlx::query(statement).execute(c).await?.rows_affected(),
            Self::Postgres(c) => sqlx::query(statement).execute(c).await?.rows_affected(),
        })
    }

    pub async fn scalar(&mut self, query: &str) -> i64 {
        match self {
            Self::Sqlite(c) => sqlx::query_scalar(query).fetch_one(c).await.unwrap(),
            Self::Postgres(c) => sqlx::query_scalar(query).fetch_one(c).await.unwrap(),
        }
    }

    /// SQL that holds when id column `column` (jti, request_id,
    /// attestation_id) holds `id`, as docs/audit.md tells an operator to look
    /// one up.
    pub fn id_is(&self, column: &str, id: &str) -> String {
        id_is(matches!(self, Self::Sqlite(_)), column, id)
    }
}

/// Both backends keep a UUID in canonical form (lower-case, hyphenated) as
/// its 16 bytes; SQLite keeps any other id as text, PostgreSQL as its
/// text's bytes (`halflife_id`, migration 0014). The SQL here is what
/// docs/audit.md tells an operator to write.
pub fn id_is(sqlite: bool, column: &str, id: &str) -> String {
    let canonical = id.len() == 36
        && id.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_digit() || ('a'..='f').contains(&c) }
        });
    match (sqlite, canonical) {
        (true, true) => format!("{column} = x'{}'", id.replace('-', "")),
        (true, false) => format!("{column} = '{}'", id.replace('\'', "''")),
        (false, _) => format!("{column} = halflife_id('{}')", id.replace('\'', "''")),
    }
}

/// SQL reading id column `column` back as text, on either backend.
pub fn id_text(sqlite: bool, column: &str) -> String {
    if !sqlite {
        return format!("halflife_id_text({column})");
    }
    let hex = format!("lower(hex({column}))");
    format!(
        "CASE WHEN typeof({column}) = 'blob' THEN substr({hex}, 1, 8) || '-' || substr({hex}, 9, 4) || '-' || \
         substr({hex}, 13, 4) || '-' || substr({hex}, 17, 4) || '-' || substr({hex}, 21) ELSE {column} END"
    )
}

/// A free port below the kernel's ephemeral range (32768 and up), for a
/// test server to listen on. A restart binds the same port again (so the
/// `iss` of issued tokens stays the same); in the ephemeral range, an
/// outgoing connection of a test running alongside could take it as its
/// local port in between, and the restart would fail.
pub fn listen_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Test binaries run one after another; start each at its own offset so
    // one does not probe ports a previous one may still hold.
    let offset = std::process::id() % 12_000;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = u16::try_from(20_000 + (offset + n) % 12_000).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub async fn spawn_app() -> Option<TestApp> {
    spawn_with(Options::default()).await
}

pub async fn spawn_with(options: Options) -> Option<TestApp> {
    let dir = tempfile::tempdir().unwrap();
    let db = match &options.sqlite_path {
        Some(path) if !postgres() => TestDb::Sqlite(path.clone()),
        _ => TestDb::create(dir.path()).await?,
    };
    let rsa = TestIssuer::rsa(RSA_ISS);
    let ec = TestIssuer::ec(EC_ISS);
    std::fs::write(dir.path().join("k8s.jwks"), rsa.jwks().to_string()).unwrap();
    std::fs::write(dir.path().join("spire.jwks"), ec.jwks().to_string()).unwrap();
    let people = TestIssuer::ec(PEOPLE_ISS);
    std::fs::write(dir.path().join("people.jwks"), people.jwks().to_string()).unwrap();
    std::fs::write(dir.path().join("catalog.toml"), &options.catalog).unwrap();
    let d = dir.path().display();
    let port = options.listen_port.unwrap_or_else(listen_port);
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
header_read_timeout = "{header_read_timeout}"
max_body_bytes = {max_body}
{server_extra}

[database]
url = "{db_url}"
busy_timeout = "{busy}"
sync_interval = "100ms"

[keys]
dir = "{d}/keys"
kek = "{kek}"
algorithm = "{alg}"

[dev]
enabled = true

[bootstrap]
apply = ["{d}/catalog.toml"]
{people_config}

[[issuers]]
name = "k8s"
issuer = "{RSA_ISS}"
jwks_file = "{d}/k8s.jwks"
algorithms = ["RS256"]
audience = "{AUD}"
single_audience = true

[[issuers]]
name = "spire"
issuer = "{EC_ISS}"
jwks_file = "{d}/spire.jwks"
algorithms = ["ES256"]
audience = "{AUD}"
max_token_age = "1h"
{extra}
"#,
        people_config = if options.people { people_config(&d.to_string()) } else { String::new() },
        busy = options.busy_timeout,
        db_url = match options.postgres_via {
            Some(port) if postgres() => {
                let mut url = url::Url::parse(&db.url()).unwrap();
                url.set_host(Some("127.0.0.1")).unwrap();
                url.set_port(Some(port)).unwrap();
                url.to_string()
            }
            _ => db.url(),
        },
        kek = kek_b64(),
        alg = options.algorithm,
        extra = options.extra_config,
        max_body = options.max_body_bytes,
        server_extra = options.server_extra,
        header_read_timeout = options.header_read_timeout,
    );
    let issuers = Issuers { rsa: Arc::new(rsa), ec: Arc::new(ec), people: Arc::new(people) };
    let app = start(text, ManualClock::starting_now(), dir, Arc::new(db), issuers).await;
    for system in options.promote {
        app.promote(system).await;
    }
    Some(app)
}

/// The `[people]` section of the test configuration: ID tokens signed by
/// [`TestApp::people`], groups `hl-<role>s` mapped to each role.
pub fn people_config(dir: &str) -> String {
    format!(
        r#"
[people]
issuer = "{PEOPLE_ISS}"
client_id = "{PEOPLE_CLIENT}"
jwks_file = "{dir}/people.jwks"
algorithms = ["ES256"]
{PEOPLE_ROLES}"#
    )
}

/// `[[people.roles]]`: the group `hl-<role>s` gives each role.
pub const PEOPLE_ROLES: &str = r#"
[[people.roles]]
group = "hl-admins"
role = "admin"

[[people.roles]]
group = "hl-operators"
role = "operator"

[[people.roles]]
group = "hl-auditors"
role = "auditor"

[[people.roles]]
group = "hl-approvers"
role = "approver"
"#;

/// The default catalog with `summarizer-k8s` needing approval by the
/// `hl-approvers` group, for at most an hour.
pub fn approval_catalog() -> String {
    default_catalog().replacen(
        "max_ttl = \"15m\"\n",
        "max_ttl = \"15m\"\napproval = \"required\"\napprovers = [\"hl-approvers\"]\napproval_max_duration = \"1h\"\n",
        1,
    )
}

/// The test issuers a server trusts.
struct Issuers {
    rsa: Arc<TestIssuer>,
    ec: Arc<TestIssuer>,
    people: Arc<TestIssuer>,
}

async fn start(config_text: String, clock: ManualClock, dir: TempDir, db: Arc<TestDb>, issuers: Issuers) -> TestApp {
    let Issuers { rsa, ec, people } = issuers;
    let config = Config::from_toml(&config_text).unwrap();
    let app = App::build(config, Arc::new(clock.clone())).await.unwrap().without_background_jobs();
    let addr = app.local_addr();
    let mtls = app.mtls_addr();
    let base = app.base_url().to_owned();
    let broker = app.broker().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        addr,
        mtls,
        base,
        client: reqwest::Client::new(),
        clock,
        dir,
        db,
        rsa,
        ec,
        people,
        broker,
        config_text,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    /// Stops this server: its address refuses connections until
    /// [`TestApp::restart`].
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops this server and starts a new one on the same database, keys
    /// and clock (a restart).
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        // Same address (`listen_port`), so the `iss` of issued tokens stays
        // the same.
        start(self.config_text.clone(), self.clock.clone(), dir, self.db.clone(), self.issuers()).await
    }
}

impl TestApp {
    /// Restarts this server (stopped or not) with another configuration
    /// text, on the same database, directory and clock.
    pub async fn restart_with(mut self, config_text: String) -> TestApp {
        self.stop().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        start(config_text, self.clock.clone(), dir, self.db.clone(), self.issuers()).await
    }

    /// A second server on the same database, keys and clock, listening on
    /// a port of its own: another replica (on SQLite, another process
    /// sharing the file). It must not outlive `self`, whose directory holds
    /// the files both configurations name.
    pub async fn replica(&self) -> TestApp {
        let listen = format!("listen = \"{}\"", self.addr);
        let other = format!("listen = \"127.0.0.1:{}\"", listen_port());
        let text = self.config_text.replacen(&listen, &other, 1);
        assert_ne!(text, self.config_text, "the replica needs a port of its own");
        start(text, self.clock.clone(), tempfile::tempdir().unwrap(), self.db.clone(), self.issuers()).await
    }

    fn issuers(&self) -> Issuers {
        Issuers { rsa: self.rsa.clone(), ec: self.ec.clone(), people: self.people.clone() }
    }

    /// Promotes `system` one tier, approved by a signed-in person who
    /// owns no system of the test catalog.
    pub async fn promote(&self, system: &str) {
        let approver = halflife::broker::admin::AdminCaller {
            id: "release".into(),
            name: "release-manager@example.com".into(),
            roles: vec![halflife::domain::model::Role::Operator],
            person: Some(halflife::broker::admin::Person {
                issuer: PEOPLE_ISS.into(),
                subject: "release-manager".into(),
                email: Some("release-manager@example.com".into()),
                name: None,
                owns: Vec::new(),
            }),
            expires_at: None,
        };
        let id = halflife::domain::values::SystemId::parse(system).unwrap();
        self.broker
            .promote_system(&id, None, &approver, &halflife::store::RequestMeta::default())
            .await
            .map_err(|e| format!("promoting {system}: {e}"))
            .unwrap();
    }

    pub fn now(&self) -> i64 {
        self.clock.now().unix_timestamp()
    }

    /// This server's configuration file text (for `halflife` commands that
    /// read it, such as `dev token`).
    pub fn config_text(&self) -> &str {
        &self.config_text
    }

    pub fn db_url(&self) -> String {
        self.db.url()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a token exchange with `subject_token` and extra parameters.
    pub async fn exchange(&self, subject_token: &str, extra: &[(&str, &str)]) -> reqwest::Response {
        let mut form =
            vec![("grant_type", TOKEN_EXCHANGE), ("subject_token_type", JWT_TYPE), ("subject_token", subject_token)];
        form.extend_from_slice(extra);
        self.client.post(self.url("/oauth2/token")).form(&form).send().await.unwrap()
    }

    /// Exchanges and expects success; returns the response body.
    pub async fn exchange_ok(&self, subject_token: &str, extra: &[(&str, &str)]) -> Value {
        let response = self.exchange(subject_token, extra).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "exchange failed: {body}");
        body
    }

    /// Starts `n` concurrent exchanges of fresh indexer attestations for
    /// `docs-api`; each task yields the access token, or `None` if refused.
    pub fn spawn_exchanges(&self, n: usize) -> Vec<tokio::task::JoinHandle<Option<String>>> {
        (0..n)
            .map(|_| {
                let attestation = self.ec.token(EC_SUBJECT, self.now());
                let client = self.client.clone();
                let url = self.url("/oauth2/token");
                tokio::spawn(async move {
                    let form = [
                        ("grant_type", TOKEN_EXCHANGE),
                        ("subject_token_type", JWT_TYPE),
                        ("subject_token", attestation.as_str()),
                        ("audience", "docs-api"),
                    ];
                    let r = client.post(url).form(&form).send().await.unwrap();
                    let ok = r.status() == 200;
                    let body: Value = r.json().await.unwrap();
                    ok.then(|| body["access_token"].as_str().unwrap().to_owned())
                })
            })
            .collect()
    }

    /// Creates an admin token with `role` directly through the broker's store.
    pub async fn admin_token(&self, role: halflife::domain::model::Role) -> String {
        self.admin_token_named(role, "test").await
    }

    /// Creates an admin token with `role` named `name` (the actor its
    /// calls are recorded under) directly through the broker's store.
    pub async fn admin_token_named(&self, role: halflife::domain::model::Role, name: &str) -> String {
        use secrecy::ExposeSecret;
        let (_, token) = halflife::broker::admin::create_admin_token(
            self.broker.admin_tokens.as_ref(),
            role,
            name,
            halflife::broker::admin::DEFAULT_ADMIN_TOKEN_TTL,
            "test",
            self.clock.now(),
        )
        .await
        .unwrap();
        token.expose_secret().to_owned()
    }

    /// An ID token of the people issuer for `email`, in `groups`.
    pub fn id_token(&self, email: &str, groups: &[&str]) -> String {
        self.id_token_as(&format!("sub-{}", email.split('@').next().unwrap_or(email)), email, groups)
    }

    /// An ID token of the people issuer for `subject` with `email`.
    pub fn id_token_as(&self, subject: &str, email: &str, groups: &[&str]) -> String {
        let now = self.now();
        self.people.sign(&json!({
            "iss": PEOPLE_ISS, "sub": subject, "aud": PEOPLE_CLIENT, "iat": now, "exp": now + 300,
            "email": email, "email_verified": true, "name": email, "groups": groups,
        }))
    }

    /// Signs `email` in (in `groups`) with an ID token of the people
    /// issuer; returns the token exchange's answer.
    pub async fn sign_in(&self, id_token: &str) -> (u16, Value) {
        let response = self
            .client
            .post(self.url("/oauth2/token"))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", id_token),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:id_token"),
                ("requested_token_type", "urn:halflife:token-type:session"),
            ])
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// A session token of a person signed in as `email`, in `groups`.
    pub async fn person_token(&self, email: &str, groups: &[&str]) -> String {
        self.session_of(&self.id_token(email, groups)).await
    }

    /// The session token an ID token signs in for.
    pub async fn session_of(&self, id_token: &str) -> String {
        let (status, body) = self.sign_in(id_token).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Calls the operator API; returns the status and the JSON body (Null when empty).
    pub async fn api(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
    }

    /// Runs one lifecycle pass at the current (manual) time.
    pub async fn reap(&self) -> halflife::broker::lifecycle::ReaperReport {
        self.broker.run_lifecycle_once(self.clock.now()).await.unwrap()
    }

    /// Executes SQL against the database from another connection.
    pub async fn sql(&self, statement: &str) {
        self.raw().await.execute(statement).await.unwrap();
    }

    pub async fn scalar(&self, query: &str) -> i64 {
        self.raw().await.scalar(query).await
    }

    /// A connection to the database, from outside the server.
    pub async fn raw(&self) -> RawDb {
        self.db.raw().await
    }

    pub async fn introspect(&self, admin: &str, token: &str) -> Value {
        let response = self
            .client
            .post(self.url("/oauth2/introspect"))
            .bearer_auth(admin)
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Audit events of `kind`, oldest first, as (reason, jti, attestation_id,
    /// system_id, subject, source, request_id).
    pub async fn events(&self, kind: &str) -> Vec<AuditRow> {
        let raw = self.raw().await;
        let id = |column: &str| format!("{} AS {column}", id_text(matches!(raw, RawDb::Sqlite(_)), column));
        let sql = format!(
            "SELECT reason, {}, {}, system_id, \
             (SELECT name FROM audit_names WHERE id = subject_id) AS subject, \
             (SELECT name FROM audit_names WHERE id = source_id) AS source, {} \
             FROM audit_events WHERE kind = $1 ORDER BY seq",
            id("jti"),
            id("attestation_id"),
            id("request_id")
        );
        match raw {
            RawDb::Sqlite(mut c) => sqlx::query_as(&sql).bind(kind).fetch_all(&mut c).await.unwrap(),
            RawDb::Postgres(mut c) => sqlx::query_as(&sql).bind(kind).fetch_all(&mut c).await.unwrap(),
        }
    }

    pub async fn credential_count(&self) -> i64 {
        self.scalar("SELECT COUNT(*) FROM credentials").await
    }

    /// Holds the database's write lock from another connection until
    /// dropped (the database is "unavailable" for writers meanwhile).
    pub async fn lock_database(&self) -> RawDb {
        let mut db = self.raw().await;
        match &mut db {
            RawDb::Sqlite(c) => {
                sqlx::query("BEGIN EXCLUSIVE").execute(c).await.unwrap();
            }
            RawDb::Postgres(c) => {
                sqlx::query("BEGIN").execute(&mut *c).await.unwrap();
                sqlx::query("LOCK TABLE audit_events IN EXCLUSIVE MODE").execute(c).await.unwrap();
            }
        }
        db
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct AuditRow {
    pub reason: Option<String>,
    pub jti: Option<String>,
    pub attestation_id: Option<String>,
    pub system_id: Option<String>,
    pub subject: Option<String>,
    pub source: Option<String>,
    pub request_id: Option<String>,
}

/// Decodes a JWT's header and claims without verifying (for assertions).
pub fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let h = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    let c = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    (serde_json::from_slice(&h).unwrap(), serde_json::from_slice(&c).unwrap())
}

/// Verifies an issued token against the server's published JWKS.
pub async fn verify_with_jwks(app: &TestApp, token: &str) -> Value {
    let jwks: jsonwebtoken::jwk::JwkSet =
        app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("kid published in JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&["reports-api", "search-api", "docs-api", "tickets-api"]);
    validation.set_issuer(&[&app.base]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap().claims
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy in front of PostgreSQL that a test can cut or stall.
pub struct Proxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    #[allow(dead_code, reason = "only the PostgreSQL binary stalls the proxy")]
    stalled: tokio::sync::watch::Sender<bool>,
}

/// Copies one direction, holding whatever it read while the link is
/// stalled (a hung server: connections stay open, nothing answers).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while *stalled.borrow_and_update() {
            if stalled.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links: Arc<tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (flag, held) = (Arc::clone(&up), Arc::clone(&links));
        let (stalled, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the database is unreachable
                }
                let watch = watch.clone();
                held.lock().await.push(tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(target).await {
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        let up = tokio::spawn(pump(client_read, server_write, watch.clone()));
                        pump(server_read, client_write, watch).await;
                        up.abort();
                    }
                }));
            }
        });
        Self { port, up, links, stalled }
    }

    /// Drops every open connection and refuses new ones.
    pub async fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().await.drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections stay open and new ones are accepted, but nothing the
    /// database is sent arrives until `resume`.
    #[allow(dead_code, reason = "only the PostgreSQL binary stalls the proxy")]
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    #[allow(dead_code, reason = "only the PostgreSQL binary stalls the proxy")]
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

/// A broker (SQLite in `dir`) serving HTTPS with a self-signed certificate
/// for localhost and 127.0.0.1; not yet running.
pub async fn tls_app(dir: &Path) -> (halflife::app::App, rcgen::CertifiedKey<rcgen::KeyPair>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let d = dir.display();
    let config = Config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert_file = \"{d}/cert.pem\"\nkey_file = \"{d}/key.pem\"\n\
         [database]\nurl = \"sqlite://{d}/h.db\"\n[keys]\ndir = \"{d}/keys\"\nkek = \"{}\"\n",
        kek_b64()
    ))
    .unwrap();
    (App::build(config, Arc::new(halflife::clock::SystemClock)).await.unwrap(), cert)
}

/// A write operation of the operator API, from the served OpenAPI document.
pub struct WriteRoute {
    pub method: reqwest::Method,
    /// As documented, e.g. `/v1/systems/{id}/suspend`.
    pub template: String,
    /// With its path parameters filled in with ids of the default catalog.
    pub path: String,
    /// Whether the operation documents an `application/json` request body.
    pub json_body: bool,
}

/// Every POST, PATCH, PUT and DELETE under `/v1` that `GET /openapi.json`
/// documents.
pub async fn write_routes(app: &TestApp) -> Vec<WriteRoute> {
    let doc: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let mut routes = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        // Ending one's own session is open to every caller
        // (tests/api/people.rs), and auditors may mark a break-glass
        // approval reviewed (tests/api/approvals.rs).
        if !template.starts_with("/v1/")
            || template.starts_with("/v1/sessions/")
            || template.starts_with("/v1/reviews/")
        {
            continue;
        }
        for method in ["post", "patch", "put", "delete"] {
            let Some(operation) = item.get(method) else { continue };
            let id = if template.starts_with("/v1/owners/") { "biz" } else { "summarizer" };
            let path = template.replace("{id}", id).replace("{grant}", "summarizer-k8s").replace("{kid}", "none");
            routes.push(WriteRoute {
                method: method.to_uppercase().parse().unwrap(),
                template: template.clone(),
                path,
                json_body: operation["requestBody"]["content"].get("application/json").is_some(),
            });
        }
    }
    assert!(routes.len() >= 18, "too few write routes documented: {}", routes.len());
    routes
}

/// Sends `body` as `application/json` with `token`; returns the status and
/// the JSON body.
pub async fn send_json(app: &TestApp, method: reqwest::Method, path: &str, token: &str, body: &[u8]) -> (u16, Value) {
    let response = app
        .client
        .request(method, app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
}
