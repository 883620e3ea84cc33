//! The web console over HTTP, as a browser without script would use it:
//! sign-in (dev-mode token form, and the organisation's real provider),
//! the cookie's attributes, the security headers, CSRF and role checks on
//! every form, confirmation of destructive actions, escaping of hostile
//! text, the audit search and its export, and a decision on an access
//! request. tests/api/console_browser.rs drives the same pages in Chromium.

use halflife::domain::model::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::idp::Idp;

/// A browser without script: keeps cookies, follows no redirect.
pub fn browser() -> reqwest::Client {
    halflife::crypto::install();
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs `browser` in to the console with a token (dev mode's form).
pub async fn sign_in_with(app: &TestApp, browser: &reqwest::Client, token: &str) {
    let response = browser.post(app.url("/console/sign-in")).form(&[("token", token)]).send().await.unwrap();
    assert_eq!(response.status(), 303, "{}", response.text().await.unwrap());
}

/// A page's body, which must answer 200.
pub async fn page(app: &TestApp, browser: &reqwest::Client, path: &str) -> String {
    let response = browser.get(app.url(path)).send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// The CSRF token in a page's forms.
pub fn csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

/// Posts a console form; returns the status and the body or `Location`.
async fn post(app: &TestApp, browser: &reqwest::Client, path: &str, form: &[(&str, &str)]) -> (u16, String) {
    let response = browser.post(app.url(path)).form(form).send().await.unwrap();
    let status = response.status().as_u16();
    let location = response.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    (status, location.unwrap_or(body))
}

/// The API's CSV export of the summarizer's `credential.issued` events.
pub async fn issued_csv(app: &TestApp, auditor: &str) -> String {
    let url = app.url("/v1/audit/events?system=summarizer&kind=credential.issued&format=csv");
    let response = app.client.get(url).bearer_auth(auditor).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The actors of the events of `kind`, oldest first, as the API reports them.
pub async fn actors(app: &TestApp, admin: &str, kind: &str) -> Vec<String> {
    let (status, body) = app.api(Method::GET, &format!("/v1/audit/events?kind={kind}"), admin, None).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().iter().map(|e| e["actor"].as_str().unwrap_or_default().to_owned()).collect()
}

/// A system's state, as the API reports it.
pub async fn system_state(app: &TestApp, admin: &str, id: &str) -> Value {
    let (status, system) = app.api(Method::GET, &format!("/v1/systems/{id}"), admin, None).await;
    assert_eq!(status, 200, "{system}");
    system["state"].clone()
}

#[tokio::test]
async fn the_console_asks_for_a_sign_in_and_keeps_the_session_in_a_strict_cookie() {
    let Some(app) = spawn_app().await else { return };
    let b = browser();
    let first = b.get(app.url("/console/")).send().await.unwrap();
    assert_eq!((first.status().as_u16(), &first.headers()["location"]), (303, &"/console/sign-in".parse().unwrap()));
    let headers = first.headers();
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in ["default-src 'none'", "style-src 'self'", "frame-ancestors 'none'", "form-action 'self'"] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["x-content-type-options"], "nosniff");

    let sign_in = page(&app, &b, "/console/sign-in").await;
    assert!(sign_in.contains("Dev mode: sign in with a token"), "{sign_in}");
    // A wrong token: the page again, with the reason, and no cookie.
    let wrong = b.post(app.url("/console/sign-in")).form(&[("token", "hla_not-a-token")]).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().await.unwrap().contains("not a valid automation or session token"));

    let operator = app.admin_token_named(Role::Operator, "ops-bot").await;
    // Another site's form cannot sign the browser in under its token.
    let forged = b
        .post(app.url("/console/sign-in"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("token", operator.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.headers().get("set-cookie").is_none());
    let response = b.post(app.url("/console/sign-in")).form(&[("token", operator.as_str())]).send().await.unwrap();
    assert_eq!(response.status(), 303);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("halflife-console=hla_"), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    // Plain HTTP on loopback: a browser would drop a Secure cookie.
    assert!(!cookie.contains("Secure"), "{cookie}");
    let overview = page(&app, &b, "/console/").await;
    assert!(overview.contains("ops-bot · operator"), "{overview}");
    assert!(overview.contains("id=\"systems-by-tier\""));

    // Signing out forgets the cookie; the pages ask for a sign-in again.
    let token = csrf(&overview);
    let (status, location) = post(&app, &b, "/console/sign-out", &[("csrf", &token)]).await;
    assert_eq!((status, location.as_str()), (303, "/console/sign-in?done=Signed+out."));
    let again = b.get(app.url("/console/systems")).send().await.unwrap();
    assert_eq!(again.status(), 303);
}

#[tokio::test]
async fn an_operator_revokes_a_system_after_typing_its_id_and_its_tokens_stop() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Admin).await;
    let issued = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[("audience", "reports-api")]).await;
    let access = issued["access_token"].as_str().unwrap();
    assert_eq!(app.introspect(&admin, access).await["active"], true);

    let b = browser();
    sign_in_with(&app, &b, &app.admin_token_named(Role::Operator, "ops-bot").await).await;
    let system = page(&app, &b, "/console/systems/summarizer").await;
    assert!(system.contains("id=\"revoke\"") && system.contains("id=\"suspend\""), "{system}");
    assert!(system.contains("<td class=\"num\">1</td>"), "one outstanding jwt: {system}");
    let token = csrf(&system);

    // Without the id typed, nothing happens.
    let form = [("csrf", token.as_str()), ("reason", "leaked key"), ("confirm", "summarize")];
    let (status, body) = post(&app, &b, "/console/systems/summarizer/revoke", &form).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("type summarizer to confirm; nothing was changed"), "{body}");
    assert_eq!(app.introspect(&admin, access).await["active"], true);

    let form = [("csrf", token.as_str()), ("reason", "leaked key"), ("confirm", "summarizer")];
    let (status, location) = post(&app, &b, "/console/systems/summarizer/revoke", &form).await;
    assert_eq!(status, 303, "{location}");
    assert!(location.starts_with("/console/systems/summarizer?done="), "{location}");
    assert_eq!(app.introspect(&admin, access).await["active"], false);
    let after = page(&app, &b, &location).await;
    assert!(after.contains("1 credentials of summarizer revoked."), "{after}");
    let actors = actors(&app, &admin, "credential.revoked").await;
    assert_eq!(actors.len(), 1);
    assert!(actors[0].starts_with("ops-bot (operator; automation token "), "{actors:?}");

    // Suspension the same way: the system stops.
    let form = [("csrf", token.as_str()), ("reason", "pilot paused"), ("confirm", "summarizer")];
    let (status, _) = post(&app, &b, "/console/systems/summarizer/suspend", &form).await;
    assert_eq!(status, 303);
    assert_eq!(system_state(&app, &admin, "summarizer").await, "suspended");
    let stopped = page(&app, &b, "/console/systems/summarizer").await;
    assert!(stopped.contains("id=\"reinstate\"") && !stopped.contains("id=\"suspend\""), "{stopped}");
}

#[tokio::test]
async fn an_auditor_sees_no_action_and_a_posted_one_is_refused_and_recorded() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Admin).await;
    let b = browser();
    sign_in_with(&app, &b, &app.admin_token_named(Role::Auditor, "audit-bot").await).await;
    for path in
        ["/console/", "/console/systems", "/console/systems/summarizer", "/console/owners/biz", "/console/requests"]
    {
        let html = page(&app, &b, path).await;
        // The only form an auditor gets is signing out.
        assert_eq!(html.matches("method=\"post\"").count(), 1, "{path}: {html}");
        assert!(html.contains("action=\"/console/sign-out\""));
    }
    let token = csrf(&page(&app, &b, "/console/").await);
    let form = [("csrf", token.as_str()), ("reason", "curious"), ("confirm", "summarizer")];
    let (status, body) = post(&app, &b, "/console/systems/summarizer/suspend", &form).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("role auditor may not do this"), "{body}");
    assert_eq!(system_state(&app, &admin, "summarizer").await, "active");
    let denied = app.events("access.denied").await;
    assert!(denied.iter().any(|e| e.reason.as_deref() == Some("role auditor may not do this")), "{denied:?}");
    let actors = actors(&app, &admin, "access.denied").await;
    assert!(actors.iter().any(|a| a.starts_with("audit-bot (auditor; automation token ")), "{actors:?}");
}

#[tokio::test]
async fn a_form_without_this_sessions_csrf_token_changes_nothing() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Admin).await;
    let (ops, other) = (browser(), browser());
    sign_in_with(&app, &ops, &app.admin_token_named(Role::Operator, "ops-bot").await).await;
    sign_in_with(&app, &other, &app.admin_token_named(Role::Operator, "other-bot").await).await;
    let theirs = csrf(&page(&app, &other, "/console/").await);
    let mine = csrf(&page(&app, &ops, "/console/").await);
    assert_ne!(theirs, mine, "every session has its own token");
    let path = "/console/systems/summarizer/suspend";
    for token in ["", "forged", theirs.as_str()] {
        let (status, body) =
            post(&app, &ops, path, &[("csrf", token), ("reason", "x"), ("confirm", "summarizer")]).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("CSRF token is missing or not this session"), "{body}");
    }
    let (status, _) = post(&app, &ops, path, &[("reason", "x"), ("confirm", "summarizer")]).await;
    assert_eq!(status, 403);
    // A browser's word that the form came from another site.
    let form = [("csrf", mine.as_str()), ("reason", "x"), ("confirm", "summarizer")];
    let response = ops.post(app.url(path)).header("sec-fetch-site", "cross-site").form(&form).send().await.unwrap();
    assert_eq!(response.status(), 403);
    // Without the cookie, a form is a sign-in away.
    let response = browser().post(app.url(path)).form(&form).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(system_state(&app, &admin, "summarizer").await, "active");
    // The right token does it.
    let (status, _) = post(&app, &ops, path, &form).await;
    assert_eq!(status, 303);
    assert_eq!(system_state(&app, &admin, "summarizer").await, "suspended");
}

/// Text meant to run or reshape a page where it is shown.
pub const HOSTILE: &str = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>";

/// Creates an owner and a sandbox system whose names and purpose are
/// [`HOSTILE`]; returns the system's id.
pub async fn hostile_system(app: &TestApp, admin: &str) -> &'static str {
    let owner = json!({"id": "mallory", "display_name": format!("Mallory {HOSTILE}"), "email": "mallory@example.com"});
    let (status, body) = app.api(Method::POST, "/v1/owners", admin, Some(owner)).await;
    assert_eq!(status, 201, "{body}");
    let system = json!({
        "id": "hostile", "name": format!("Hostile {HOSTILE}"), "purpose": format!("Purpose {HOSTILE}"),
        "business_owner": "mallory", "technical_owner": "tech", "tier": "sandbox", "pilot_ends_at": in_days(app, 10),
        "data_classification": HOSTILE,
    });
    let (status, body) = app.api(Method::POST, "/v1/systems", admin, Some(system)).await;
    assert_eq!(status, 201, "{body}");
    "hostile"
}

/// RFC 3339 time `days` from the test clock's now.
pub fn in_days(app: &TestApp, days: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(app.now() + days * 86400).unwrap();
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test]
async fn hostile_names_and_purposes_are_shown_as_text() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Admin).await;
    let id = hostile_system(&app, &admin).await;
    let b = browser();
    sign_in_with(&app, &b, &admin).await;
    for path in [
        "/console/systems".to_owned(),
        format!("/console/systems/{id}"),
        "/console/owners".to_owned(),
        "/console/owners/mallory".to_owned(),
        format!("/console/audit?system={id}"),
        "/console/audit?kind=%3Cscript%3E".to_owned(),
    ] {
        let html = page(&app, &b, &path).await;
        assert!(!html.contains("<script") && !html.contains("<img"), "{path}: {html}");
    }
    let html = page(&app, &b, &format!("/console/systems/{id}")).await;
    assert!(
        html.contains("Hostile &lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"),
        "{html}"
    );
}

#[tokio::test]
async fn the_audit_search_pages_newest_first_and_its_export_is_the_apis() {
    let Some(app) = spawn_app().await else { return };
    let auditor = app.admin_token_named(Role::Auditor, "audit-bot").await;
    let mut jtis = Vec::new();
    for _ in 0..53 {
        let issued = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[("audience", "reports-api")]).await;
        let claims =
            halflife::crypto::b64url_decode(issued["access_token"].as_str().unwrap().split('.').nth(1).unwrap());
        let claims: Value = serde_json::from_slice(&claims.unwrap()).unwrap();
        jtis.push(claims["jti"].as_str().unwrap().to_owned());
    }
    let b = browser();
    sign_in_with(&app, &b, &auditor).await;
    let first = page(&app, &b, "/console/audit?system=summarizer&kind=credential.issued&outcome=").await;
    // Newest first: the last credential leads, the first is on page two.
    let newest = first.find(&jtis[52]).expect("the newest credential on page one");
    let older = first.find(&jtis[51]).expect("the one before it");
    assert!(newest < older);
    assert!(!first.contains(&jtis[0]), "page one holds 50");
    let next = first.split("id=\"older\" href=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let second = page(&app, &b, &next).await;
    for jti in &jtis[..3] {
        assert!(second.contains(jti.as_str()), "{second}");
    }
    assert!(!second.contains(&jtis[3]));

    // One event, and the credential's attribution.
    let credential = page(&app, &b, &format!("/console/credentials/{}", jtis[0])).await;
    assert!(credential.contains(RSA_SUBJECT) && credential.contains("summarizer-k8s"), "{credential}");
    assert!(credential.contains("not revoked"));

    // The export is the API's, row for row.
    let exported = b
        .get(app.url("/console/audit/export?system=summarizer&kind=credential.issued&format=csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(exported.status(), 200);
    assert_eq!(exported.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(exported.headers()["content-disposition"], "attachment; filename=\"audit.csv\"");
    let exported = exported.text().await.unwrap();
    assert_eq!(exported, issued_csv(&app, &auditor).await);
    assert_eq!(exported.lines().count(), 54, "a header and 53 rows");
    let bad = b.get(app.url("/console/audit/export?format=xml")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("must be csv or jsonl"));
}

#[tokio::test]
async fn an_approver_decides_in_the_console_and_the_waiting_exchange_succeeds() {
    let Some(app) = spawn_with(Options { catalog: approval_catalog(), ..Options::default() }).await else { return };
    let attestation = app.rsa.token(RSA_SUBJECT, app.now());
    let ask = || app.exchange(&attestation, &[("audience", "reports-api")]);
    let body: Value = ask().await.json().await.unwrap();
    assert_eq!(body["error"], "authorization_pending", "{body}");
    let id = body["access_request"].as_str().unwrap().to_owned();

    let b = browser();
    sign_in_with(&app, &b, &app.person_token("ann@corp.example", &["hl-approvers"]).await).await;
    // An approver's console is the inbox.
    let home = b.get(app.url("/console/")).send().await.unwrap();
    assert_eq!(home.headers()["location"], "/console/requests");
    let inbox = page(&app, &b, "/console/requests").await;
    assert!(inbox.contains(&format!("id=\"request-{id}\"")), "{inbox}");
    assert!(!inbox.contains("href=\"/console/audit\""), "approvers do not read the audit log: {inbox}");
    let form = [("csrf", csrf(&inbox)), ("duration", "30m".into()), ("reason", "release night".into())];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, location) = post(&app, &b, &format!("/console/requests/{id}/approve"), &form).await;
    assert_eq!(status, 303, "{location}");
    let done = page(&app, &b, &location).await;
    assert!(done.contains(&format!("Request {id} approved until")), "{done}");
    let response = ask().await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let admin = app.admin_token(Role::Admin).await;
    let approved = actors(&app, &admin, "access_request.approved").await;
    assert!(approved[0].starts_with("ann@corp.example (approver; person "), "{approved:?}");
    // The audit log is not an approver's.
    let audit = b.get(app.url("/console/audit")).send().await.unwrap();
    assert_eq!(audit.status(), 403);
}

#[tokio::test]
async fn a_person_signs_in_through_the_provider_and_signing_out_ends_the_session() {
    let secret = "console-secret-for-tests";
    let port = listen_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = json!({
        "users": crate::idp::people(),
        "console": {"client_secret": secret, "redirect_uris": [format!("{base}/console/callback")]},
    });
    let Some(idp) = Idp::start(config) else { return };
    let Some(app) = spawn_with(console_options(&idp, port, secret)).await else { return };
    assert_eq!(app.base, base);

    let b = browser();
    let start = b.get(app.url("/console/sign-in/start")).send().await.unwrap();
    assert_eq!(start.status(), 303);
    let flow = start.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        flow.starts_with("halflife-sign-in=") && flow.contains("SameSite=Lax") && flow.contains("HttpOnly"),
        "{flow}"
    );
    let authorize = url::Url::parse(start.headers()["location"].to_str().unwrap()).unwrap();
    let query: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(query["client_id"], "halflife-console");
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["redirect_uri"], format!("{base}/console/callback"));
    assert!(query.contains_key("state") && query.contains_key("nonce"));

    let back = idp.authorization_return(authorize.as_str(), "alice").await;
    // The answer does not count without the cookie of the browser that
    // started the sign-in.
    let stranger = browser().get(back.clone()).send().await.unwrap();
    assert_eq!(stranger.status(), 400);
    let callback = b.get(back).send().await.unwrap();
    let status = callback.status();
    let cookies: Vec<String> =
        callback.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    let body = callback.text().await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", idp.log());
    assert!(body.contains("url=/console/"), "{body}");
    let session = cookies.iter().find(|c| c.starts_with("halflife-console=hls_")).expect("a session cookie");
    assert!(session.contains("SameSite=Strict") && session.contains("Max-Age=28800"), "{session}");
    let token = session.split(';').next().unwrap().trim_start_matches("halflife-console=").to_owned();

    let overview = page(&app, &b, "/console/").await;
    assert!(overview.contains("alice@example.com · operator"), "{overview}");
    let admin = app.admin_token(Role::Admin).await;
    let created = actors(&app, &admin, "session.created").await;
    assert!(created[0].starts_with("alice@example.com (operator; person alice at "), "{created:?}");
    let (status, _) = app.api(Method::GET, "/v1/whoami", &token, None).await;
    assert_eq!(status, 200, "the console's session is the API's");

    let (status, _) = post(&app, &b, "/console/sign-out", &[("csrf", &csrf(&overview))]).await;
    assert_eq!(status, 303);
    let (status, _) = app.api(Method::GET, "/v1/whoami", &token, None).await;
    assert_eq!(status, 401, "signing out revoked the session");
    assert_eq!(actors(&app, &admin, "session.revoked").await.len(), 1);
}

/// A server whose people sign in through `idp`, the console as its
/// confidential client `halflife-console`, listening on `port`.
pub fn console_options(idp: &Idp, port: u16, secret: &str) -> Options {
    let dir = tempfile::tempdir().unwrap().keep();
    let secret_file = dir.join("console-secret");
    std::fs::write(&secret_file, secret).unwrap();
    Options {
        people: false,
        server_extra: String::new(),
        listen_port: Some(port),
        extra_config: format!(
            r#"
[people]
issuer = "{issuer}"
client_id = "halflife-cli"
algorithms = ["RS256"]
{PEOPLE_ROLES}
[console]
client_id = "halflife-console"
client_secret_file = "{secret}"
"#,
            issuer = idp.issuer,
            secret = secret_file.display(),
        ),
        ..Options::default()
    }
}

#[tokio::test]
async fn a_disabled_console_is_not_there() {
    let Some(app) =
        spawn_with(Options { extra_config: "[console]\nenabled = false\n".into(), ..Options::default() }).await
    else {
        return;
    };
    let response = app.client.get(app.url("/console/")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn over_tls_the_session_cookie_is_secure_and_bound_to_the_host() {
    use std::sync::Arc;

    use halflife::clock::Clock as _;
    use secrecy::ExposeSecret;

    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let d = dir.path().display();
    let config = halflife::config::Config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert_file = \"{d}/cert.pem\"\nkey_file = \"{d}/key.pem\"\n\
         [database]\nurl = \"sqlite://{d}/h.db\"\n[keys]\ndir = \"{d}/keys\"\nkek = \"{}\"\n[dev]\nenabled = true\n",
        kek_b64()
    ))
    .unwrap();
    let clock = halflife::clock::SystemClock;
    let app = halflife::app::App::build(config, Arc::new(clock)).await.unwrap().without_background_jobs();
    let port = app.local_addr().port();
    let (_, token) = halflife::broker::admin::create_admin_token(
        app.broker().admin_tokens.as_ref(),
        Role::Operator,
        "tls-bot",
        halflife::broker::admin::DEFAULT_ADMIN_TOKEN_TTL,
        "test",
        clock.now(),
    )
    .await
    .unwrap();
    tokio::spawn(app.run(std::future::pending()));

    let tls = crate::mtls::pki::client_config(cert.cert.der().clone(), None);
    let b = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let response =
        b.post(format!("{base}/console/sign-in")).form(&[("token", token.expose_secret())]).send().await.unwrap();
    assert_eq!(response.status(), 303);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-halflife-console=hla_"), "{cookie}");
    assert!(cookie.contains("; Secure") && cookie.contains("Path=/") && !cookie.contains("Domain"), "{cookie}");
    let overview = b.get(format!("{base}/console/")).send().await.unwrap();
    assert_eq!(overview.status(), 200);
    assert!(overview.text().await.unwrap().contains("tls-bot · operator"));
}
