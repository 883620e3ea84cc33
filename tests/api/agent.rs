//! `halflife agent`: the real binary as the agent process, against a real
//! broker started by the harness, observed through its files, its Unix
//! socket and the broker's own records.
//!
//! The agent runs on real time with lifetimes of a few seconds; every wait
//! is a poll with a deadline (`eventually`), never a sleep that decides an
//! outcome. Times the agent reports (issued, renewal, expiry, removal) come
//! from its own clock, so bounds on its schedule are checked against those,
//! not against when this test happened to look.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use reqwest::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_halflife");
/// Long enough for a loaded machine; the agent's own bounds are far tighter.
const DEADLINE: Duration = Duration::from_secs(15);

/// A running `halflife agent` process and the directory it works in.
pub struct AgentProcess {
    child: tokio::process::Child,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The agent's working directory: its configuration, its attestation file
/// and its credentials directory (`creds/`).
pub fn agent_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("creds")).unwrap();
    dir
}

/// `[agent]` for `app`, with short intervals, the attestation file
/// `attestation.jwt`, the socket `agent.sock`, `extra` agent keys and
/// `credentials` (TOML `[[agent.credentials]]` tables).
pub fn agent_config(app: &TestApp, dir: &Path, extra: &str, credentials: &str) -> String {
    let d = dir.display();
    format!(
        r#"
[agent]
broker_url = "{base}"
socket = "{d}/agent.sock"
credentials_dir = "{d}/creds"
status_interval = "500ms"
retry_initial = "100ms"
retry_max = "500ms"
request_timeout = "2s"
{extra}

[agent.attestation]
file = "{d}/attestation.jwt"

{credentials}
"#,
        base = app.base
    )
}

/// Replaces the attestation file whole, as the kubelet does.
pub fn write_attestation(dir: &Path, token: &str) {
    let tmp = dir.join(".attestation.tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(tmp, dir.join("attestation.jwt")).unwrap();
}

/// Starts the agent on `config` with `args` after `agent`, and waits for
/// its socket to answer.
pub async fn start_agent(dir: &Path, config: &str, args: &[&str]) -> AgentProcess {
    let agent = spawn_agent(dir, config, args);
    let socket = agent.socket.clone();
    assert!(
        eventually(DEADLINE, || async { tokio::net::UnixStream::connect(&socket).await.is_ok() }).await,
        "the agent's socket never answered: {}",
        agent.log()
    );
    agent
}

/// Starts the agent on `config` with `args` after `agent`.
pub fn spawn_agent(dir: &Path, config: &str, args: &[&str]) -> AgentProcess {
    std::fs::write(dir.join("agent.toml"), config).unwrap();
    let log = dir.join(format!("agent-{}.log", uuid_like()));
    let child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .args(["--log-format", "json", "agent"])
        .args(args)
        .env("RUST_LOG", "halflife=trace,info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("agent.stdout")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    AgentProcess { child, socket: dir.join("agent.sock"), log }
}

/// One request to the agent's local API over its Unix socket.
pub async fn call(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut request = hyper::Request::builder().method(method).uri(path).header("host", "agent");
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = Full::new(Bytes::from(body.map(Value::to_string).unwrap_or_default()));
    let response = sender.send_request(request.body(body).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

impl AgentProcess {
    pub async fn get(&self, path: &str) -> (u16, Value) {
        call(&self.socket, "GET", path, None).await
    }

    /// The credential `name` when the agent serves one (200), else `None`.
    pub async fn credential(&self, name: &str) -> Option<Value> {
        let (status, body) = self.get(&format!("/v1/credentials/{name}")).await;
        (status == 200).then_some(body)
    }

    /// Waits for the agent to serve credential `name` satisfying `check`.
    pub async fn wait_for(&self, name: &str, check: impl Fn(&Value) -> bool) -> Value {
        let found = std::sync::Mutex::new(None);
        let ok = eventually(DEADLINE, || async {
            match self.credential(name).await {
                Some(c) if check(&c) => {
                    *found.lock().unwrap() = Some(c);
                    true
                }
                _ => false,
            }
        })
        .await;
        assert!(
            ok,
            "credential {name} never arrived as expected: {:?}\n{}",
            self.get(&format!("/v1/credentials/{name}")).await,
            self.log()
        );
        found.into_inner().unwrap().unwrap()
    }

    /// Waits for credential `name` to be refused with `status`; its body.
    pub async fn wait_status(&self, name: &str, status: u16, check: impl Fn(&Value) -> bool) -> Value {
        let found = std::sync::Mutex::new(None);
        let ok = eventually(DEADLINE, || async {
            let (s, body) = self.get(&format!("/v1/credentials/{name}")).await;
            let hit = s == status && check(&body);
            if hit {
                *found.lock().unwrap() = Some(body);
            }
            hit
        })
        .await;
        assert!(
            ok,
            "credential {name} never answered {status} as expected: {:?}\n{}",
            self.get(&format!("/v1/credentials/{name}")).await,
            self.log()
        );
        found.into_inner().unwrap().unwrap()
    }

    pub fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(i32::try_from(self.child.id().unwrap()).unwrap()).unwrap()
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(self.pid(), signal).unwrap();
    }

    /// Waits for the process to exit; its exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(DEADLINE, self.child.wait()).await.expect("the agent did not exit").unwrap();
        status.code()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every log line is JSON, and none holds any of `secrets`.
    pub fn assert_log_clean(&self, secrets: &[String]) {
        let log = self.log();
        assert!(!log.is_empty(), "the agent logged nothing");
        for line in log.lines() {
            assert!(serde_json::from_str::<Value>(line).is_ok(), "not a JSON log line: {line}");
        }
        for secret in secrets {
            assert!(!secret.is_empty());
            assert!(!log.contains(secret.as_str()), "a credential reached the agent's log");
        }
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        body.as_str().unwrap().to_owned()
    }
}

fn at(text: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(text.as_str().unwrap(), &Rfc3339).unwrap()
}

fn seconds(d: time::Duration) -> f64 {
    d.as_seconds_f64()
}

fn jwt_credential(name: &str, ttl: &str, file: &str) -> String {
    format!(
        r#"
[[agent.credentials]]
name = "{name}"
audience = "reports-api"
scope = "reports:read"
ttl = "{ttl}"
file = {file}
"#
    )
}

fn value(metrics: &str, series: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test]
async fn the_next_exchange_uses_the_attestation_file_as_it_is_then() {
    let Some(app) = spawn_app().await else { return };
    let dir = agent_dir();
    let first = app.rsa.claims(RSA_SUBJECT, app.now());
    write_attestation(dir.path(), &app.rsa.sign(&first));
    let config = agent_config(&app, dir.path(), "", &jwt_credential("reports", "3s", "\"reports.jwt\""));
    let agent = start_agent(dir.path(), &config, &[]).await;
    let credential = agent.wait_for("reports", |_| true).await;
    let issued = app.events("credential.issued").await;
    assert_eq!(issued.last().unwrap().attestation_id.as_deref(), first["jti"].as_str());

    // The kubelet rotates the token in place; the next renewal presents
    // the new one.
    let second = app.rsa.claims(RSA_SUBJECT, app.now());
    write_attestation(dir.path(), &app.rsa.sign(&second));
    let renewed = agent.wait_for("reports", |c| c["access_token"] != credential["access_token"]).await;
    let issued = app.events("credential.issued").await;
    let event = issued.iter().find(|e| Some(e.jti.clone().unwrap()) == jti_of(&renewed)).unwrap();
    assert_eq!(event.attestation_id.as_deref(), second["jti"].as_str(), "the renewal used a stale attestation");
    agent.assert_log_clean(&[
        credential["access_token"].as_str().unwrap().to_owned(),
        renewed["access_token"].as_str().unwrap().to_owned(),
        app.rsa.sign(&second),
    ]);
}

fn jti_of(credential: &Value) -> Option<String> {
    let (_, claims) = parts(credential["access_token"].as_str()?);
    claims["jti"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn credentials_are_renewed_before_expiry_at_a_jittered_share_of_their_life() {
    let Some(app) = spawn_app().await else { return };
    let dir = agent_dir();
    write_attestation(dir.path(), &app.rsa.token(RSA_SUBJECT, app.now()));
    let config = agent_config(&app, dir.path(), "", &jwt_credential("reports", "3s", "\"reports.jwt\""));
    let agent = start_agent(dir.path(), &config, &[]).await;
    let file = dir.path().join("creds/reports.jwt");

    let mut current = agent.wait_for("reports", |_| true).await;
    let mut shares = Vec::new();
    let mut tokens = vec![current["access_token"].as_str().unwrap().to_owned()];
    for _ in 0..3 {
        let (issued, renew, expires) =
            (at(&current["issued_at"]), at(&current["renew_at"]), at(&current["expires_at"]));
        assert_eq!(seconds(expires - issued), 3.0, "{current}");
        // The schedule the agent chose: 2/3 of the life ± a tenth.
        let share = seconds(renew - issued) / 3.0;
        assert!((2.0 / 3.0 - 0.1 - 0.001..=2.0 / 3.0 + 0.1 + 0.001).contains(&share), "renewal at {share} of the life");
        shares.push(share);
        // Watch the file while the renewal happens: it is never missing
        // and holds the old token or the new one.
        let previous = current["access_token"].as_str().unwrap().to_owned();
        let renewed = eventually(DEADLINE, || async {
            let on_disk = std::fs::read_to_string(&file).expect("the file went missing during a renewal");
            on_disk != previous
        })
        .await;
        assert!(renewed, "no renewal: {}", agent.log());
        current = agent.wait_for("reports", |c| c["access_token"] != previous.as_str()).await;
        // The new one was asked for after the renewal time and before the
        // old one expired, by the agent's own clock.
        let asked = at(&current["issued_at"]);
        assert!(asked >= renew - time::Duration::milliseconds(20), "renewed early: {asked} < {renew}");
        assert!(asked < expires, "renewed only after expiry: {asked} >= {expires}");
        tokens.push(current["access_token"].as_str().unwrap().to_owned());
    }
    shares.dedup();
    assert!(shares.len() > 1, "every renewal at the same share: no jitter ({shares:?})");
    let metrics = agent.metrics().await;
    assert!(value(&metrics, "halflife_agent_renewals_total{credential=\"reports\"}") >= 4.0, "{metrics}");
    let left = value(&metrics, "halflife_agent_expiry_seconds{credential=\"reports\"}");
    assert!(left > 0.0 && left <= 3.0, "{metrics}");
    agent.assert_log_clean(&tokens);
}

#[tokio::test]
async fn a_credential_outlives_a_broker_outage_until_its_expiry_and_no_longer() {
    let Some(mut app) = spawn_app().await else { return };
    let dir = agent_dir();
    write_attestation(dir.path(), &app.rsa.token(RSA_SUBJECT, app.now()));
    let config = agent_config(&app, dir.path(), "", &jwt_credential("reports", "4s", "\"reports.jwt\""));
    let agent = start_agent(dir.path(), &config, &[]).await;
    let file = dir.path().join("creds/reports.jwt");
    let held = agent.wait_for("reports", |_| true).await;

    app.stop().await;
    let expires = at(&held["expires_at"]);
    // Through the renewal time and up to the expiry, the credential stays.
    let removed = eventually(DEADLINE, || async {
        let (status, _) = agent.get("/v1/credentials/reports").await;
        if status == 200 {
            assert!(file.exists(), "the file went while the API still served the credential");
        }
        status == 410
    })
    .await;
    assert!(removed, "never removed: {}", agent.log());
    // The local API stops serving it first, then the file is deleted (a
    // blocking call on another thread): gone within the second the
    // removal time is held to below.
    let file_gone = eventually(Duration::from_secs(1), || async { !file.exists() }).await;
    assert!(file_gone, "the file outlived the credential");
    let (_, gone) = agent.get("/v1/credentials/reports").await;
    assert_eq!(gone["error"], "expired", "{gone}");
    assert!(gone["error_description"].as_str().unwrap().contains("unreachable"), "{gone}");
    let removed_at = at(&gone["removed_at"]);
    assert!(removed_at >= expires, "removed before its expiry: {removed_at} < {expires}");
    assert!(removed_at - expires < time::Duration::seconds(1), "kept past its expiry: {removed_at} vs {expires}");
    let (health, _) = agent.get("/healthz").await;
    assert_eq!(health, 503);

    // The broker returns: the agent renews without a restart.
    let pid = agent.pid();
    let app = app.restart().await;
    let back = agent.wait_for("reports", |_| true).await;
    assert!(file.exists());
    assert_eq!(agent.pid(), pid);
    assert_eq!(agent.get("/healthz").await.0, 200);
    let metrics = agent.metrics().await;
    assert!(value(&metrics, "halflife_agent_removals_total{credential=\"reports\",reason=\"expired\"}") >= 1.0);
    assert!(value(&metrics, "halflife_agent_failures_total{credential=\"reports\",reason=\"unavailable\"}") >= 1.0);
    drop(app);
    agent.assert_log_clean(&[
        held["access_token"].as_str().unwrap().to_owned(),
        back["access_token"].as_str().unwrap().to_owned(),
    ]);
}

#[tokio::test]
async fn revocation_suspension_and_a_departed_owner_remove_credentials_within_the_status_interval() {
    let catalog = format!("{}{SECRET_GRANT}", default_catalog());
    let Some(app) = spawn_with(Options { catalog, ..Options::default() }).await else { return };
    let operator = app.admin_token(halflife::domain::model::Role::Operator).await;
    let dir = agent_dir();
    write_attestation(dir.path(), &app.rsa.token(SECRET_AGENT, app.now()));
    // Lifetimes of ten minutes: only the status check can explain a
    // removal within seconds.
    let credentials = format!(
        "{}\n[[agent.credentials]]\nname = \"secret\"\nkind = \"secret\"\naudience = \"reports-api\"\nttl = \"600s\"\nfile = {{ path = \"secret.json\", format = \"json\" }}\n",
        jwt_credential("reports", "600s", "\"reports.jwt\"")
    );
    let config = agent_config(&app, dir.path(), "", &credentials);
    let agent = start_agent(dir.path(), &config, &[]).await;
    let jwt_file = dir.path().join("creds/reports.jwt");
    let secret_file = dir.path().join("creds/secret.json");
    let first = agent.wait_for("reports", |_| true).await;
    let secret = agent.wait_for("secret", |_| true).await;
    assert!(secret["access_token"].as_str().unwrap().starts_with("hlf_"));
    let on_disk: Value = serde_json::from_str(&std::fs::read_to_string(&secret_file).unwrap()).unwrap();
    assert_eq!(on_disk["access_token"], secret["access_token"]);
    assert_eq!(on_disk["token_type"], "Bearer");
    let mut seen =
        vec![first["access_token"].as_str().unwrap().to_owned(), secret["access_token"].as_str().unwrap().to_owned()];

    // Revoked while the system keeps operating: the revoked ones go, new
    // ones come.
    let (code, _) =
        app.api(Method::POST, "/v1/systems/summarizer/revoke", &operator, Some(json!({"reason": "leak drill"}))).await;
    assert_eq!(code, 200);
    let replaced = agent.wait_for("reports", |c| c["access_token"] != first["access_token"]).await;
    let replaced_secret = agent.wait_for("secret", |c| c["access_token"] != secret["access_token"]).await;
    assert_ne!(std::fs::read_to_string(&jwt_file).unwrap(), first["access_token"].as_str().unwrap());
    let metrics = agent.metrics().await;
    assert_eq!(
        value(&metrics, "halflife_agent_removals_total{credential=\"reports\",reason=\"revoked\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, "halflife_agent_removals_total{credential=\"secret\",reason=\"revoked\"}"),
        1.0,
        "{metrics}"
    );
    seen.extend([
        replaced["access_token"].as_str().unwrap().to_owned(),
        replaced_secret["access_token"].as_str().unwrap().to_owned(),
    ]);

    // Suspended: gone, and the API says why in the broker's words.
    let (code, _) = app
        .api(Method::POST, "/v1/systems/summarizer/suspend", &operator, Some(json!({"reason": "audit finding 7"})))
        .await;
    assert_eq!(code, 200);
    let started = std::time::Instant::now();
    for name in ["reports", "secret"] {
        let gone = agent.wait_status(name, 410, |b| b["error"] == "access_denied").await;
        let reason = gone["error_description"].as_str().unwrap();
        assert!(reason.contains("suspended"), "{reason}");
    }
    assert!(started.elapsed() < DEADLINE);
    assert!(!jwt_file.exists() && !secret_file.exists(), "a file outlived its suspended system");
    // Asked again at its backoff and refused again: it stays removed since
    // the same moment.
    let (_, removed) = agent.get("/v1/credentials/reports").await;
    let refusals = |m: &str| value(m, "halflife_agent_failures_total{credential=\"reports\",reason=\"refused\"}");
    let before = refusals(&agent.metrics().await);
    assert!(eventually(DEADLINE, || async { refusals(&agent.metrics().await) >= before + 2.0 }).await);
    let (status, again) = agent.get("/v1/credentials/reports").await;
    assert_eq!((status, &again["removed_at"]), (410, &removed["removed_at"]), "{again}");
    assert_eq!(agent.get("/healthz").await.0, 503);
    let health = || {
        tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(dir.path().join("agent.toml"))
            .args(["agent", "health"])
            .output()
    };
    let out = health().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "agent health passed with no credential held");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not healthy (503"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Reinstated: back without a restart.
    let ends = (halflife::clock::Clock::now(&app.clock) + time::Duration::days(20)).format(&Rfc3339).unwrap();
    let (code, body) = app
        .api(Method::POST, "/v1/systems/summarizer/reinstate", &operator, Some(json!({"pilot_ends_at": ends})))
        .await;
    assert_eq!(code, 200, "{body}");
    let back = agent.wait_for("reports", |_| true).await;
    agent.wait_for("secret", |_| true).await;
    assert!(jwt_file.exists() && secret_file.exists());
    assert!(health().await.unwrap().status.success(), "agent health failed with every credential held");
    seen.push(back["access_token"].as_str().unwrap().to_owned());

    // An owner departs: the system is suspended at once, the credentials go.
    let (code, _) =
        app.api(Method::POST, "/v1/owners/biz/depart", &operator, Some(json!({"reason": "left the company"}))).await;
    assert_eq!(code, 200);
    let gone = agent.wait_status("reports", 410, |b| b["error"] == "access_denied").await;
    assert!(!jwt_file.exists());
    let reason = gone["error_description"].as_str().unwrap();
    assert!(reason.contains("suspended") || reason.contains("owner"), "{reason}");
    agent.assert_log_clean(&seen);
}

const SECRET_AGENT: &str = "system:serviceaccount:ai:secret-agent";
const SECRET_GRANT: &str = r#"
[[grants]]
id = "summarizer-secrets"
system = "summarizer"
issuer = "k8s"
subject = "system:serviceaccount:ai:secret-agent"
audiences = ["reports-api"]
scopes = ["reports:read"]
kinds = ["jwt", "secret"]
max_ttl = "10m"
"#;

#[tokio::test]
async fn files_and_the_socket_are_private_and_a_reader_never_sees_half_a_file() {
    let Some(app) = spawn_app().await else { return };
    let dir = agent_dir();
    write_attestation(dir.path(), &app.rsa.token(RSA_SUBJECT, app.now()));
    // Owner and group as this test's own ids: whoever runs the tests may
    // give a file to itself.
    let (uid, gid) = {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir.path()).unwrap();
        (meta.uid(), meta.gid())
    };
    let shared_file = format!(
        "{{ path = \"shared.json\", format = \"json\", mode = \"0640\", owner = \"{uid}\", group = \"{gid}\" }}"
    );
    let credentials = format!(
        "{}{}{}api = false\n",
        jwt_credential("reports", "2s", "\"reports.jwt\""),
        jwt_credential("shared", "600s", &shared_file),
        jwt_credential("file-only", "600s", "\"file-only.jwt\"")
    );
    let config = agent_config(&app, dir.path(), "listen = \"127.0.0.1:0\"", &credentials);
    let agent = start_agent(dir.path(), &config, &[]).await;
    agent.wait_for("reports", |_| true).await;
    let shared = agent.wait_for("shared", |_| true).await;
    // Written, and not served: api = false.
    let file_only = dir.path().join("creds/file-only.jwt");
    assert!(eventually(DEADLINE, || async { file_only.exists() }).await);
    assert_eq!(agent.get("/v1/credentials/file-only").await.0, 404);
    // The loopback TCP listener serves the same API.
    let listen = agent
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|l| l["listen"].as_str().map(str::to_owned))
        .expect("the start line names the TCP address");
    let over_tcp: Value =
        reqwest::get(format!("http://{listen}/v1/credentials/shared")).await.unwrap().json().await.unwrap();
    assert_eq!(over_tcp["access_token"], shared["access_token"]);
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir.path().join("creds/reports.jwt")), 0o600);
    assert_eq!(mode(&dir.path().join("creds/shared.json")), 0o640);
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir.path().join("creds/shared.json")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    }
    assert_eq!(mode(&agent.socket), 0o600);

    // A reader in a tight loop across several renewals: every read is a
    // whole token the broker signed.
    let file = dir.path().join("creds/reports.jwt");
    let reader = std::thread::spawn(move || {
        let mut seen = std::collections::BTreeSet::new();
        let mut reads = 0u32;
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < until {
            let text = std::fs::read_to_string(&file).expect("a read found no file");
            seen.insert(text);
            reads += 1;
        }
        (seen, reads)
    });
    let (seen, reads) = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
    assert!(seen.len() >= 3, "{} distinct tokens in {reads} reads: too few renewals", seen.len());
    for token in &seen {
        let claims = verify_with_jwks(&app, token).await;
        assert_eq!(claims["sub"], RSA_SUBJECT);
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("creds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The local API: unknown names and routes, a non-DPoP proof request.
    let (status, body) = agent.get("/v1/credentials/nope").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    assert_eq!(agent.get("/nope").await.0, 404);
    assert_eq!(call(&agent.socket, "DELETE", "/v1/credentials/reports", None).await.0, 405);
    let (status, body) = call(
        &agent.socket,
        "POST",
        "/v1/credentials/reports/proof",
        Some(&json!({"htm": "GET", "htu": "https://x.example/"})),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");

    // A graceful stop takes the files and the socket with it.
    let mut agent = agent;
    agent.signal(rustix::process::Signal::TERM);
    assert_eq!(agent.exit_code().await, Some(0));
    assert!(!dir.path().join("creds/reports.jwt").exists() && !dir.path().join("creds/shared.json").exists());
    assert!(!agent.socket.exists());
    agent.assert_log_clean(&seen.into_iter().collect::<Vec<_>>());
}

#[tokio::test]
async fn exec_hands_the_child_paths_not_values_forwards_signals_and_returns_its_status() {
    let Some(app) = spawn_app().await else { return };
    let dir = agent_dir();
    let d = dir.path().display().to_string();
    write_attestation(dir.path(), &app.rsa.token(RSA_SUBJECT, app.now()));
    let script = dir.path().join("child.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > {d}/child.env\ntrap 'echo HUP >> {d}/child.signals' HUP\n\
             trap 'echo USR1 >> {d}/child.signals' USR1\ntrap 'echo TERM >> {d}/child.signals; exit 7' TERM\n\
             touch {d}/child.ready\nwhile :; do sleep 0.05; done\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = agent_config(
        &app,
        dir.path(),
        "exec.renewal_signal = \"SIGHUP\"",
        &jwt_credential("reports-api", "2s", "\"reports.jwt\""),
    );
    let mut agent = start_agent(dir.path(), &config, &["exec", "--", script.to_str().unwrap()]).await;
    let ready = dir.path().join("child.ready");
    assert!(eventually(DEADLINE, || async { ready.exists() }).await, "the child never started: {}", agent.log());

    // The child started with the credential in place, and sees where it
    // is, never what it is.
    let file = dir.path().join("creds/reports.jwt");
    let token = std::fs::read_to_string(&file).unwrap();
    let env = std::fs::read_to_string(dir.path().join("child.env")).unwrap();
    assert!(env.contains(&format!("HALFLIFE_CREDENTIAL_REPORTS_API_FILE={}", file.display())), "{env}");
    assert!(env.contains(&format!("HALFLIFE_CREDENTIALS_DIR={d}/creds")), "{env}");
    assert!(env.contains(&format!("HALFLIFE_AGENT_SOCKET={d}/agent.sock")), "{env}");
    assert!(!env.contains(&token), "the child's environment holds the credential");

    // After a renewal the child gets SIGHUP; signals to the agent reach it.
    let signals = dir.path().join("child.signals");
    let hup =
        eventually(DEADLINE, || async { std::fs::read_to_string(&signals).is_ok_and(|s| s.contains("HUP")) }).await;
    assert!(hup, "no SIGHUP after a renewal: {}", agent.log());
    assert_ne!(std::fs::read_to_string(&file).unwrap(), token, "SIGHUP without a renewal");
    agent.signal(rustix::process::Signal::USR1);
    let usr1 =
        eventually(DEADLINE, || async { std::fs::read_to_string(&signals).is_ok_and(|s| s.contains("USR1")) }).await;
    assert!(usr1, "SIGUSR1 was not passed on: {}", agent.log());
    agent.signal(rustix::process::Signal::TERM);
    assert_eq!(agent.exit_code().await, Some(7), "not the child's status: {}", agent.log());
    assert!(std::fs::read_to_string(&signals).unwrap().contains("TERM"));
    assert!(!file.exists(), "the credential outlived the command");

    // A command that cannot be started: the agent says so, exits 1, and
    // leaves no credential behind.
    let mut agent = spawn_agent(dir.path(), &config, &["exec", "--", "/nonexistent/program"]);
    assert_eq!(agent.exit_code().await, Some(1));
    assert!(agent.log().contains("cannot run /nonexistent/program"), "{}", agent.log());
    assert!(!file.exists(), "a credential outlived an exec that never ran");
    assert!(!dir.path().join("agent.sock").exists());

    // A command that ends by itself: its status is the agent's.
    let config = agent_config(&app, dir.path(), "", &jwt_credential("reports-api", "60s", "\"reports.jwt\""));
    // It may end before its socket could be reached: only its status counts.
    let mut agent = spawn_agent(
        dir.path(),
        &config,
        &["exec", "--", "/bin/sh", "-c", "test -s \"$HALFLIFE_CREDENTIAL_REPORTS_API_FILE\" && exit 3"],
    );
    assert_eq!(agent.exit_code().await, Some(3), "{}", agent.log());
}

#[tokio::test]
async fn a_bad_configuration_is_reported_key_by_key_and_nothing_starts() {
    let dir = agent_dir();
    let d = dir.path().display();
    let text = format!(
        r#"
[agent]
broker_url = "http://broker.example:8080"
socket = "{d}/agent.sock"
socket_mode = "0666"
renew_fraction = 1.5
[agent.attestation]
command = []
[[agent.credentials]]
name = "Reports Token"
kind = "postgres-login"
binding = "dpop"
file = {{ path = "{d}/missing-dir/t", mode = "0644", format = "xml" }}
[[agent.credentials]]
name = "ok"
audience = "reports-api"
ttl = "0s"
"#
    );
    std::fs::write(dir.path().join("agent.toml"), &text).unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        std::process::Command::new(BIN)
            .arg("--config")
            .arg(dir.path().join("agent.toml"))
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let out = run(&["agent"], &[("HALFLIFE_AGENT__STATUS_INTERVAL", "1ms")]);
    assert_eq!(out.status.code(), Some(1));
    // A starting agent reports on stderr, where its logs go.
    let report = String::from_utf8(out.stderr).unwrap();
    for key in [
        "agent.broker_url",
        "agent.attestation.command",
        "agent.socket_mode",
        "agent.renew_fraction",
        "agent.status_interval",
        "agent.credentials[0].name",
        "agent.credentials[0].resource",
        "agent.credentials[0].binding",
        "agent.credentials[0].file: its directory",
        "agent.credentials[0].file.format",
        "agent.credentials[0].file.mode",
        "agent.credentials[1].ttl",
    ] {
        assert!(report.lines().any(|l| l.starts_with(&format!("  - {key}"))), "{key} not reported:\n{report}");
    }
    assert!(report.starts_with(&format!("{}: 12 problems", dir.path().join("agent.toml").display())), "{report}");
    assert!(report.contains("nothing was started"));
    assert!(!dir.path().join("agent.sock").exists(), "a socket was bound for a configuration that cannot run");
    // The same check on its own, and a type error named by its key.
    assert_eq!(run(&["agent", "check"], &[]).status.code(), Some(1));
    let out = run(&["agent", "check"], &[("HALFLIFE_AGENT__RETRY_MAX", "soon")]);
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(report.contains("  - agent.retry_max: "), "{report}");
    // A good file passes, with the agent's overrides applied and the
    // broker's variables ignored.
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[agent]\nbroker_url = \"http://127.0.0.1:8080\"\nsocket = \"{d}/agent.sock\"\nattestation.file = \"{d}/a\"\n\
             [[agent.credentials]]\nname = \"reports\"\naudience = \"reports-api\"\n"
        ),
    )
    .unwrap();
    let check = |env: &[(&str, &str)]| {
        std::process::Command::new(BIN)
            .arg("--config")
            .arg(&good)
            .args(["agent", "check"])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let out = check(&[("HALFLIFE_SERVER__LISTEN", "not an address"), ("HALFLIFE_AGENT__RENEW_JITTER", "0.05")]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let out = check(&[("HALFLIFE_AGENT__RENEW_JITTER", "0.5")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("  - agent.renew_jitter: "));
    // A missing file, and none at all.
    let out = std::process::Command::new(BIN).args(["--config", "/nonexistent/agent.toml", "agent"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = std::process::Command::new(BIN).arg("agent").env_remove("HALFLIFE_CONFIG").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --config"));
}

/// Polling at the broker's interval, measured against a minimal server
/// that answers the exchange with `authorization_pending` (RFC 8628 style)
/// until "approved" (the real broker's flow is
/// `the_agent_waits_on_a_pending_approval_and_picks_up_the_credential_once_approved`).
#[tokio::test]
async fn authorization_pending_is_polled_at_the_brokers_interval_and_reported() {
    use std::sync::{Arc, Mutex};
    let polls: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let approved = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let router = {
        let (polls, approved) = (Arc::clone(&polls), Arc::clone(&approved));
        axum::Router::new()
            .route(
                "/oauth2/token",
                axum::routing::post(move || {
                    let (polls, approved) = (Arc::clone(&polls), Arc::clone(&approved));
                    async move {
                        polls.lock().unwrap().push(std::time::Instant::now());
                        if approved.load(std::sync::atomic::Ordering::SeqCst) {
                            (axum::http::StatusCode::OK, axum::Json(json!({"access_token": "approved-token-0123", "token_type": "Bearer", "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "expires_in": 600, "scope": "reports:read"})))
                        } else {
                            (axum::http::StatusCode::BAD_REQUEST, axum::Json(json!({"error": "authorization_pending", "error_description": "waiting for dana to approve", "interval": 1})))
                        }
                    }
                }),
            )
            .route("/oauth2/token-status", axum::routing::post(|| async { axum::Json(json!({"active": true})) }))
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let dir = agent_dir();
    write_attestation(dir.path(), "eyJ.stand-in.attestation");
    let d = dir.path().display();
    let config = format!(
        "[agent]\nbroker_url = \"{base}\"\nsocket = \"{d}/agent.sock\"\nretry_initial = \"100ms\"\nretry_max = \"200ms\"\n\
         [agent.attestation]\nfile = \"{d}/attestation.jwt\"\n[[agent.credentials]]\nname = \"reports\"\naudience = \"reports-api\"\n"
    );
    let agent = start_agent(dir.path(), &config, &[]).await;
    let pending = agent.wait_status("reports", 503, |b| b["error"] == "authorization_pending").await;
    assert_eq!(pending["interval"], 1);
    assert_eq!(pending["error_description"], "waiting for dana to approve");
    let (_, health) = agent.get("/healthz").await;
    assert_eq!(health["credentials"]["reports"]["state"], "authorization_pending");
    assert!(eventually(DEADLINE, || async { polls.lock().unwrap().len() >= 4 }).await);
    {
        let polls = polls.lock().unwrap();
        for pair in polls.windows(2) {
            let gap = pair[1] - pair[0];
            // The broker's interval, not the (much shorter) retry backoff.
            assert!(gap >= Duration::from_millis(950), "polled {gap:?} after the last poll");
        }
    }
    approved.store(true, std::sync::atomic::Ordering::SeqCst);
    let credential = agent.wait_for("reports", |_| true).await;
    assert_eq!(credential["access_token"], "approved-token-0123");
    agent.assert_log_clean(&["approved-token-0123".to_owned(), "eyJ.stand-in.attestation".to_owned()]);
}

const DPOP_AGENT: &str = "system:serviceaccount:ai:dpop-agent";

/// The DPoP proof endpoint, used the way `examples/agent_dpop_call.py`
/// uses it, accepted by `examples/dpop_resource_server.py` (PyJWT); and
/// the tool-call example reading a bearer credential at call time.
#[tokio::test]
async fn the_examples_call_with_the_agents_credentials_and_its_dpop_proofs() {
    if !crate::independent::pyjwt_available() {
        return;
    }
    let catalog = format!("{}{}", default_catalog(), crate::mtls::BINDING_GRANTS);
    let Some(app) = spawn_with(Options { catalog, ..Options::default() }).await else { return };
    let dir = agent_dir();
    write_attestation(dir.path(), &app.rsa.token(DPOP_AGENT, app.now()));
    let credentials = r#"
[[agent.credentials]]
name = "reports"
audience = "reports-api"
binding = "dpop"
ttl = "300s"
"#;
    let config = agent_config(&app, dir.path(), "", credentials);
    let agent = start_agent(dir.path(), &config, &[]).await;
    let credential = agent.wait_for("reports", |_| true).await;
    assert_eq!(credential["token_type"], "DPoP");
    let token = credential["access_token"].as_str().unwrap().to_owned();
    let (_, claims) = parts(&token);
    assert!(claims["cnf"]["jkt"].is_string(), "{claims}");
    // Its status queries carry proofs the broker accepts.
    let checked = eventually(DEADLINE, || async {
        value(&agent.metrics().await, "halflife_agent_status_checks_total{credential=\"reports\",reason=\"active\"}")
            >= 2.0
    })
    .await;
    assert!(checked, "{}", agent.metrics().await);
    assert_eq!(
        value(&agent.metrics().await, "halflife_agent_status_checks_total{credential=\"reports\",reason=\"failed\"}"),
        0.0
    );

    // The example: token and proof from the agent, verified by the
    // resource server.
    let socket = agent.socket.to_str().unwrap();
    let url = "https://reports.example/v1/reports?month=11";
    // Asynchronously: the examples call the broker this test runs.
    let run = |script: &str, args: &[&str]| {
        tokio::process::Command::new("python3").arg(repo_root().join("examples").join(script)).args(args).output()
    };
    let out = run("agent_dpop_call.py", &["--socket", socket, &app.base, "reports-api", "GET", url]).await.unwrap();
    assert!(out.status.success(), "refused: {}", String::from_utf8_lossy(&out.stderr));
    let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verified["sub"], DPOP_AGENT);

    // The proof names exactly the request it was asked for, and `ath`
    // ties it to this token: another URL or method is refused.
    let (status, body) =
        call(&agent.socket, "POST", "/v1/credentials/reports/proof", Some(&json!({"htm": "POST", "htu": url}))).await;
    assert_eq!(status, 200, "{body}");
    let proof = body["proof"].as_str().unwrap();
    let jwks = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap();
    let server = |method: &str, proof: &str| {
        std::process::Command::new("python3")
            .arg(repo_root().join("examples/dpop_resource_server.py"))
            .args([jwks.as_str(), app.base.as_str(), "reports-api", method, url, &format!("DPoP {token}"), proof])
            .output()
            .unwrap()
    };
    assert!(server("POST", proof).status.success());
    let wrong_method = server("GET", proof);
    assert_eq!(wrong_method.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong_method.stderr).contains("htm/htu"));
    for bad in [json!({"htm": "get", "htu": url}), json!({"htm": "GET", "htu": "/relative"}), json!({"htm": "GET"})] {
        let (status, body) = call(&agent.socket, "POST", "/v1/credentials/reports/proof", Some(&bad)).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{bad}: {body}");
    }

    // The tool call: the credential is read from the socket at call time
    // and sent as it is.
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
    let router = {
        let seen = std::sync::Arc::clone(&seen);
        axum::Router::new().route(
            "/tool",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let seen = std::sync::Arc::clone(&seen);
                async move {
                    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    seen.lock().unwrap().push(authorization.to_owned());
                    "tool result"
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tool = format!("http://{}/tool", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let out = run("agent_tool_call.py", &["--socket", socket, "--credential", "reports", &tool]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("tool result"));
    assert_eq!(*seen.lock().unwrap(), [format!("DPoP {token}")]);

    // Once the system is suspended the tool refuses to run, saying why.
    let operator = app.admin_token(halflife::domain::model::Role::Operator).await;
    let (code, _) = app
        .api(Method::POST, "/v1/systems/summarizer/suspend", &operator, Some(json!({"reason": "model review"})))
        .await;
    assert_eq!(code, 200);
    agent.wait_status("reports", 410, |b| b["error"] == "access_denied").await;
    let out = run("agent_tool_call.py", &["--socket", socket, &tool]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("410 access_denied") && said.contains("suspended"), "{said}");
    assert_eq!(seen.lock().unwrap().len(), 1, "the tool was called without a credential");
    agent.assert_log_clean(&[token]);
}

/// A database login from the agent's JSON file: psql connects with it.
#[tokio::test]
async fn psql_connects_with_the_login_the_agent_wrote() {
    let Some(backend) = crate::logins::Backend::create().await else { return };
    let extra_config = backend.config(backend.direct());
    let options = Options { extra_config, catalog: crate::logins::catalog(), ..Options::default() };
    let Some(app) = spawn_with(options).await else { return };
    let dir = agent_dir();
    write_attestation(dir.path(), &app.rsa.token(crate::logins::DB_AGENT, app.now()));
    let credentials = r#"
[[agent.credentials]]
name = "reports-db"
kind = "postgres-login"
resource = "postgres:reports"
ttl = "120s"
file = { path = "reports-db.json", format = "json" }
"#;
    let config = agent_config(&app, dir.path(), "", credentials);
    let agent = start_agent(dir.path(), &config, &[]).await;
    let credential = agent.wait_for("reports-db", |_| true).await;
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("creds/reports-db.json")).unwrap()).unwrap();
    for field in ["username", "password", "host", "port", "database", "expires_at"] {
        assert_eq!(file[field], credential[field], "{field}");
    }
    assert_eq!(file["password"], file["access_token"]);
    let port = file["port"].as_u64().unwrap().to_string();
    let out = std::process::Command::new("psql")
        .env("PGPASSWORD", file["password"].as_str().unwrap())
        .args(["-h", file["host"].as_str().unwrap(), "-p", &port, "-U", file["username"].as_str().unwrap()])
        .args(["-d", file["database"].as_str().unwrap(), "-tAc", "SELECT count(*) FROM reports.daily"])
        .output()
        .expect("psql is needed for this test (Debian: postgresql-client)");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    agent.assert_log_clean(&[file["password"].as_str().unwrap().to_owned()]);
}

/// An X.509-SVID as the attestation: `client_credentials` over the
/// broker's mTLS listener (trusted through `ca_file`), certificate-bound
/// tokens whose status is asked over mTLS too, and a rotated SVID picked up
/// from its files with a token bound to it at once.
#[tokio::test]
async fn an_x509_svid_is_the_attestation_and_is_re_read_when_rotated() {
    let Some(m) = crate::mtls::MtlsApp::start("").await else { return };
    let dir = agent_dir();
    let d = dir.path().display();
    std::fs::write(dir.path().join("ca.pem"), m.pki.ca.pem()).unwrap();
    let (cert, key) = (dir.path().join("svid.pem"), dir.path().join("svid-key.pem"));
    let first = m.prod.svid(crate::mtls::SVID);
    first.write_pem(&cert, &key);
    let config = format!(
        r#"
[agent]
broker_url = "{url}"
ca_file = "{d}/ca.pem"
socket = "{d}/agent.sock"
status_interval = "500ms"
retry_initial = "100ms"
retry_max = "500ms"

[agent.attestation]
x509 = {{ cert_file = "{d}/svid.pem", key_file = "{d}/svid-key.pem" }}

[[agent.credentials]]
name = "search"
audience = "search-api"
ttl = "600s"
"#,
        url = m.mtls_url("")
    );
    let agent = start_agent(dir.path(), &config, &[]).await;
    let credential = agent.wait_for("search", |_| true).await;
    let (_, claims) = parts(credential["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], crate::mtls::SVID);
    assert_eq!(claims["cnf"]["x5t#S256"], first.thumbprint());
    // Its status is checked over mTLS with the bound certificate.
    let checked = eventually(DEADLINE, || async {
        value(&agent.metrics().await, "halflife_agent_status_checks_total{credential=\"search\",reason=\"active\"}")
            >= 1.0
    })
    .await;
    assert!(checked, "{}", agent.metrics().await);

    // Rotated long before the token's renewal is due: the token is bound
    // to a certificate the workload stops presenting, so it is renewed now.
    let rotated = m.prod.svid(crate::mtls::SVID);
    rotated.write_pem(&cert, &key);
    let renewed = agent
        .wait_for("search", |c| parts(c["access_token"].as_str().unwrap()).1["cnf"]["x5t#S256"] == rotated.thumbprint())
        .await;
    let fingerprint = format!("x509-sha256:{}", halflife::crypto::hex(&halflife::crypto::sha256(&rotated.der)));
    let issued = m.app.events("credential.issued").await;
    let event = issued.iter().find(|e| e.jti == jti_of(&renewed)).unwrap();
    assert_eq!(event.attestation_id.as_deref(), Some(fingerprint.as_str()));
    let metrics = agent.metrics().await;
    assert_eq!(
        value(&metrics, "halflife_agent_status_checks_total{credential=\"search\",reason=\"failed\"}"),
        0.0,
        "{metrics}"
    );
    agent.assert_log_clean(&[credential["access_token"].as_str().unwrap().to_owned()]);
}

/// A command as the attestation source: here `halflife dev token`, whose
/// single-use attestations need a fresh one for every exchange.
#[tokio::test]
async fn a_command_prints_a_fresh_attestation_for_every_exchange() {
    let Some(app) = spawn_app().await else { return };
    let dir = agent_dir();
    let d = dir.path().display();
    std::fs::write(dir.path().join("broker.toml"), app.config_text()).unwrap();
    let config = format!(
        r#"
[agent]
broker_url = "{base}"
socket = "{d}/agent.sock"
retry_initial = "100ms"
retry_max = "500ms"

[agent.attestation]
command = ["{BIN}", "--config", "{d}/broker.toml", "dev", "token", "--subject", "spiffe://dev.local/ns/ai/sa/summarizer"]

[[agent.credentials]]
name = "reports"
audience = "reports-api"
ttl = "2s"
"#,
        base = app.base
    );
    let agent = start_agent(dir.path(), &config, &[]).await;
    let first = agent.wait_for("reports", |_| true).await;
    let second = agent.wait_for("reports", |c| c["access_token"] != first["access_token"]).await;
    agent.wait_for("reports", |c| c["access_token"] != second["access_token"]).await;
    let issued = app.events("credential.issued").await;
    let attestations: std::collections::BTreeSet<_> =
        issued.iter().map(|e| e.attestation_id.clone().unwrap()).collect();
    assert_eq!(attestations.len(), issued.len(), "an attestation was presented twice");
    assert!(issued.len() >= 3);
    assert!(app.events("credential.denied").await.is_empty(), "a single-use attestation was replayed");
    assert_eq!(
        value(&agent.metrics().await, "halflife_agent_failures_total{credential=\"reports\",reason=\"refused\"}"),
        0.0
    );
}

/// Processes a test started, killed when it ends however it ends.
struct Processes(Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// docs/agent.md's "Running the agent", as a newcomer follows it from a fresh
/// clone: the broker on the development config, `halflife dev token`
/// writing the attestation file, the agent on `config/agent.toml`; the
/// credential file appears, is renewed, and disappears when the system is
/// suspended; it comes back when the system is reinstated. Only the port,
/// the lifetime and the intervals are shortened for the test.
#[tokio::test]
async fn running_the_agent_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("config")).unwrap();
    for file in ["halflife.toml", "dev-catalog.toml", "agent.toml"] {
        std::fs::copy(repo_root().join("config").join(file), root.join("config").join(file)).unwrap();
    }
    let agent_toml = std::fs::read_to_string(root.join("config/agent.toml")).unwrap();
    assert!(agent_toml.contains("ttl = \"60s\""));
    std::fs::write(root.join("config/agent.toml"), agent_toml.replace("ttl = \"60s\"", "ttl = \"3s\"")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let halflife = |args: &[&str]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.current_dir(root)
            .args(args)
            .env("HALFLIFE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("HALFLIFE_URL", &base)
            .env("HALFLIFE_AGENT__BROKER_URL", &base)
            .env("HALFLIFE_AGENT__STATUS_INTERVAL", "500ms")
            .env("HALFLIFE_AGENT__RETRY_INITIAL", "100ms")
            .env("HALFLIFE_AGENT__RETRY_MAX", "500ms")
            .env_remove("HALFLIFE_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    };
    let log = |name: &str| std::fs::File::create(root.join(name)).unwrap();
    let mut running = Processes(Vec::new());

    // The broker (`cargo run --release -- serve`).
    running.0.push(halflife(&["serve"]).stdout(Stdio::null()).stderr(log("server.log")).spawn().unwrap());
    halflife::crypto::install();
    let client = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(30), || async {
        matches!(client.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(ready, "{}", std::fs::read_to_string(root.join("server.log")).unwrap());

    // mkdir -p data/credentials; the attestation; the agent.
    std::fs::create_dir_all(root.join("data/credentials")).unwrap();
    running.0.push(
        halflife(&["dev", "token", "--subject", "spiffe://dev.local/ns/ai/sa/summarizer"])
            .args(["--out", "data/attestation.jwt", "--every", "500ms"])
            .stdout(Stdio::null())
            .stderr(log("dev-token.log"))
            .spawn()
            .unwrap(),
    );
    running.0.push(
        halflife(&["agent", "--config", "config/agent.toml"])
            .stdout(Stdio::null())
            .stderr(log("agent.log"))
            .spawn()
            .unwrap(),
    );
    let agent_log = || std::fs::read_to_string(root.join("agent.log")).unwrap_or_default();

    // The credential file appears, private, and is renewed.
    let file = root.join("data/credentials/reports.jwt");
    assert!(eventually(DEADLINE, || async { file.exists() }).await, "no credential file: {}", agent_log());
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let first = std::fs::read_to_string(&file).unwrap();
    let renewed =
        eventually(DEADLINE, || async { std::fs::read_to_string(&file).is_ok_and(|t| !t.is_empty() && t != first) })
            .await;
    assert!(renewed, "never renewed: {}", agent_log());
    assert!(agent_log().contains("credential reports: active"), "no status line: {}", agent_log());
    let socket = root.join("data/agent.sock");
    let (status, credential) = call(&socket, "GET", "/v1/credentials/reports", None).await;
    assert_eq!(status, 200, "{credential}");

    // Suspend the system: the file goes, and the API says why.
    let out = halflife(&["admin", "token", "create", "--role", "operator", "--name", "you"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().to_owned();
    let out = halflife(&["systems", "suspend", "summarizer", "--reason", "trying the agent"])
        .env("HALFLIFE_TOKEN", &token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        eventually(DEADLINE, || async { !file.exists() }).await,
        "the file outlived the suspension: {}",
        agent_log()
    );
    let gone = eventually(DEADLINE, || async {
        let (status, body) = call(&socket, "GET", "/v1/credentials/reports", None).await;
        status == 410 && body["error_description"] == "system summarizer is suspended (trying the agent (by you))"
    })
    .await;
    assert!(gone, "{:?}", call(&socket, "GET", "/v1/credentials/reports", None).await);

    // Reinstate it: the agent gets a new credential by itself.
    let out = halflife(&["systems", "reinstate", "summarizer", "--pilot-ends-at", "30d"])
        .env("HALFLIFE_TOKEN", &token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(DEADLINE, || async { file.exists() }).await, "not back after reinstatement: {}", agent_log());
}

/// A JWT attestation sent over the mTLS listener with `client_svid`: the
/// token is bound to the certificate the agent presents.
#[tokio::test]
async fn a_client_svid_binds_the_token_of_a_jwt_attestation_to_the_certificate() {
    let Some(m) = crate::mtls::MtlsApp::start("").await else { return };
    let dir = agent_dir();
    let d = dir.path().display();
    std::fs::write(dir.path().join("ca.pem"), m.pki.ca.pem()).unwrap();
    let leaf = m.prod.svid(crate::mtls::SVID);
    leaf.write_pem(&dir.path().join("svid.pem"), &dir.path().join("svid-key.pem"));
    write_attestation(dir.path(), &m.app.ec.token(crate::mtls::SVID, m.app.now()));
    let config = format!(
        r#"
[agent]
broker_url = "{url}"
ca_file = "{d}/ca.pem"
client_svid = {{ cert_file = "{d}/svid.pem", key_file = "{d}/svid-key.pem" }}
socket = "{d}/agent.sock"

[agent.attestation]
file = "{d}/attestation.jwt"

[[agent.credentials]]
name = "search"
audience = "search-api"
"#,
        url = m.mtls_url("")
    );
    let agent = start_agent(dir.path(), &config, &[]).await;
    let credential = agent.wait_for("search", |_| true).await;
    let (_, claims) = parts(credential["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], crate::mtls::SVID);
    assert_eq!(claims["cnf"]["x5t#S256"], leaf.thumbprint());
    let issued = m.app.events("credential.issued").await;
    let event = issued.iter().find(|e| e.jti == jti_of(&credential)).unwrap();
    assert!(
        !event.attestation_id.as_deref().unwrap_or_default().starts_with("x509-sha256:"),
        "the JWT was the attestation"
    );
}

/// The approvals flow against the real broker: the agent waits on the
/// pending access request (one request however often it asks), and serves
/// the credential once a person approves it.
#[tokio::test]
async fn the_agent_waits_on_a_pending_approval_and_picks_up_the_credential_once_approved() {
    let catalog = default_catalog().replacen("max_ttl = \"15m\"\n", "max_ttl = \"15m\"\napproval = \"required\"\n", 1);
    let options = Options { catalog, extra_config: "[approvals]\ninterval = \"1s\"\n".into(), ..Options::default() };
    let Some(app) = spawn_with(options).await else { return };
    let dir = agent_dir();
    write_attestation(dir.path(), &app.rsa.token(RSA_SUBJECT, app.now()));
    let config = agent_config(&app, dir.path(), "", &jwt_credential("reports", "3s", "\"reports.jwt\""));
    let agent = start_agent(dir.path(), &config, &[]).await;
    let pending = agent.wait_status("reports", 503, |b| b["error"] == "authorization_pending").await;
    assert_eq!(pending["interval"], 1, "{pending}");
    assert!(!dir.path().join("creds/reports.jwt").exists(), "nothing is served before approval");

    let approver = app.person_token("ann@corp.example", &["hl-approvers"]).await;
    let (_, list) = app.api(Method::GET, "/v1/access-requests?state=pending", &approver, None).await;
    let requests = list["access_requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "one request however often the agent asks: {list}");
    let id = requests[0]["id"].as_str().unwrap();
    let (status, body) = app
        .api(Method::POST, &format!("/v1/access-requests/{id}/approve"), &approver, Some(json!({"duration": "10m"})))
        .await;
    assert_eq!(status, 200, "{body}");

    let credential = agent.wait_for("reports", |_| true).await;
    let token = credential["access_token"].as_str().unwrap();
    let introspector = app.admin_token(halflife::domain::model::Role::Introspector).await;
    assert_eq!(app.introspect(&introspector, token).await["active"], true);
    assert!(dir.path().join("creds/reports.jwt").exists());
    agent.assert_log_clean(&[token.to_owned()]);
}
