//! The web console in a real browser (headless chromium, tests/api/browser.rs),
//! end to end with the real server and, where people sign in, the real
//! OpenID provider: what a person does in it, and what it refuses to do.
//! No page may violate the console's Content Security Policy: each test
//! ends by checking the browser reported no violation.
//! tests/api/console.rs checks the same pages over plain HTTP.
//!
//! The tests also leave screenshots of the main pages in
//! `HALFLIFE_SCREENSHOT_DIR` (default: `console-screenshots` under cargo's
//! temporary directory for tests), for people to look at.

use std::path::PathBuf;

use axum::response::Html;
use halflife::domain::model::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::console::{HOSTILE, actors, console_options, hostile_system, issued_csv, system_state};
use crate::helpers::*;
use crate::idp::Idp;

/// Where the screenshots go.
fn screenshot_dir() -> PathBuf {
    std::env::var_os("HALFLIFE_SCREENSHOT_DIR").map_or_else(
        || {
            option_env!("CARGO_TARGET_TMPDIR")
                .map_or_else(std::env::temp_dir, PathBuf::from)
                .join("console-screenshots")
        },
        PathBuf::from,
    )
}

/// Saves what the browser shows as `<name>.png`.
async fn screenshot(browser: &Browser, name: &str) {
    browser.screenshot(screenshot_dir().join(format!("{name}.png"))).await;
}

/// Opens a console page and waits for its content.
async fn open(browser: &Browser, app: &TestApp, path: &str) {
    browser.goto(&app.url(path)).await;
    browser.find("main").await;
}

/// Signs in with dev mode's token form; returns who the header says is
/// signed in.
async fn sign_in_with_token(browser: &Browser, app: &TestApp, token: &str) -> String {
    open(browser, app, "/console/sign-in").await;
    browser.fill("#token", token).await;
    browser.submit("form[action='/console/sign-in']").await;
    browser.text("form.who span").await
}

/// Waits (bounded) until the browser shows `url`.
async fn arrive(browser: &Browser, url: &str) {
    let url = url::Url::parse(url).unwrap();
    let wait = browser.client().wait().at_most(std::time::Duration::from_secs(10));
    let arrived = wait.for_url(&url).await;
    let at = browser.current_url().await;
    arrived.map_err(|e| format!("never reached {url}: at {at} ({e})")).unwrap();
}

/// Signs out with the header's button; lands on the sign-in page.
async fn sign_out(browser: &Browser, app: &TestApp) {
    browser.click("form.who button").await;
    arrive(browser, &app.url("/console/sign-in?done=Signed+out.")).await;
    assert_eq!(browser.text("p.notice").await, "Signed out.");
}

/// Every form of the page, as `method action`.
async fn forms(browser: &Browser) -> Vec<String> {
    let count = browser.execute("return document.forms.length", vec![]).await;
    let forms = browser
        .execute("return Array.from(document.forms).map(f => f.method + ' ' + f.getAttribute('action'))", vec![])
        .await;
    let forms: Vec<String> = serde_json::from_value(forms).unwrap();
    assert_eq!(count, json!(forms.len()));
    forms
}

/// The session cookie the browser holds for the console, if any.
async fn session_cookie(browser: &Browser) -> Option<fantoccini::cookies::Cookie<'static>> {
    browser.client().get_all_cookies().await.unwrap().into_iter().find(|c| c.name() == "halflife-console")
}

/// Fails with every violation's message if the browser reported any
/// Content Security Policy violation since it started; then closes it.
async fn finish(browser: Browser) {
    let violations = browser.csp_violations().await;
    let messages: Vec<&str> = violations.iter().map(|v| v.message.as_str()).collect();
    assert!(messages.is_empty(), "Content Security Policy violations:\n{}", messages.join("\n"));
    browser.close().await;
}

/// A fresh summarizer credential for reports-api; its access token.
async fn summarizer_token(app: &TestApp) -> String {
    let issued = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[("audience", "reports-api")]).await;
    issued["access_token"].as_str().unwrap().to_owned()
}

/// A few credentials of the production indexer, so that the pages have
/// something to show.
async fn indexer_traffic(app: &TestApp, n: usize) {
    for task in app.spawn_exchanges(n) {
        assert!(task.await.unwrap().is_some(), "the indexer exchange was refused");
    }
}

#[tokio::test]
async fn a_person_signs_in_through_the_provider_in_the_browser_and_signs_out() {
    let secret = "console-secret-for-tests";
    let port = listen_port();
    let config = json!({
        "users": crate::idp::people(),
        "console": {"client_secret": secret, "redirect_uris": [format!("http://127.0.0.1:{port}/console/callback")]},
    });
    let Some(idp) = Idp::start(config) else { return };
    let Some(app) = spawn_with(console_options(&idp, port, secret)).await else { return };
    let Some(browser) = Browser::start().await else { return };

    open(&browser, &app, "/console/").await;
    assert_eq!(browser.current_url().await.path(), "/console/sign-in", "the console asks for a sign-in first");
    let provider = browser.text("#sign-in").await;
    assert_eq!(provider, format!("Sign in with {}", idp.issuer));
    screenshot(&browser, "sign-in").await;

    // The provider's own pages: log in, then consent.
    browser.click("#sign-in").await;
    browser.fill("input[name=login]", "alice").await;
    browser.fill("input[name=password]", "any").await;
    browser.click("button[type=submit]").await;
    browser.find("input[name=prompt][value=consent]").await;
    assert!(browser.current_url().await.as_str().starts_with(&idp.issuer), "consent is the provider's page");
    browser.click("button[type=submit]").await;

    // Back through the callback, whose page refreshes into the console:
    // the browser must arrive signed in, with the strict cookie sent.
    arrive(&browser, &app.url("/console/")).await;
    let who = browser.text("form.who span").await;
    assert_eq!(who, "alice@example.com · operator", "{}", idp.log());
    browser.find("#systems-by-tier").await;
    let cookie = session_cookie(&browser).await.expect("the session cookie");
    assert!(cookie.value().starts_with("hls_"), "a person's session: {cookie}");
    assert_eq!(cookie.http_only(), Some(true));
    assert!(cookie.same_site().is_some_and(|s| s.is_strict()), "{cookie}");
    let session = cookie.value().to_owned();
    let admin = app.admin_token(Role::Admin).await;
    let created = actors(&app, &admin, "session.created").await;
    assert!(created[0].starts_with("alice@example.com (operator; person alice at "), "{created:?}");
    assert_eq!(app.api(Method::GET, "/v1/whoami", &session, None).await.0, 200);

    sign_out(&browser, &app).await;
    assert!(session_cookie(&browser).await.is_none(), "the browser forgot the session");
    assert_eq!(app.api(Method::GET, "/v1/whoami", &session, None).await.0, 401, "the session is revoked");
    assert_eq!(actors(&app, &admin, "session.revoked").await.len(), 1);
    open(&browser, &app, "/console/").await;
    assert_eq!(browser.current_url().await.path(), "/console/sign-in");
    assert!(forms(&browser).await.iter().all(|f| f != "post /console/sign-out"), "nobody is signed in");
    finish(browser).await;
}

#[tokio::test]
async fn an_operator_revokes_a_system_in_the_browser_once_its_id_is_typed() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Admin).await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(summarizer_token(&app).await);
    }
    indexer_traffic(&app, 2).await;
    let Some(browser) = Browser::start().await else { return };

    let who = sign_in_with_token(&browser, &app, &app.admin_token_named(Role::Operator, "ops-bot").await).await;
    assert_eq!(who, "ops-bot · operator");
    open(&browser, &app, "/console/systems/summarizer").await;
    assert_eq!(browser.text("#credentials tbody tr").await, "jwt 3");
    screenshot(&browser, "system").await;

    // A wrong id: the refusal, and nothing changed.
    browser.fill("#revoke input[name=reason]", "leaked key").await;
    browser.fill("#revoke input[name=confirm]", "summarize").await;
    browser.submit("#revoke").await;
    assert_eq!(browser.text("p.error").await, "confirm: type summarizer to confirm; nothing was changed");
    assert_eq!(browser.current_url().await.path(), "/console/systems/summarizer/revoke");
    for token in &tokens {
        assert_eq!(app.introspect(&admin, token).await["active"], true);
    }
    assert!(actors(&app, &admin, "credential.revoked").await.is_empty());

    open(&browser, &app, "/console/systems/summarizer").await;
    browser.fill("#revoke input[name=reason]", "leaked key").await;
    browser.fill("#revoke input[name=confirm]", "summarizer").await;
    browser.submit("#revoke").await;
    assert_eq!(browser.text("p.notice").await, "3 credentials of summarizer revoked.");
    assert_eq!(browser.current_url().await.path(), "/console/systems/summarizer");
    for token in &tokens {
        assert_eq!(app.introspect(&admin, token).await["active"], false);
    }
    let revoked = actors(&app, &admin, "credential.revoked").await;
    assert!(revoked.iter().all(|a| a.starts_with("ops-bot (operator; automation token ")), "{revoked:?}");
    assert_eq!(system_state(&app, &admin, "summarizer").await, "active", "revoking leaves the system active");
    finish(browser).await;
}

/// A page of another site that posts a console form as soon as it loads
/// (its own inline script, under no policy of the console's); its URL.
async fn attacker_page(target: String) -> String {
    let page = format!(
        r#"<!doctype html><html><head><title>You won</title></head><body>
<form id="prize" method="post" action="{target}">
<input type="hidden" name="reason" value="forged"><input type="hidden" name="confirm" value="summarizer">
</form>
<script>document.getElementById("prize").submit();</script>
</body></html>"#
    );
    let router = axum::Router::new()
        .route("/", axum::routing::get(move || std::future::ready(Html(page.clone()))))
        .route("/favicon.ico", axum::routing::get(|| std::future::ready(axum::http::StatusCode::NO_CONTENT)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

#[tokio::test]
async fn an_auditor_gets_no_action_and_a_forged_form_from_another_page_is_refused() {
    let Some(app) = spawn_with(Options { catalog: approval_catalog(), ..Options::default() }).await else { return };
    let admin = app.admin_token(Role::Admin).await;
    // A request waiting for a decision, which an auditor may see but not decide.
    let pending: Value = app
        .exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[("audience", "reports-api")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pending["error"], "authorization_pending", "{pending}");
    let request = pending["access_request"].as_str().unwrap().to_owned();
    let Some(browser) = Browser::start().await else { return };

    let who = sign_in_with_token(&browser, &app, &app.admin_token_named(Role::Auditor, "audit-bot").await).await;
    assert_eq!(who, "audit-bot · auditor");
    let sign_out_form = "post /console/sign-out".to_owned();
    for (path, search) in [
        ("/console/", None),
        ("/console/systems", Some("get /console/systems")),
        ("/console/systems/summarizer", None),
        ("/console/owners", None),
        ("/console/owners/biz", None),
        ("/console/audit", Some("get /console/audit")),
        ("/console/keys", None),
        ("/console/requests", None),
    ] {
        open(&browser, &app, path).await;
        // Searching and filtering (GET) are reading; the only form that
        // would change anything is signing out.
        let expected: Vec<String> = [sign_out_form.clone()].into_iter().chain(search.map(str::to_owned)).collect();
        assert_eq!(forms(&browser).await, expected, "{path}");
        let buttons = browser
            .execute("return Array.from(document.querySelectorAll('button')).filter(b => !b.form).length", vec![])
            .await;
        assert_eq!(buttons, 0, "{path}: a button outside any form");
    }
    let article = browser.find(&format!("[id='request-{request}']")).await;
    assert!(article.text().await.unwrap().contains("summarizer-k8s"), "the auditor sees the pending request");
    sign_out(&browser, &app).await;

    // The operator's browser, signed in, opens another site's page on
    // this machine (same site, so the strict cookie goes along).
    let who = sign_in_with_token(&browser, &app, &app.admin_token_named(Role::Operator, "ops-bot").await).await;
    assert_eq!(who, "ops-bot · operator");
    let target = app.url("/console/systems/summarizer/suspend");
    let attacker = attacker_page(target.clone()).await;
    browser.goto(&attacker).await;
    let refusal = browser.text("p.error").await;
    assert!(refusal.contains("CSRF token is missing or not this session's"), "{refusal}");
    assert_eq!(browser.text("h1").await, "Not allowed");
    assert_eq!(browser.current_url().await.as_str(), target, "the forged form did reach the console");
    assert_eq!(system_state(&app, &admin, "summarizer").await, "active");
    assert!(actors(&app, &admin, "system.suspended").await.is_empty());
    finish(browser).await;
}

#[tokio::test]
async fn an_approval_decided_in_the_browser_releases_the_waiting_exchange() {
    let Some(app) = spawn_with(Options { catalog: approval_catalog(), ..Options::default() }).await else { return };
    indexer_traffic(&app, 4).await;
    let attestation = app.rsa.token(RSA_SUBJECT, app.now());
    let ask = || app.exchange(&attestation, &[("audience", "reports-api")]);
    let body: Value = ask().await.json().await.unwrap();
    assert_eq!(body["error"], "authorization_pending", "{body}");
    let id = body["access_request"].as_str().unwrap().to_owned();
    let article = format!("[id='request-{id}']");
    let Some(browser) = Browser::start().await else { return };

    // An operator's view of it all, with the request waiting.
    sign_in_with_token(&browser, &app, &app.admin_token_named(Role::Operator, "ops-bot").await).await;
    assert!(browser.text("#access-requests").await.contains("1 pending"));
    assert!(browser.text("#systems-by-tier").await.contains("production"), "the indexer was promoted");
    screenshot(&browser, "overview").await;
    open(&browser, &app, "/console/systems").await;
    let rows = browser.execute("return document.querySelectorAll('#systems tbody tr').length", vec![]).await;
    assert_eq!(rows, 2);
    screenshot(&browser, "systems").await;
    open(&browser, &app, "/console/owners").await;
    screenshot(&browser, "owners").await;
    open(&browser, &app, "/console/keys").await;
    browser.find("#keys tbody tr").await;
    screenshot(&browser, "keys").await;
    sign_out(&browser, &app).await;

    // The approver decides.
    let approver = app.person_token("ann@corp.example", &["hl-approvers"]).await;
    let who = sign_in_with_token(&browser, &app, &approver).await;
    assert_eq!(who, "ann@corp.example · approver");
    assert_eq!(browser.current_url().await.path(), "/console/requests", "an approver's console is the inbox");
    let shown = browser.text(&article).await;
    assert!(shown.contains("summarizer-k8s") && shown.contains(RSA_SUBJECT), "{shown}");
    browser.fill(&format!("{article} input[name=duration]"), "30m").await;
    browser.fill(&format!("{article} form[action$='/approve'] input[name=reason]"), "release night").await;
    screenshot(&browser, "requests").await;
    browser.click(&format!("{article} form[action$='/approve'] button")).await;
    let notice = browser.text("p.notice").await;
    assert!(notice.starts_with(&format!("Request {id} approved until ")), "{notice}");
    assert!(browser.text("#pending").await.contains("Nothing waits."));

    let response = ask().await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let admin = app.admin_token(Role::Admin).await;
    let approved = actors(&app, &admin, "access_request.approved").await;
    assert!(approved[0].starts_with("ann@corp.example (approver; person "), "{approved:?}");
    finish(browser).await;
}

#[tokio::test]
async fn the_audit_search_in_the_browser_pages_newest_first_and_exports_the_apis_csv() {
    let Some(app) = spawn_app().await else { return };
    let auditor = app.admin_token_named(Role::Auditor, "audit-bot").await;
    for _ in 0..60 {
        summarizer_token(&app).await;
    }
    indexer_traffic(&app, 3).await;
    let (status, body) = app
        .api(Method::GET, "/v1/audit/events?system=summarizer&kind=credential.issued&limit=1000", &auditor, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let mut newest: Vec<String> =
        body["events"].as_array().unwrap().iter().map(|e| e["jti"].as_str().unwrap().to_owned()).collect();
    newest.reverse();
    assert_eq!(newest.len(), 60);
    let Some(browser) = Browser::start().await else { return };

    sign_in_with_token(&browser, &app, &auditor).await;
    open(&browser, &app, "/console/audit").await;
    browser.fill("#search input[name=system]", "summarizer").await;
    browser.fill("#search input[name=kind]", "credential.issued").await;
    browser.submit("#search").await;
    // The answer's form shows the search it ran (an attribute the typing did not set).
    browser.find("#search input[name=kind][value='credential.issued']").await;
    let rows = event_rows(&browser).await;
    assert!(rows.iter().all(|(kind, system, _)| kind == "credential.issued" && system == "summarizer"), "{rows:?}");
    let shown: Vec<&str> = rows.iter().map(|(_, _, jti)| jti.as_str()).collect();
    assert_eq!(shown, newest[..50], "page one: the newest 50, newest first");
    screenshot(&browser, "audit").await;

    browser.click("#older").await;
    browser.find("a[href='/console/audit?system=summarizer&kind=credential.issued']").await;
    let rows = event_rows(&browser).await;
    let shown: Vec<&str> = rows.iter().map(|(_, _, jti)| jti.as_str()).collect();
    assert_eq!(shown, newest[50..], "page two: the 10 oldest");
    let older = browser.execute("return document.querySelectorAll('#older').length", vec![]).await;
    assert_eq!(older, 0, "page two is the last");

    // The export link, fetched with the browser's own session.
    let href = browser.find("#export-csv").await.attr("href").await.unwrap().expect("an href");
    assert_eq!(href, "/console/audit/export?system=summarizer&kind=credential.issued&format=csv");
    let cookie = session_cookie(&browser).await.expect("the session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    let exported = app
        .client
        .get(app.url(&href))
        .header(reqwest::header::COOKIE, format!("halflife-console={}", cookie.value()))
        .send()
        .await
        .unwrap();
    assert_eq!(exported.status(), 200);
    assert_eq!(exported.headers()["content-type"], "text/csv; charset=utf-8");
    let exported = exported.text().await.unwrap();
    assert_eq!(exported, issued_csv(&app, &auditor).await);
    assert_eq!(exported.lines().count(), 61, "a header and 60 rows");

    // The oldest credential's attribution, one click away.
    browser.click(&format!("a[href='/console/credentials/{}']", newest[59])).await;
    let attribution = browser.text("#attribution").await;
    assert!(attribution.contains(RSA_SUBJECT) && attribution.contains("summarizer-k8s"), "{attribution}");
    assert_eq!(browser.text("#status").await, "not revoked");
    screenshot(&browser, "credential").await;
    finish(browser).await;
}

/// The audit table's rows: kind, system and jti of each.
async fn event_rows(browser: &Browser) -> Vec<(String, String, String)> {
    let rows = browser
        .execute(
            "return Array.from(document.querySelectorAll('table.events tbody tr'))\
             .map(r => [r.cells[2].innerText, r.cells[4].innerText, r.cells[6].innerText])",
            vec![],
        )
        .await;
    serde_json::from_value(rows).unwrap()
}

#[tokio::test]
async fn hostile_text_stays_text_in_the_browser() {
    let Some(app) = spawn_app().await else { return };
    // The admin's own name is hostile too: it is the actor of every event below.
    let admin = app.admin_token_named(Role::Admin, HOSTILE).await;
    let id = hostile_system(&app, &admin).await;
    let Some(browser) = Browser::start().await else { return };

    let who = sign_in_with_token(&browser, &app, &admin).await;
    assert_eq!(who, format!("{HOSTILE} · admin"));
    for path in [
        format!("/console/systems/{id}"),
        "/console/owners/mallory".to_owned(),
        "/console/owners".to_owned(),
        "/console/systems".to_owned(),
        format!("/console/audit?system={id}"),
        format!("/console/sign-in?done={}", form_urlencoded::byte_serialize(HOSTILE.as_bytes()).collect::<String>()),
    ] {
        open(&browser, &app, &path).await;
        let page = browser
            .execute(
                "return {img: document.getElementsByTagName('img').length, \
                 script: document.getElementsByTagName('script').length, text: document.body.innerText}",
                vec![],
            )
            .await;
        assert_eq!((&page["img"], &page["script"]), (&json!(0), &json!(0)), "{path}");
        let text = page["text"].as_str().unwrap();
        assert!(text.contains(HOSTILE), "{path}: {text}");
    }
    open(&browser, &app, &format!("/console/systems/{id}")).await;
    assert_eq!(browser.text("#purpose").await, format!("Purpose {HOSTILE}"));
    let title = browser.client().title().await.unwrap();
    assert_eq!(title, format!("Hostile {HOSTILE} · halflife"));
    assert!(browser.text("#owners").await.contains(&format!("Mallory {HOSTILE}")));
    finish(browser).await;
}
