//! A real browser for the tests that need one: Debian's chromium, headless,
//! driven over WebDriver (fantoccini) through a chromedriver of its own on a
//! random port. [`Browser`] wraps the few things a page test does (open,
//! find, fill, click, submit, screenshot) and reads the browser's console,
//! where chromium reports Content Security Policy violations.
//!
//! It needs `apt-get install chromium chromium-driver`; without them the
//! tests are skipped with the reason printed, except when
//! `HALFLIFE_REQUIRE_BROWSER=1` (CI), where it fails them.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::Method;
use axum::response::Html;
use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The bound on every wait: for chromedriver to answer, for an element to
/// appear, for the console log to catch up.
const PATIENCE: Duration = Duration::from_secs(10);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(25);

fn required() -> bool {
    std::env::var("HALFLIFE_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

/// One line of the browser's console, as chromedriver reports it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO` or `DEBUG`.
    pub level: String,
    /// Where it came from: `console-api` (the page's `console.*`), `security`, `network`, `javascript`, ...
    pub source: String,
    /// The text, prefixed with the page's URL and position.
    pub message: String,
}

impl LogEntry {
    /// Whether chromium is reporting a Content Security Policy violation.
    /// Older versions say "Refused to ... because it violates the following
    /// Content Security Policy directive", newer ones "Executing inline script
    /// violates the following Content Security Policy directive"; both name
    /// the policy. The page's own `console.*` calls never count.
    pub fn is_csp_violation(&self) -> bool {
        self.source != "console-api" && self.message.contains("Content Security Policy")
    }
}

/// A WebDriver `POST /session/{id}/{path}` with a JSON body, for the
/// commands fantoccini lacks or gets wrong for chromium.
#[derive(Debug)]
struct Post(&'static str, Value);

impl WebDriverCompatibleCommand for Post {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/{}", session.unwrap_or("none"), self.0))
    }

    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(self.1.to_string()))
    }
}

/// chromedriver and, in its process group, the chromium it starts: killing
/// chromedriver alone leaves chromium running.
struct Driver(tokio::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let pid = self.0.id().and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// A headless chromium with a fresh profile; chromedriver and chromium are
/// killed when it is dropped ([`Browser::close`] ends the session first).
pub struct Browser {
    client: Client,
    console: Mutex<Vec<LogEntry>>,
    markers: AtomicU64,
    _driver: Driver,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a browser session; `None` (with the reason
    /// printed) when chromium or chromedriver is not installed and CI does
    /// not require them.
    pub async fn start() -> Option<Browser> {
        if let Some(missing) = [CHROMIUM, CHROMEDRIVER].into_iter().find(|p| !Path::new(p).exists()) {
            assert!(!required(), "{missing} is missing: apt-get install chromium chromium-driver");
            eprintln!("skipped: {missing} is missing (apt-get install chromium chromium-driver)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("chromedriver.log");
        let driver_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        // A port taken between our probe and chromedriver's bind makes it exit: try another.
        let mut started = None;
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let log = std::fs::File::create(&log_path).unwrap();
            let child = tokio::process::Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .expect("chromedriver runs");
            let mut driver = Driver(child);
            if wait_ready(&mut driver, port).await {
                started = Some((driver, port));
                break;
            }
        }
        let (driver, port) = started.ok_or_else(|| format!("chromedriver did not start:\n{}", driver_log())).unwrap();
        let profile = dir.path().join("profile");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1280,900", format!("--user-data-dir={}", profile.display()),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .map_err(|e| format!("no chromium session: {e}\n{}", driver_log()))
            .unwrap();
        Some(Browser { client, console: Mutex::default(), markers: AtomicU64::new(0), _driver: driver, _dir: dir })
    }

    /// The WebDriver client, for anything the helpers below do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.map_err(|e| format!("goto {url}: {e}")).unwrap();
    }

    /// The first element matching `css`, waiting (bounded) until it appears.
    pub async fn find(&self, css: &str) -> Element {
        let wait = self.client.wait().at_most(PATIENCE).every(POLL);
        wait.for_element(Locator::Css(css)).await.map_err(|e| format!("no element {css}: {e}")).unwrap()
    }

    /// The rendered text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    /// Replaces the value of the input matching `css` by typing `value`.
    pub async fn fill(&self, css: &str, value: &str) {
        let input = self.find(css).await;
        input.clear().await.unwrap();
        input.send_keys(value).await.unwrap();
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.map_err(|e| format!("click {css}: {e}")).unwrap();
    }

    /// Submits the form matching `css` with its submit button, as a person would.
    pub async fn submit(&self, css: &str) {
        self.find(css).await;
        let form = self.client.form(Locator::Css(css)).await.unwrap();
        form.submit().await.map_err(|e| format!("submit {css}: {e}")).unwrap();
    }

    /// The URL of the page shown now (after any redirects).
    pub async fn current_url(&self) -> url::Url {
        self.client.current_url().await.unwrap()
    }

    /// The current DOM, serialised as HTML.
    pub async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its result.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.map_err(|e| format!("script failed: {e}")).unwrap()
    }

    /// Writes a PNG of the window to `path`, creating its directory; for
    /// looking at what a failing test saw.
    pub async fn screenshot(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, self.client.screenshot().await.unwrap()).unwrap();
    }

    /// Sets a cookie (path `/`, `SameSite=Lax`) for the site of the page open
    /// now: WebDriver sets cookies only for the current document. (fantoccini's
    /// own call sends `"domain": null` and `SameSite=None`, which chromium refuses.)
    pub async fn set_cookie(&self, name: &str, value: &str) {
        let cookie = json!({"cookie": {"name": name, "value": value, "path": "/", "sameSite": "Lax"}});
        self.client.issue_cmd(Post("cookie", cookie)).await.map_err(|e| format!("set cookie {name}: {e}")).unwrap();
    }

    /// Forgets the current site's cookies, as a signed-out browser would have none.
    pub async fn delete_all_cookies(&self) {
        self.client.delete_all_cookies().await.unwrap();
    }

    /// Everything the console has shown since the browser started: the
    /// page's `console.*` output, script errors, failed loads, policy
    /// violations. Read through chromedriver's legacy `se/log` endpoint (the
    /// W3C protocol has none), which hands out each entry once; a marker is
    /// logged first and read back, so everything the page logged before this
    /// call is in.
    pub async fn console_messages(&self) -> Vec<LogEntry> {
        let marker = format!("halflife-marker-{}", self.markers.fetch_add(1, Ordering::Relaxed));
        self.execute("console.debug(arguments[0])", vec![json!(marker)]).await;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let fresh = self
                .client
                .issue_cmd(Post("se/log", json!({"type": "browser"})))
                .await
                .map_err(|e| format!("se/log: {e}"))
                .unwrap();
            let fresh: Vec<LogEntry> = serde_json::from_value(fresh).unwrap();
            let seen = fresh.iter().any(|e| e.message.contains(&marker));
            let console = {
                let mut console = self.console.lock().unwrap();
                console.extend(fresh.into_iter().filter(|e| !e.message.contains("halflife-marker-")));
                console.clone()
            };
            if seen {
                return console;
            }
            assert!(Instant::now() < deadline, "the console marker never reached the browser log");
            tokio::time::sleep(POLL).await;
        }
    }

    /// The console's Content Security Policy violations since the browser started.
    pub async fn csp_violations(&self) -> Vec<LogEntry> {
        self.console_messages().await.into_iter().filter(LogEntry::is_csp_violation).collect()
    }

    /// Ends the session (chromium quits), then stops chromedriver.
    pub async fn close(self) {
        self.client.clone().close().await.unwrap();
    }
}

/// Whether chromedriver answers `/status` within [`PATIENCE`]; `false` as
/// soon as it exits (its port was taken).
async fn wait_ready(driver: &mut Driver, port: u16) -> bool {
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let status: hyper::Uri = format!("http://127.0.0.1:{port}/status").parse().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if http.get(status.clone()).await.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        if driver.0.try_wait().unwrap().is_some() {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    false
}

/// The policy the test pages are served with: nothing inline.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'";

/// The test pages: an inline script and style attribute, which the policy
/// blocks; the same done from files, which it allows; a form.
const INLINE: &str = r#"<p style="color: red">styled</p><script>document.title = "inline ran";</script>"#;
const CLEAN: &str = r#"<p id="out">waiting</p><script src="/app.js"></script>"#;
const APP_JS: &str = r#"document.getElementById("out").textContent = "script ran"; console.log("app ready");"#;
const FORM: &str = concat!(
    r#"<form id="greet" method="post" action="/greet">"#,
    r#"<input id="name" name="name"><button type="submit">Go</button></form>"#,
);

/// Answers the form: the name it was sent and the cookies that came with it.
async fn greet(
    headers: axum::http::HeaderMap,
    form: axum::Form<std::collections::HashMap<String, String>>,
) -> Html<String> {
    let cookie = headers.get(axum::http::header::COOKIE).and_then(|c| c.to_str().ok()).unwrap_or("");
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;");
    let name = escape(form.get("name").map_or("", String::as_str));
    Html(format!(r#"<p id="greeting">Hello, {name}</p><p id="cookie">{}</p>"#, escape(cookie)))
}

/// A small site for the tests below, on a random port; its base URL.
async fn site() -> String {
    use axum::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
    use axum::routing::{get, post};
    let page = |body: &'static str| move || async move { ([(CONTENT_SECURITY_POLICY, CSP)], Html(body)) };
    let router = axum::Router::new()
        .route("/inline", get(page(INLINE)))
        .route("/clean", get(page(CLEAN)))
        .route("/app.js", get(|| async { ([(CONTENT_TYPE, "text/javascript")], APP_JS) }))
        .route("/form", get(page(FORM)))
        .route("/greet", post(greet))
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

#[tokio::test]
async fn the_console_reports_csp_violations_and_only_those() {
    let base = site().await;
    let Some(browser) = Browser::start().await else { return };

    browser.goto(&format!("{base}/clean")).await;
    assert_eq!(browser.text("#out").await, "script ran", "a script from 'self' runs under the policy");
    let console = browser.console_messages().await;
    assert!(console.iter().any(|e| e.source == "console-api" && e.message.contains("app ready")), "{console:?}");
    assert_eq!(browser.csp_violations().await.len(), 0, "{console:?}");

    browser.goto(&format!("{base}/inline")).await;
    let violations = browser.csp_violations().await;
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(violations.iter().all(|e| e.level == "SEVERE"), "{violations:?}");
    assert!(violations.iter().any(|e| e.message.contains("script-src")), "{violations:?}");
    assert!(violations.iter().any(|e| e.message.contains("style-src")), "{violations:?}");
    assert_ne!(browser.client().title().await.unwrap(), "inline ran", "the inline script was blocked");
    browser.close().await;
}

#[tokio::test]
async fn a_form_round_trip_with_a_cookie_and_a_screenshot() {
    let base = site().await;
    let Some(browser) = Browser::start().await else { return };

    browser.goto(&format!("{base}/form")).await;
    browser.set_cookie("seen", "yes").await;
    browser.fill("#name", "Ada <3").await;
    browser.submit("#greet").await;
    assert_eq!(browser.text("#greeting").await, "Hello, Ada <3");
    assert_eq!(browser.text("#cookie").await, "seen=yes");
    assert_eq!(browser.current_url().await.path(), "/greet");
    assert!(browser.source().await.contains("Hello, Ada &lt;3"));
    browser.delete_all_cookies().await;
    assert_eq!(browser.execute("return document.cookie", vec![]).await, "");

    browser.goto(&format!("{base}/form")).await;
    browser.fill("#name", "Grace").await;
    browser.click("#greet button").await;
    assert_eq!(browser.text("#greeting").await, "Hello, Grace");
    assert_eq!(browser.text("#cookie").await, "", "no cookies after deleting them all");

    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("shots/greeting.png");
    browser.screenshot(&shot).await;
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(browser.csp_violations().await.is_empty());
    browser.close().await;
}
