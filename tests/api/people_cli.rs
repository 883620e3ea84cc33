//! `halflife login`, `logout` and the stored session, run as the real binary
//! against a real OpenID provider (tests/api/idp.rs) and a small stand-in for
//! the server's side of the contract: `GET /v1/sign-in`, the ID-token
//! exchange at `POST /oauth2/token` (which verifies the ID token against the
//! provider's JWKS, as the server does), `GET /v1/whoami` and
//! `POST /v1/sessions/current/revoke`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::helpers::{Options, PEOPLE_CLIENT, PEOPLE_ISS, people_config, spawn_with};
use crate::idp::{CLI_CLIENT, Idp, people, url_in, verify_id_token};

const BIN: &str = env!("CARGO_BIN_EXE_halflife");
const SESSION_TOKEN: &str = "hls_test_session_token_0123456789";

/// What the stand-in server knows and remembers.
struct Broker {
    issuer: String,
    jwks: jsonwebtoken::jwk::JwkSet,
    /// Sessions it issued and has not seen revoked: token → session id.
    live: Mutex<HashMap<String, String>>,
    /// Verified ID-token claims it was given.
    exchanged: Mutex<Vec<Value>>,
}

type Shared = Arc<Broker>;

fn oauth_error(status: StatusCode, error: &str, description: String) -> Response {
    (status, Json(json!({"error": error, "error_description": description}))).into_response()
}

async fn sign_in(State(broker): State<Shared>) -> Json<Value> {
    Json(json!({"issuer": broker.issuer, "client_id": CLI_CLIENT, "scopes": ["openid", "email", "profile", "groups"]}))
}

async fn token(State(broker): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange"
        || field("subject_token_type") != "urn:ietf:params:oauth:token-type:id_token"
        || field("requested_token_type") != "urn:halflife:token-type:session"
    {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", format!("unexpected form: {form:?}"));
    }
    let claims = match verify_id_token(&broker.jwks, field("subject_token"), &broker.issuer, CLI_CLIENT) {
        Ok(claims) => claims,
        Err(why) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why),
    };
    let groups: Vec<&str> = claims["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let roles: Vec<&str> = groups
        .iter()
        .filter_map(|g| match *g {
            "hl-operators" => Some("operator"),
            "hl-auditors" => Some("auditor"),
            _ => None,
        })
        .collect();
    if roles.is_empty() {
        return oauth_error(StatusCode::BAD_REQUEST, "access_denied", "no halflife role for your groups".into());
    }
    let id = format!("ses_{}", broker.live.lock().unwrap().len() + 1);
    broker.live.lock().unwrap().insert(SESSION_TOKEN.to_owned(), id.clone());
    let answer = json!({
        "access_token": SESSION_TOKEN,
        "issued_token_type": "urn:halflife:token-type:session",
        "token_type": "Bearer",
        "expires_in": 28800,
        "session": {
            "id": id,
            "issuer": broker.issuer,
            "subject": claims["sub"],
            "email": claims["email"],
            "roles": roles,
            "expires_at": halflife::domain::rfc3339(wall_clock() + time::Duration::hours(8)),
        },
    });
    broker.exchanged.lock().unwrap().push(claims);
    Json(answer).into_response()
}

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

async fn whoami(State(broker): State<Shared>, headers: HeaderMap) -> Response {
    if !broker.live.lock().unwrap().contains_key(&bearer(&headers)) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_token", "unknown session".into());
    }
    Json(json!({"kind": "person", "roles": ["operator"], "subject": "alice"})).into_response()
}

async fn revoke_current(State(broker): State<Shared>, headers: HeaderMap) -> Response {
    match broker.live.lock().unwrap().remove(&bearer(&headers)) {
        Some(id) => Json(json!({"id": id, "revoked": true})).into_response(),
        None => oauth_error(StatusCode::UNAUTHORIZED, "invalid_token", "unknown session".into()),
    }
}

/// Starts the stand-in on a random port; its base URL and state.
async fn broker(idp: &Idp) -> (String, Shared) {
    let state = Arc::new(Broker {
        issuer: idp.issuer.clone(),
        jwks: idp.jwks().await,
        live: Mutex::new(HashMap::new()),
        exchanged: Mutex::new(Vec::new()),
    });
    let router = Router::new()
        .route("/v1/sign-in", get(sign_in))
        .route("/oauth2/token", post(token))
        .route("/v1/whoami", get(whoami))
        .route("/v1/sessions/current/revoke", post(revoke_current))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (base, state)
}

/// The CLI with its session kept in `dir`, no token, no configuration.
fn halflife(dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env("HALFLIFE_CONFIG_DIR", dir)
        .env_remove("HALFLIFE_TOKEN")
        .env_remove("HALFLIFE_URL")
        .env_remove("HALFLIFE_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the CLI to its end (10 s at most): success, stdout, stderr.
async fn run(mut command: tokio::process::Command) -> (bool, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(10), command.output()).await.expect("the CLI finishes").unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// Runs `halflife login`, lets `person` act on the first URL it prints on
/// stderr, and waits for it to finish: success, stdout, stderr.
async fn login<F, Fut>(dir: &Path, base: &str, extra: &[&str], person: F) -> (bool, String, String)
where
    F: FnOnce(url::Url) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut args = vec!["login"];
    args.extend_from_slice(extra);
    let mut command = halflife(dir, &args);
    command.env("HALFLIFE_URL", base);
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let url = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).await.unwrap() == 0 {
                return None;
            }
            seen.push_str(&line);
            if let Some(url) = url_in(&line) {
                return Some(url);
            }
        }
    })
    .await
    .expect("the CLI prints where to sign in");
    let url = url.ok_or_else(|| format!("the CLI ended without a URL to sign in at: {seen}")).unwrap();
    person(url).await;
    let mut rest = String::new();
    let mut stdout = String::new();
    let mut out = child.stdout.take().unwrap();
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(child.wait(), stderr.read_to_string(&mut rest), out.read_to_string(&mut stdout))
    })
    .await
    .expect("the CLI finishes");
    seen.push_str(&rest);
    (status.unwrap().success(), stdout, seen)
}

fn session_file(dir: &Path) -> PathBuf {
    dir.join("session.json")
}

fn stored(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(session_file(dir)).unwrap()).unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn assert_signed_in_as_alice(dir: &Path, base: &str, state: &Broker, stdout: &str) {
    assert!(stdout.contains("alice@example.com") && stdout.contains("operator"), "{stdout}");
    let session = stored(dir);
    assert_eq!(session["server"], base);
    assert_eq!(session["token"], SESSION_TOKEN);
    assert_eq!(session["id"], "ses_1");
    assert_eq!(session["person"]["email"], "alice@example.com");
    assert_eq!(session["person"]["subject"], "alice");
    assert_eq!(session["person"]["roles"], json!(["operator"]));
    assert!(session["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{session}");
    #[cfg(unix)]
    assert_eq!(mode(&session_file(dir)), 0o600);
    let exchanged = state.exchanged.lock().unwrap();
    assert_eq!(exchanged.len(), 1);
    assert_eq!(exchanged[0]["groups"], json!(["hl-operators"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_the_device_grant_stores_a_private_session() {
    let Some(idp) = Idp::start(json!({"users": people(), "device_flow": true})) else { return };
    let (base, state) = broker(&idp).await;
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("halflife");

    let idp = &idp;
    let (ok, stdout, stderr) =
        login(&dir, &base, &[], |url| async move { idp.complete_device(url.as_str(), None, "alice").await }).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("user_code="), "the complete verification URI is shown: {stderr}");
    assert!(!stderr.contains(SESSION_TOKEN) && !stdout.contains(SESSION_TOKEN), "the token was printed");
    assert_signed_in_as_alice(&dir, &base, &state, &stdout);
    #[cfg(unix)]
    assert_eq!(mode(&dir), 0o700);

    // Other commands use the session, and its server, with no token and no URL.
    let (ok, stdout, stderr) = run(halflife(&dir, &["whoami", "--json"])).await;
    assert!(ok, "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["kind"], "person");

    // Logging out revokes it at the server and deletes the file.
    let (ok, stdout, stderr) = run(halflife(&dir, &["logout"])).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("revoked"), "{stdout}");
    assert!(!session_file(&dir).exists());
    assert!(state.live.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_through_a_browser_when_the_provider_has_no_device_grant() {
    let Some(idp) = Idp::start(json!({"users": people(), "device_flow": false})) else { return };
    let (base, state) = broker(&idp).await;
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().to_owned();

    // The provider outlives the closure: the CLI still exchanges the code.
    let idp = &idp;
    let (ok, stdout, stderr) = login(&dir, &base, &[], |url| async move {
        let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(query["code_challenge_method"], "S256");
        assert!(query.contains_key("state") && query.contains_key("nonce"), "{url}");
        let redirect = url::Url::parse(&query["redirect_uri"]).unwrap();
        assert_eq!((redirect.host_str(), redirect.path()), (Some("127.0.0.1"), "/callback"));
        assert_ne!(redirect.port(), None);
        let back = idp.complete_authorization(url.as_str(), "alice").await;
        assert!(back.starts_with(redirect.as_str()), "{back}");
    })
    .await;
    assert!(ok, "{stderr}");
    assert_signed_in_as_alice(&dir, &base, &state, &stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sign_in_shows_the_servers_reason_and_stores_nothing() {
    let Some(idp) = Idp::start(json!({"users": people(), "device_flow": true})) else { return };
    let (base, _state) = broker(&idp).await;
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().to_owned();

    // carol is in no halflife group.
    let idp = &idp;
    let (ok, _, stderr) =
        login(&dir, &base, &[], |url| async move { idp.complete_device(url.as_str(), None, "carol").await }).await;
    assert!(!ok);
    assert!(stderr.contains("access_denied") && stderr.contains("no halflife role"), "{stderr}");
    assert!(!session_file(&dir).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_deletes_a_session_the_server_no_longer_knows() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().to_owned();
    // A server that has never heard of the session (answers 401).
    let Some(idp) = Idp::start(json!({"users": people()})) else { return };
    let (base, _state) = broker(&idp).await;
    write_session(&dir, &base, wall_clock() + time::Duration::hours(1));

    let (ok, stdout, stderr) = run(halflife(&dir, &["logout"])).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("no longer knew"), "{stdout}");
    assert!(!session_file(&dir).exists());

    let (ok, stdout, _) = run(halflife(&dir, &["logout"])).await;
    assert!(ok);
    assert!(stdout.contains("Not signed in"), "{stdout}");
}

fn write_session(dir: &Path, server: &str, expires_at: time::OffsetDateTime) {
    std::fs::create_dir_all(dir).unwrap();
    let session = json!({
        "server": server,
        "token": SESSION_TOKEN,
        "id": "ses_9",
        "expires_at": halflife::domain::rfc3339(expires_at),
        "person": {"issuer": "https://idp.example", "subject": "alice", "email": "alice@example.com", "roles": ["operator"]},
    });
    std::fs::write(session_file(dir), session.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_says_so_and_names_the_way_back() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().to_owned();
    let expired = wall_clock() - time::Duration::minutes(5);
    write_session(&dir, "http://127.0.0.1:9", expired);

    let (ok, _, stderr) = run(halflife(&dir, &["systems", "list"])).await;
    assert!(!ok);
    assert!(stderr.contains("your session expired at") && stderr.contains("halflife login"), "{stderr}");
    assert!(stderr.contains(&halflife::domain::rfc3339(expired)), "{stderr}");

    // Logging out of an expired session needs no server.
    let (ok, stdout, stderr) = run(halflife(&dir, &["logout"])).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("already expired"), "{stdout}");
    assert!(!session_file(&dir).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_token_or_session_the_error_names_both_ways_in() {
    let home = tempfile::tempdir().unwrap();
    let mut command = halflife(home.path(), &["sessions", "list"]);
    command.env("HALFLIFE_URL", "http://127.0.0.1:9");
    let (ok, _, stderr) = run(command).await;
    assert!(!ok);
    assert!(stderr.contains("halflife login") && stderr.contains("HALFLIFE_TOKEN"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_sent_only_to_its_own_server() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().to_owned();
    write_session(&dir, "http://127.0.0.1:9", wall_clock() + time::Duration::hours(1));
    let mut command = halflife(&dir, &["whoami"]);
    command.env("HALFLIFE_URL", "http://127.0.0.1:10");
    let (ok, _, stderr) = run(command).await;
    assert!(!ok);
    assert!(stderr.contains("is for http://127.0.0.1:9"), "{stderr}");
    assert!(!stderr.contains(SESSION_TOKEN));
}

/// The real time: the CLI runs as its own process on the system clock.
fn wall_clock() -> time::OffsetDateTime {
    use halflife::clock::Clock;
    halflife::clock::SystemClock.now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_who_refuses_at_the_provider_ends_the_device_sign_in() {
    let Some(idp) = Idp::start(json!({"users": people(), "device_flow": true})) else { return };
    let (base, state) = broker(&idp).await;
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().to_owned();

    let idp = &idp;
    let (ok, stdout, stderr) =
        login(&dir, &base, &[], |url| async move { idp.deny_device(url.as_str(), "alice").await }).await;
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("access was denied") && stderr.contains("access_denied"), "{stderr}");
    assert!(!session_file(&dir).exists());
    assert!(state.exchanged.lock().unwrap().is_empty(), "nothing reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_code_nobody_confirms_expires_and_says_so() {
    let config = json!({"users": people(), "device_flow": true, "device_code_ttl": 2});
    let Some(idp) = Idp::start(config) else { return };
    let (base, state) = broker(&idp).await;
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().to_owned();

    // The person never opens the page.
    let (ok, stdout, stderr) = login(&dir, &base, &[], |_| async {}).await;
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("the code expired") && stderr.contains("halflife login"), "{stderr}");
    assert!(!session_file(&dir).exists());
    assert!(state.exchanged.lock().unwrap().is_empty());
}

/// The real broker, trusting the real provider for people: the test
/// configuration's `[people]` with the provider's issuer and no keys file
/// or algorithm list, so the broker finds the provider's keys (RS256)
/// through its discovery document.
fn real_people_config(issuer: &str) -> String {
    assert_eq!(PEOPLE_CLIENT, CLI_CLIENT);
    people_config("")
        .replace(&format!("issuer = \"{PEOPLE_ISS}\""), &format!("issuer = \"{issuer}\""))
        .lines()
        .filter(|l| !l.starts_with("jwks_file") && !l.starts_with("algorithms"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_against_the_real_broker_opens_a_session_that_works_until_logout() {
    use reqwest::Method;

    let Some(idp) = Idp::start(json!({"users": people(), "device_flow": true})) else { return };
    let options = Options { people: false, extra_config: real_people_config(&idp.issuer), ..Options::default() };
    let Some(app) = spawn_with(options).await else { return };
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().to_owned();

    let idp = &idp;
    let (ok, stdout, stderr) =
        login(&dir, &app.base, &[], |url| async move { idp.complete_device(url.as_str(), None, "alice").await }).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("as alice@example.com") && stdout.contains("Roles: operator"), "{stdout}");
    let session = stored(&dir);
    let token = session["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("hls_"), "{session}");
    assert!(!stdout.contains(&token) && !stderr.contains(&token), "the token was printed");
    assert_eq!((&session["person"]["subject"], &session["person"]["issuer"]), (&json!("alice"), &json!(idp.issuer)));

    // The stored session is the caller of later commands, with no token and no URL.
    let (ok, stdout, stderr) = run(halflife(&dir, &["whoami"])).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("person") && stdout.contains("alice") && stdout.contains("operator"), "{stdout}");
    let (ok, stdout, stderr) = run(halflife(&dir, &["systems", "list"])).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("summarizer") && stdout.contains("indexer"), "{stdout}");

    // The trail names the person the provider vouched for, never the token.
    let auditor = app.admin_token(halflife::domain::model::Role::Auditor).await;
    let (status, page) = app.api(Method::GET, "/v1/audit/events?kind=session.created", &auditor, None).await;
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    let alice = events.iter().find(|e| e["subject"] == "alice").unwrap_or_else(|| panic!("{page}"));
    assert_eq!(alice["detail"]["email"], "alice@example.com");
    assert_eq!(alice["detail"]["issuer"], idp.issuer.as_str());
    assert_eq!(alice["detail"]["roles"], json!(["operator"]));
    assert!(!page.to_string().contains(&token), "the token is never recorded");

    // Logging out revokes the session at the broker: the old token stops working.
    let (status, me) = app.api(Method::GET, "/v1/whoami", &token, None).await;
    assert_eq!((status, &me["kind"]), (200, &json!("person")), "{me}");
    let (ok, stdout, stderr) = run(halflife(&dir, &["logout"])).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("revoked"), "{stdout}");
    assert!(!session_file(&dir).exists());
    let (status, body) = app.api(Method::GET, "/v1/whoami", &token, None).await;
    assert_eq!(status, 401, "{body}");
}
