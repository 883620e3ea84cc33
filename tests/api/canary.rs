//! Canary secrets: the real binary at the most verbose log level, handling
//! a known subject token, issued JWT, opaque secret, admin token and
//! signing key. None of them may appear in any log line, any response body
//! other than the one that delivers it, any audit event or export, or the
//! database files.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_halflife");
const SUBJECT: &str = "spiffe://dev.local/ns/ai/sa/summarizer";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env("HALFLIFE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("HALFLIFE_CONFIG")
        .env("RUST_LOG", "trace");
    cmd
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The forms a secret could leak in: whole, and its distinctive parts.
fn forms(name: &'static str, secret: &str) -> Vec<(&'static str, String)> {
    let mut out = vec![(name, secret.to_owned())];
    if let Some((_, signature)) = secret.rsplit_once('.') {
        out.push((name, signature.to_owned()));
    }
    if let Some(random) = secret.strip_prefix("hlf_") {
        out.push((name, random[..43].to_owned()));
    }
    out
}

/// Every form of a private key: the PKCS#8 document and the 32-byte seed
/// at its end, in base64, base64url and hex.
fn key_forms(der: &[u8]) -> Vec<(&'static str, String)> {
    let seed = &der[der.len() - 32..];
    let mut out = Vec::new();
    for bytes in [der, seed] {
        out.push(("signing key", STANDARD.encode(bytes)));
        out.push(("signing key", URL_SAFE_NO_PAD.encode(bytes)));
        out.push(("signing key", bytes.iter().map(|b| format!("{b:02x}")).collect()));
    }
    out
}

#[tokio::test]
async fn canary_secrets_reach_no_log_response_event_export_or_database() {
    halflife::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::copy(repo_root().join("config/halflife.toml"), dir.path().join("config/halflife.toml")).unwrap();
    let catalog = std::fs::read_to_string(repo_root().join("config/dev-catalog.toml")).unwrap();
    let catalog = catalog.replace("kinds = [\"jwt\"]", "kinds = [\"jwt\", \"secret\"]");
    assert!(catalog.contains("\"secret\""));
    std::fs::write(dir.path().join("config/dev-catalog.toml"), catalog).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log_path = dir.path().join("server.log");
    let child = cli(dir.path(), port)
        .args(["--log-format", "json", "serve"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(30), || async {
        matches!(client.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(ready, "server did not start: {}", std::fs::read_to_string(&log_path).unwrap());

    let admin = stdout_of(cli(dir.path(), port).args(["admin", "token", "create", "--role", "admin", "--name", "c"]));
    let admin = admin.lines().last().unwrap().to_owned();
    let subject_jwt = stdout_of(cli(dir.path(), port).args(["dev", "token", "--subject", SUBJECT]));
    let subject_secret = stdout_of(cli(dir.path(), port).args(["dev", "token", "--subject", SUBJECT]));

    // Bodies that must hold no canary; the two that deliver a credential
    // are read for it and kept out.
    let mut bodies: Vec<(String, String)> = Vec::new();
    let exchange = |subject: String, extra: Vec<(&'static str, &'static str)>| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let mut form = vec![
                ("grant_type", TOKEN_EXCHANGE.to_owned()),
                ("subject_token_type", JWT_TYPE.to_owned()),
                ("subject_token", subject),
                ("audience", "reports-api".to_owned()),
            ];
            form.extend(extra.into_iter().map(|(k, v)| (k, v.to_owned())));
            let response = client.post(format!("{base}/oauth2/token")).form(&form).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, body) = exchange(subject_jwt.clone(), vec![]).await;
    assert_eq!(status, 200, "{body}");
    let jwt = serde_json::from_str::<Value>(&body).unwrap()["access_token"].as_str().unwrap().to_owned();
    let (status, body) =
        exchange(subject_secret.clone(), vec![("requested_token_type", "urn:halflife:token-type:secret")]).await;
    assert_eq!(status, 200, "{body}");
    let secret = serde_json::from_str::<Value>(&body).unwrap()["access_token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("hlf_"));

    // Use every canary where it belongs, and where it does not.
    for (label, (status, body)) in [
        ("replay", exchange(subject_jwt.clone(), vec![]).await),
        ("admin token as subject", exchange(admin.clone(), vec![]).await),
        ("issued token as subject", exchange(jwt.clone(), vec![]).await),
        ("secret as subject", exchange(secret.clone(), vec![]).await),
    ] {
        assert_eq!(status, 400, "{label}: {body}");
        bodies.push((label.into(), body));
    }
    for token in [&jwt, &secret, &subject_jwt, &admin] {
        let response =
            client.post(format!("{base}/oauth2/introspect")).bearer_auth(&admin).form(&[("token", token)]).send();
        bodies.push(("introspection".into(), response.await.unwrap().text().await.unwrap()));
    }
    for bearer in [&jwt, &secret, &subject_jwt] {
        let response = client.get(format!("{base}/v1/systems")).bearer_auth(bearer).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status == 401 || status == 403, "{status} {text}");
        bodies.push(("admin route with a workload credential".into(), text));
    }
    let jti = parts(&jwt).1["jti"].as_str().unwrap().to_owned();
    let response = client.get(format!("{base}/v1/audit/events?jti={jwt}")).bearer_auth(&admin).send().await.unwrap();
    bodies.push(("token in a query string".into(), response.text().await.unwrap()));
    let revoked = client.post(format!("{base}/oauth2/revoke")).form(&[("token", &secret)]).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    bodies.push(("revocation".into(), revoked.text().await.unwrap()));
    for path in [
        "/v1/audit/events?limit=1000".to_owned(),
        "/v1/audit/events?format=jsonl".to_owned(),
        "/v1/audit/events?format=csv".to_owned(),
        "/v1/audit/checkpoints".to_owned(),
        format!("/v1/credentials/{jti}"),
        "/v1/systems".to_owned(),
        "/metrics".to_owned(),
        "/.well-known/jwks.json".to_owned(),
    ] {
        let response = client.get(format!("{base}{path}")).bearer_auth(&admin).send().await.unwrap();
        assert!(response.status().is_success(), "{path}");
        bodies.push((path, response.text().await.unwrap()));
    }
    let export = dir.path().join("export.jsonl");
    let checkpoints = dir.path().join("checkpoints.json");
    let mut cmd = cli(dir.path(), port);
    cmd.env("HALFLIFE_TOKEN", &admin).env("HALFLIFE_URL", &base).args(["audit", "export", "--out"]);
    cmd.arg(&export).arg("--checkpoints").arg(&checkpoints);
    bodies.push(("halflife audit export (stdout)".into(), stdout_of(&mut cmd)));
    bodies.push(("halflife audit export".into(), std::fs::read_to_string(&export).unwrap()));
    let mut cmd = cli(dir.path(), port);
    cmd.env("HALFLIFE_TOKEN", &admin).env("HALFLIFE_URL", &base).args(["audit", "query", "--json", "--limit", "1000"]);
    bodies.push(("halflife audit query".into(), stdout_of(&mut cmd)));

    assert!(Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap().success());
    assert!(server.0.wait().unwrap().success());

    // The signing key, opened the way the broker opens it.
    let kek = halflife::keys::Kek::load(halflife::keys::KekSource::File(&dir.path().join("data/keys/kek"))).unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("data/halflife.db").display());
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db_url).await.unwrap();
    let keys: Vec<(String, String, String)> =
        sqlx::query_as("SELECT kid, alg, sealed FROM signing_keys").fetch_all(&mut db).await.unwrap();
    // Closed before the files are read: the last connection's close folds
    // the WAL into the database file and removes it.
    sqlx::Connection::close(db).await.unwrap();
    assert!(!keys.is_empty());

    let mut canaries = Vec::new();
    canaries.extend(forms("subject token", &subject_jwt));
    canaries.extend(forms("subject token", &subject_secret));
    canaries.extend(forms("issued token", &jwt));
    canaries.extend(forms("opaque secret", &secret));
    canaries.extend(forms("admin token", &admin));
    for (kid, alg, sealed) in &keys {
        let der = kek.open(&format!("halflife-key-v1:{kid}:{alg}"), sealed).unwrap();
        canaries.extend(key_forms(&der));
    }

    let mut sinks: Vec<(String, String)> = bodies;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.lines().count() > 50, "trace logging was not on");
    assert!(log.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "--log-format json is not JSON lines");
    sinks.push(("server log".into(), log));
    let mut files = Vec::new();
    collect_files(&dir.path().join("data"), &mut files);
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        sinks.push((path.display().to_string(), String::from_utf8_lossy(&bytes).into_owned()));
    }

    let mut leaks = Vec::new();
    for (sink, text) in &sinks {
        for (name, canary) in &canaries {
            if text.contains(canary.as_str()) {
                leaks.push(format!("{name} in {sink}"));
            }
        }
    }
    scoreboard("secrets", canaries.len() * sinks.len(), leaks.len());
    println!("SECRETS canaries={} sinks={}", canaries.len(), sinks.len());
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}
