//! The README quickstart, run as a newcomer would: the real binary, the
//! example config, a fresh directory.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_halflife");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    for file in ["halflife.toml", "dev-catalog.toml"] {
        std::fs::copy(repo_root().join("config").join(file), dir.path().join("config").join(file)).unwrap();
    }
    dir
}

fn halflife(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env("HALFLIFE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("HALFLIFE_CONFIG")
        .env_remove("RUST_LOG");
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn quickstart_from_the_readme() {
    let dir = workdir();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let child = halflife(dir.path(), port).arg("serve").stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let mut server = Server(child);
    let base = format!("http://127.0.0.1:{port}");
    halflife::crypto::install();
    let client = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(30), || async {
        matches!(client.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(ready, "server did not become ready: {}", std::fs::read_to_string(dir.path().join("server.log")).unwrap());

    // 1. A development attestation, printed alone on stdout.
    let attestation = run_ok(halflife(dir.path(), port).args([
        "dev",
        "token",
        "--subject",
        "spiffe://dev.local/ns/ai/sa/summarizer",
    ]));
    let attestation = attestation.trim();
    assert_eq!(attestation.lines().count(), 1);
    assert_eq!(attestation.split('.').count(), 3);

    // 2. Exchange it, form-encoded, as curl would.
    let response = client
        .post(format!("{base}/oauth2/token"))
        .form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token_type", JWT_TYPE),
            ("subject_token", attestation),
            ("audience", "reports-api"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();

    // 3a. Offline verification against the JWKS.
    let jwks: jsonwebtoken::jwk::JwkSet =
        client.get(format!("{base}/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(header.kid.as_deref().unwrap()).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["reports-api"]);
    validation.set_issuer(&[&base]);
    let claims = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap().claims;
    assert_eq!(claims["sub"], "spiffe://dev.local/ns/ai/sa/summarizer");
    assert_eq!(claims["system"], "summarizer");

    // 3b. Online: introspection with an introspector token (last stdout line).
    let out = run_ok(halflife(dir.path(), port).args([
        "admin",
        "token",
        "create",
        "--role",
        "introspector",
        "--name",
        "reports-api",
    ]));
    let admin = out.lines().last().unwrap().trim().to_owned();
    assert!(admin.starts_with("hla_"));
    let introspect = |t: String| {
        let client = client.clone();
        let (base, admin) = (base.clone(), admin.clone());
        async move {
            client
                .post(format!("{base}/oauth2/introspect"))
                .bearer_auth(admin)
                .form(&[("token", t)])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(introspect(token.clone()).await["active"], true);

    // 4. Revoke; introspection answers exactly {"active": false}.
    let revoked = client.post(format!("{base}/oauth2/revoke")).form(&[("token", &token)]).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(introspect(token.clone()).await, json!({"active": false}));

    // The attestation was single-use.
    let replay = client
        .post(format!("{base}/oauth2/token"))
        .form(&[("grant_type", TOKEN_EXCHANGE), ("subject_token_type", JWT_TYPE), ("subject_token", attestation)])
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["error"], "invalid_grant");
    assert!(replay["error_description"].as_str().unwrap().contains("already been used"), "{replay}");

    // SIGTERM: graceful shutdown, exit 0.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut exited = None;
    for _ in 0..500 {
        if let Some(status) = server.0.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(exited.expect("server did not stop on SIGTERM").success());

    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains("dev issuer is ENABLED"), "the dev issuer warning is missing:\n{log}");
    for secret in [token.as_str(), attestation, admin.as_str()] {
        assert!(!log.contains(secret), "a secret reached the log");
    }

    // Keys: created on first start, sealed, owner-only; never in the database.
    let keys = dir.path().join("data/keys");
    for entry in std::fs::read_dir(&keys).unwrap() {
        let path = entry.unwrap().path();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "{}", path.display());
        }
        assert!(!std::fs::read_to_string(&path).unwrap().contains("PRIVATE KEY"));
    }
    let mut db = Vec::new();
    for f in ["halflife.db", "halflife.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join("data").join(f)) {
            db.extend(bytes);
        }
    }
    let db = String::from_utf8_lossy(&db);
    for secret in [token.as_str(), attestation, admin.as_str()] {
        assert!(!db.contains(secret), "a secret was stored in the database");
    }

    // The graceful stop signed the head of the audit chain.
    let url = format!("sqlite://{}", dir.path().join("data/halflife.db").display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let head: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_events").fetch_one(&mut conn).await.unwrap();
    let signed: Option<i64> =
        sqlx::query_scalar("SELECT MAX(seq) FROM audit_checkpoints").fetch_one(&mut conn).await.unwrap();
    assert_eq!(signed, Some(head), "the last events are not under a checkpoint");
}

#[test]
fn dev_issuer_is_refused_on_a_public_listener() {
    let dir = workdir();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env("HALFLIFE_SERVER__LISTEN", "0.0.0.0:0")
        .env("HALFLIFE_SERVER__ALLOW_PLAIN_HTTP", "true")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dev.enabled"), "{stderr}");
    assert!(!dir.path().join("data/halflife.db").exists(), "nothing is created before the config is valid");
}

#[test]
fn dev_token_needs_the_dev_issuer_enabled() {
    let dir = workdir();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env("HALFLIFE_DEV__ENABLED", "false")
        .env("HALFLIFE_KEYS__KEK", kek_b64())
        .args(["dev", "token", "--subject", "spiffe://dev.local/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dev issuer is disabled"));
}

#[test]
fn every_subcommand_explains_itself() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["apply", "--help"],
        vec!["dev", "token", "--help"],
        vec!["admin", "token", "create", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).len() > 80, "{args:?} has no real help text");
    }
}

#[test]
fn apply_is_idempotent_and_reports_changes() {
    let dir = workdir();
    let apply = || {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .args(["apply", "--local", "-f", "config/dev-catalog.toml"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = apply();
    assert!(first.contains("created  system/summarizer"), "{first}");
    assert!(first.contains("4 created, 0 updated, 0 unchanged"), "{first}");
    let second = apply();
    assert!(second.contains("0 created, 0 updated, 4 unchanged"), "{second}");

    std::fs::write(dir.path().join("bad.toml"), "[[grants]]\nid = \"g\"\nsystem = \"summarizer\"\nissuer = \"nope\"\nsubject = \"x\"\naudiences = [\"a\"]\nmax_ttl = \"5m\"\n").unwrap();
    let out = Command::new(BIN).current_dir(dir.path()).args(["apply", "--local", "-f", "bad.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("grants[0].issuer"));
}

#[test]
fn migrate_creates_the_database() {
    let dir = workdir();
    let out = Command::new(BIN).current_dir(dir.path()).arg("migrate").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("data/halflife.db").exists());
}

#[test]
fn config_check_names_every_problem_with_its_key() {
    let dir = workdir();
    let check = |envs: &[(&str, &str)]| {
        let mut cmd = halflife(dir.path(), free_port());
        cmd.args(["config", "check"]);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap())
    };
    let (ok, out) = check(&[]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "config/halflife.toml: ok");

    let (ok, out) = check(&[
        ("HALFLIFE_SERVER__LISTEN", "0.0.0.0:8080"),
        ("HALFLIFE_KEYS__KEK_FILE", "/nonexistent/kek"),
        ("HALFLIFE_KEYS__ROTATION_INTERVAL", "5m"),
    ]);
    assert!(!ok);
    for key in ["server.listen", "dev.enabled", "keys.kek_file", "keys.rotation_interval"] {
        assert!(out.contains(&format!("  - {key}: ")), "{key} missing from:\n{out}");
    }
    assert!(out.contains("4 problems"), "{out}");

    // A secret given as a file: HALFLIFE_<KEY>_FILE.
    let url_file = dir.path().join("db-url");
    std::fs::write(&url_file, format!("sqlite://{}/from-file.db\n", dir.path().display())).unwrap();
    let (ok, out) = check(&[("HALFLIFE_DATABASE__URL_FILE", url_file.to_str().unwrap())]);
    assert!(ok, "{out}");
    let (ok, out) = check(&[
        ("HALFLIFE_DATABASE__URL_FILE", url_file.to_str().unwrap()),
        ("HALFLIFE_DATABASE__URL", "sqlite://other.db"),
    ]);
    assert!(!ok && out.contains("not both"), "{out}");
    let (ok, out) = check(&[("HALFLIFE_DATABASE__URL_FILE", "/nonexistent/url")]);
    assert!(!ok && out.contains("HALFLIFE_DATABASE__URL_FILE: cannot read /nonexistent/url"), "{out}");

    // The server uses the file's value.
    let out = halflife(dir.path(), free_port())
        .env("HALFLIFE_DATABASE__URL_FILE", url_file.to_str().unwrap())
        .arg("migrate")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("from-file.db").exists());
}

/// The first hour's traps: `HALFLIFE_SERVER` set in the shell (the CLI's
/// old variable) does not break `serve`; the operator commands find the
/// server the configuration describes; a missing configuration file is an
/// error that says so.
#[tokio::test]
async fn the_cli_finds_the_configured_server_and_a_missing_config_is_named() {
    let dir = workdir();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let child = halflife(dir.path(), port)
        .env("HALFLIFE_SERVER", "http://127.0.0.1:1")
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _server = Server(child);
    let base = format!("http://127.0.0.1:{port}");
    halflife::crypto::install();
    let client = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(30), || async {
        matches!(client.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(
        ready,
        "serve failed with HALFLIFE_SERVER set: {}",
        std::fs::read_to_string(dir.path().join("server.log")).unwrap()
    );

    let token =
        run_ok(halflife(dir.path(), port).args(["admin", "token", "create", "--role", "auditor", "--name", "ana"]));
    let token = token.trim().lines().last().unwrap().to_owned();
    // No --server and no HALFLIFE_URL: the configuration's listen address.
    let out = run_ok(
        halflife(dir.path(), port).env("HALFLIFE_TOKEN", &token).env_remove("HALFLIFE_URL").args(["systems", "list"]),
    );
    assert!(out.contains("summarizer"), "{out}");
    // The old variable still works for the CLI, with a warning.
    let out = halflife(dir.path(), port)
        .env("HALFLIFE_TOKEN", &token)
        .env("HALFLIFE_SERVER", &base)
        .args(["systems", "list"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HALFLIFE_SERVER is deprecated"));

    let empty = tempfile::tempdir().unwrap();
    for args in [&["serve"][..], &["config", "check"][..]] {
        let out = halflife(empty.path(), free_port()).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        assert!(text.contains("config file not found: config/halflife.toml"), "{args:?}: {text}");
        assert!(text.contains("--config"), "{args:?}: {text}");
    }
    // The whole configuration from the environment, by an explicit choice.
    let out = halflife(empty.path(), free_port())
        .args(["--config", "none", "config", "check"])
        .env("HALFLIFE_DEV__ENABLED", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
