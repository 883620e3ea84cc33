//! Third-party clients nobody on the project wrote, used unmodified against
//! a real broker, as docs/protocol.md's "Using halflife from standard clients"
//! shows them: openid-client 6 (Node; discovery, a token exchange with an
//! Ed25519 DPoP key, introspection and revocation with client_secret_basic),
//! jose (Node; offline verification), Authlib and PyJWT (Python).
//!
//! They need `npm ci --prefix tests/clients/node` and
//! `pip install authlib pyjwt[crypto]`; without them each test is skipped
//! with the reason printed, except when `HALFLIFE_REQUIRE_CLIENTS=1` (CI),
//! where a missing client fails the test.

use std::path::PathBuf;
use std::process::Command;

use halflife::domain::model::Role;
use serde_json::{Value, json};

use crate::helpers::*;

fn required() -> bool {
    std::env::var("HALFLIFE_REQUIRE_CLIENTS").is_ok_and(|v| v == "1")
}

fn node_clients() -> Option<PathBuf> {
    let dir = repo_root().join("tests/clients/node");
    let ready = dir.join("node_modules/openid-client").exists() && dir.join("node_modules/jose").exists();
    if !ready {
        assert!(!required(), "the Node clients are missing: run npm ci --prefix tests/clients/node");
        eprintln!("skipped: run npm ci --prefix tests/clients/node for the openid-client and jose tests");
        return None;
    }
    Some(dir)
}

fn python_clients() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import authlib, jwt, requests"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!required(), "Authlib or PyJWT is missing: pip install authlib 'pyjwt[crypto]' requests");
        eprintln!("skipped: pip install authlib 'pyjwt[crypto]' requests for the Python client tests");
    }
    ok
}

/// Runs a client command; its one line of JSON, or the failure.
fn run(program: &str, script: PathBuf, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(program).arg(script).args(args).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// An introspector token whose name is the OAuth client id.
async fn introspector(app: &TestApp, name: &str) -> String {
    app.admin_token_named(Role::Introspector, name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_and_jose_work_unmodified() {
    let Some(dir) = node_clients() else { return };
    let Some(app) = spawn_app().await else { return };
    let script = dir.join("standard.mjs");
    let node = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tokio::task::block_in_place(|| run("node", script.clone(), &args))
    };
    let secret = introspector(&app, "resource-server").await;

    // A token exchange with an Ed25519 DPoP key (alg "Ed25519", RFC 9864),
    // verified by jose against the JWKS.
    let attestation = app.rsa.token(RSA_SUBJECT, app.now());
    let exchanged = node(vec!["dpop-exchange".into(), app.base.clone(), attestation, "reports-api".into()]).unwrap();
    assert_eq!(exchanged["token_type"].as_str().map(str::to_ascii_lowercase).as_deref(), Some("dpop"), "{exchanged}");
    assert_eq!(exchanged["claims"]["cnf"]["jkt"], exchanged["thumbprint"], "bound to the client's key: {exchanged}");
    assert_eq!(exchanged["claims"]["sub"], RSA_SUBJECT);
    let token = exchanged["access_token"].as_str().unwrap().to_owned();

    // Introspection with client_secret_basic: the admin token's name is the
    // client id, the token its secret.
    let introspected =
        node(vec!["introspect".into(), app.base.clone(), "resource-server".into(), secret.clone(), token.clone()])
            .unwrap();
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["token_type"], "DPoP");
    let wrong =
        node(vec!["introspect".into(), app.base.clone(), "resource-server".into(), "hla_wrong".into(), token.clone()]);
    assert!(wrong.is_err(), "a wrong client secret was accepted: {wrong:?}");

    // Revocation with client authentication, then introspection again.
    node(vec!["revoke".into(), app.base.clone(), "resource-server".into(), secret.clone(), token.clone()]).unwrap();
    let after = node(vec!["introspect".into(), app.base.clone(), "resource-server".into(), secret, token]).unwrap();
    assert_eq!(after, json!({"active": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_and_pyjwt_work_unmodified() {
    if !python_clients() {
        return;
    }
    let Some(app) = spawn_app().await else { return };
    let script = repo_root().join("tests/clients/python/standard.py");
    let python = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tokio::task::block_in_place(|| run("python3", script.clone(), &args))
    };
    let secret = introspector(&app, "reports api").await;
    let token =
        app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await["access_token"].as_str().unwrap().to_owned();

    let claims = python(vec!["verify".into(), app.base.clone(), token.clone(), "reports-api".into()]).unwrap();
    assert_eq!(claims["sub"], RSA_SUBJECT);
    let introspected =
        python(vec!["introspect".into(), app.base.clone(), "reports api".into(), secret.clone(), token.clone()])
            .unwrap();
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["client_id"], RSA_SUBJECT);
    python(vec!["revoke".into(), app.base.clone(), "reports api".into(), secret.clone(), token.clone()]).unwrap();
    let after = python(vec!["introspect".into(), app.base.clone(), "reports api".into(), secret, token]).unwrap();
    assert_eq!(after, json!({"active": false}));
}
