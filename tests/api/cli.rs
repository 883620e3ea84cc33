//! The operator CLI against a running server.

use std::process::Command;

use halflife::domain::model::Role;
use serde_json::Value;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_halflife");

fn cli(app: &TestApp, token: &str, args: &[&str]) -> (bool, String, String) {
    let out =
        Command::new(BIN).args(args).env("HALFLIFE_URL", &app.base).env("HALFLIFE_TOKEN", token).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_systems_from_the_command_line() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let auditor = app.admin_token(Role::Auditor).await;

    let (ok, out, err) = tokio::task::block_in_place(|| cli(&app, &auditor, &["systems", "list"]));
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap();
    assert!(header.starts_with("ID") && header.contains("STATE"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("summarizer") && l.contains("pilot") && l.contains("active")), "{out}");

    let (ok, out, _) = tokio::task::block_in_place(|| cli(&app, &auditor, &["systems", "show", "indexer", "--json"]));
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tier"], "production");

    // Auditors cannot change anything; the server's message reaches stderr.
    let (ok, _, err) =
        tokio::task::block_in_place(|| cli(&app, &auditor, &["systems", "suspend", "summarizer", "--reason", "x"]));
    assert!(!ok);
    assert!(err.contains("may not"), "{err}");

    let (ok, out, err) = tokio::task::block_in_place(|| {
        cli(
            &app,
            &operator,
            &["owners", "create", "--id", "ana", "--display-name", "Ana", "--email", "ana@example.com"],
        )
    });
    assert!(ok, "{err}");
    assert!(out.contains("ana@example.com"));
    let (ok, _, err) = tokio::task::block_in_place(|| {
        cli(
            &app,
            &operator,
            &[
                "systems",
                "create",
                "--id",
                "drafts",
                "--name",
                "Drafts",
                "--purpose",
                "Drafts replies",
                "--business-owner",
                "ana",
                "--technical-owner",
                "tech",
                "--pilot-ends-at",
                "14d",
            ],
        )
    });
    assert!(ok, "{err}");
    let (ok, _, err) = tokio::task::block_in_place(|| {
        cli(
            &app,
            &operator,
            &[
                "grants",
                "add",
                "drafts",
                "--id",
                "drafts-k8s",
                "--issuer",
                "k8s",
                "--subject",
                "system:serviceaccount:ai:drafts",
                "--audience",
                "mail-api",
                "--scope",
                "mail:draft",
                "--max-ttl",
                "10m",
            ],
        )
    });
    assert!(ok, "{err}");
    let (ok, out, _) = tokio::task::block_in_place(|| cli(&app, &operator, &["grants", "list", "drafts"]));
    assert!(ok);
    assert!(out.contains("drafts-k8s") && out.contains("mail-api"), "{out}");

    let token = app.exchange_ok(&app.rsa.token("system:serviceaccount:ai:drafts", app.now()), &[]).await;
    let jti = parts(token["access_token"].as_str().unwrap()).1["jti"].as_str().unwrap().to_owned();
    let (ok, out, _) = tokio::task::block_in_place(|| cli(&app, &operator, &["systems", "credentials", "drafts"]));
    assert!(ok);
    assert!(out.contains(&jti), "{out}");
    assert!(!out.contains(token["access_token"].as_str().unwrap()), "never the token itself");

    let (ok, out, err) =
        tokio::task::block_in_place(|| cli(&app, &operator, &["revoke", "--jti", &jti, "--reason", "rotated"]));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "1 credential(s) revoked");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        cli(
            &app,
            &operator,
            &["revoke", "--workload", "system:serviceaccount:ai:drafts", "--issuer", "k8s", "--reason", "x", "--json"],
        )
    });
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["revoked"], 0);

    let (ok, out, _) = tokio::task::block_in_place(|| cli(&app, &operator, &["owners", "recertify", "ana"]));
    assert!(ok);
    assert!(out.contains("attested until"));
    let (ok, out, _) = tokio::task::block_in_place(|| cli(&app, &operator, &["systems", "expiring"]));
    assert!(ok);
    assert!(out.starts_with("DUE_AT"), "{out}");
    let (ok, out, _) = tokio::task::block_in_place(|| cli(&app, &operator, &["jobs", "list", "--all"]));
    assert!(ok);
    assert!(out.contains("mark_revoked"), "{out}");

    let out = Command::new(BIN).args(["systems", "list"]).env_remove("HALFLIFE_TOKEN").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HALFLIFE_TOKEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_rotate_and_retire_signing_keys_from_the_command_line() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Admin).await;
    // The server runs on this runtime's other worker while the CLI blocks.
    let run = |app: &TestApp, token: &str, args: &[&str]| tokio::task::block_in_place(|| cli(app, token, args));
    let (ok, out, err) = run(&app, &admin, &["keys", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("signing"), "{out}");
    let (ok, out, err) = run(&app, &admin, &["keys", "rotate", "--pre-publish", "5m"]);
    assert!(ok, "{err}");
    assert!(out.contains("is published and signs from"), "{out}");
    let (ok, out, _) = run(&app, &admin, &["keys", "list", "--json"]);
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pending = listed["keys"].as_array().unwrap().iter().find(|k| k["state"] == "pending").unwrap();
    let kid = pending["kid"].as_str().unwrap();
    // Retiring the pending key cancels the rotation.
    let (ok, out, err) = run(&app, &admin, &["keys", "retire", kid]);
    assert!(ok, "{err}");
    assert!(out.contains("is retired"), "{out}");
    // The signing key cannot be retired; the error says what to do.
    let signing = listed["keys"].as_array().unwrap().iter().find(|k| k["state"] == "signing").unwrap();
    let (ok, _, err) = run(&app, &admin, &["keys", "retire", signing["kid"].as_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("rotate first"), "{err}");
    let operator = app.admin_token(Role::Operator).await;
    let (ok, _, err) = run(&app, &operator, &["keys", "rotate"]);
    assert!(!ok);
    assert!(err.contains("may not call"), "{err}");
}

/// `halflife apply -f` goes through the server: the change is recorded
/// under the token's name, a dry run changes nothing, and a file the rules
/// refuse is reported with every problem and recorded as refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_goes_through_the_server_under_the_callers_name() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token_named(Role::Operator, "olga").await;
    let auditor = app.admin_token(Role::Auditor).await;
    let file = app.dir.path().join("more.toml");
    let text = format!(
        "{}\n[[owners]]\nid = \"nora\"\ndisplay_name = \"Nora\"\nemail = \"nora@example.com\"\n",
        default_catalog()
    );
    std::fs::write(&file, &text).unwrap();
    let path = file.to_str().unwrap();
    let run = |args: &[&str]| tokio::task::block_in_place(|| cli(&app, &operator, args));

    let (ok, out, err) = run(&["apply", "-f", path, "--dry-run"]);
    assert!(ok, "{err}");
    assert!(out.contains("would be created  owner/nora") && out.contains("dry run"), "{out}");
    let (status, _) = app.api(reqwest::Method::GET, "/v1/owners/nora", &auditor, None).await;
    assert_eq!(status, 404, "a dry run changes nothing");

    let (ok, out, err) = run(&["apply", "-f", path]);
    assert!(ok, "{err}");
    assert!(out.contains("created  owner/nora") && out.contains("1 created"), "{out}");
    let (_, page) = app.api(reqwest::Method::GET, "/v1/audit/events?kind=owner.created", &auditor, None).await;
    let actor = page["events"].as_array().unwrap().last().unwrap()["actor"].as_str().unwrap().to_owned();
    assert!(actor.starts_with("olga (operator; automation token "), "{page}");

    std::fs::write(&file, text.replace("tier = \"pilot\"", "tier = \"production\"")).unwrap();
    let (ok, _, err) = run(&["apply", "-f", path]);
    assert!(!ok);
    assert!(err.contains("system summarizer") && err.contains("promote"), "{err}");
    let (_, page) = app.api(reqwest::Method::GET, "/v1/audit/events?kind=catalog.refused", &auditor, None).await;
    assert_eq!(page["events"][0]["actor"], actor.as_str(), "{page}");

    let auditor_apply = tokio::task::block_in_place(|| cli(&app, &auditor, &["apply", "-f", path]));
    assert!(!auditor_apply.0 && auditor_apply.2.contains("may not"), "{}", auditor_apply.2);
}
