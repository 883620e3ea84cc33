//! A real OpenID provider for the tests where people sign in:
//! tests/clients/node/idp.mjs runs panva's `oidc-provider` on a random port,
//! and [`Idp`] completes the person's side of a sign-in over HTTP, through
//! the provider's own login and consent pages, as a browser would.
//!
//! It needs `npm ci --prefix tests/clients/node`; without it the tests are
//! skipped with the reason printed, except when `HALFLIFE_REQUIRE_CLIENTS=1`
//! (CI), where it fails them.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use url::Url;

use crate::helpers::repo_root;

/// The CLI's public client, which `idp.mjs` always registers.
pub const CLI_CLIENT: &str = "halflife-cli";
pub const SCOPES: &str = "openid email profile groups";

/// A running provider; killed when dropped.
pub struct Idp {
    pub issuer: String,
    child: Child,
    _config: tempfile::NamedTempFile,
    log: tempfile::NamedTempFile,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The usual people: alice operates, bob audits, carol has no halflife group.
pub fn people() -> Value {
    json!({
        "alice": {"email": "alice@example.com", "name": "Alice", "groups": ["hl-operators"]},
        "bob": {"email": "bob@example.com", "name": "Bob", "groups": ["hl-auditors"]},
        "carol": {"email": "carol@example.com", "name": "Carol", "groups": []},
    })
}

fn required() -> bool {
    std::env::var("HALFLIFE_REQUIRE_CLIENTS").is_ok_and(|v| v == "1")
}

impl Idp {
    /// Starts a provider with `config` (see idp.mjs for its keys); `None`
    /// (with the reason printed) when oidc-provider is not installed and CI
    /// does not require it.
    pub fn start(config: Value) -> Option<Idp> {
        let dir = repo_root().join("tests/clients/node");
        if !dir.join("node_modules/oidc-provider").exists() {
            assert!(!required(), "oidc-provider is missing: run npm ci --prefix tests/clients/node");
            eprintln!("skipped: run npm ci --prefix tests/clients/node for the OpenID provider");
            return None;
        }
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(config.to_string().as_bytes()).unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new("node")
            .arg(dir.join("idp.mjs"))
            .arg(file.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("node runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining, so that a stray write never meets a closed pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("the provider announces itself within 20 s");
        let announced: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}")).unwrap();
        let issuer = announced["issuer"].as_str().expect("an issuer").to_owned();
        Some(Idp { issuer, child, _config: file, log })
    }

    /// What the provider wrote on stderr so far (its warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// A browser: keeps cookies, follows no redirect on its own.
    pub fn browser() -> reqwest::Client {
        halflife::crypto::install();
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn plain() -> reqwest::Client {
        halflife::crypto::install();
        reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
    }

    /// The provider's discovery document.
    pub async fn discovery(&self) -> Value {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        Self::plain().get(url).send().await.unwrap().error_for_status().unwrap().json().await.unwrap()
    }

    /// The person's side of a device sign-in: open the verification page
    /// (`uri` is `verification_uri_complete`, or `verification_uri` with
    /// `user_code`), confirm the code, sign in as `username`, consent.
    pub async fn complete_device(&self, uri: &str, user_code: Option<&str>, username: &str) {
        let browser = Self::browser();
        let first = browser.get(uri).send().await.unwrap();
        let mut fields = vec![("login", username), ("password", "any")];
        if let Some(code) = user_code {
            fields.push(("user_code", code));
        }
        let end = self.walk(&browser, first, &fields, true, true).await;
        assert!(end.starts_with(&self.issuer), "the device sign-in left the provider for {end}");
    }

    /// A person who opens a device sign-in's verification page, signs in
    /// as `username` and then refuses at the consent page (its Cancel link).
    pub async fn deny_device(&self, uri: &str, username: &str) {
        let browser = Self::browser();
        let first = browser.get(uri).send().await.unwrap();
        let end = self.walk(&browser, first, &[("login", username), ("password", "any")], false, true).await;
        assert!(end.starts_with(&self.issuer), "the device sign-in left the provider for {end}");
    }

    /// The person's side of an authorization-code sign-in: open
    /// `authorization_url`, sign in as `username`, consent, and follow the
    /// provider's final redirect (the client's loopback listener) once.
    /// Returns that redirect's URL.
    pub async fn complete_authorization(&self, authorization_url: &str, username: &str) -> String {
        let browser = Self::browser();
        let first = browser.get(authorization_url).send().await.unwrap();
        let end = self.walk(&browser, first, &[("login", username), ("password", "any")], true, true).await;
        assert!(!end.starts_with(&self.issuer), "the provider never sent the browser back: ended at {end}");
        end
    }

    /// Like [`Idp::complete_authorization`], but the redirect back to the
    /// client is returned, not followed: the client's own browser follows it.
    pub async fn authorization_return(&self, authorization_url: &str, username: &str) -> String {
        let browser = Self::browser();
        let first = browser.get(authorization_url).send().await.unwrap();
        let end = self.walk(&browser, first, &[("login", username), ("password", "any")], true, false).await;
        assert!(!end.starts_with(&self.issuer), "the provider never sent the browser back: ended at {end}");
        end
    }

    /// Follows redirects within the provider and submits each page's form
    /// (hidden inputs as given, `fields` for the ones a person types) until a
    /// page has no form (returns its URL) or a redirect leaves the provider
    /// (follows it once, returns its URL). Without `consent`, the consent
    /// page (an interaction page with a Cancel link that is not the login
    /// form) is left by that link instead, and the walk ends at the first
    /// page after it.
    async fn walk(
        &self,
        browser: &reqwest::Client,
        mut response: reqwest::Response,
        fields: &[(&str, &str)],
        consent: bool,
        follow_back: bool,
    ) -> String {
        let mut cancelled = false;
        for page in 0.. {
            assert!(page < 20, "the sign-in did not finish within 20 pages");
            let here = response.url().clone();
            if response.status().is_redirection() {
                let location = response.headers()[reqwest::header::LOCATION].to_str().unwrap().to_owned();
                let next = here.join(&location).unwrap();
                if !next.as_str().starts_with(&self.issuer) {
                    if !follow_back {
                        return next.to_string();
                    }
                    let back = browser.get(next.clone()).send().await.unwrap();
                    assert!(back.status().is_success(), "the redirect to {next} answered {}", back.status());
                    return next.to_string();
                }
                response = browser.get(next).send().await.unwrap();
                continue;
            }
            let status = response.status();
            let body = response.text().await.unwrap();
            assert!(status.is_success(), "{here} answered {status}: {body}");
            let Some((action, inputs)) = first_form(&body) else { return here.to_string() };
            if cancelled {
                // The provider's page after a refusal (it offers to start over).
                return here.to_string();
            }
            let login_page = inputs.iter().any(|(name, _)| name == "login");
            if let Some(cancel) = cancel_link(&body).filter(|_| !consent && !login_page) {
                response = browser.get(here.join(&cancel).unwrap()).send().await.unwrap();
                cancelled = true;
                continue;
            }
            let mut pairs: Vec<(String, String)> = inputs
                .into_iter()
                .map(|(name, value)| {
                    let typed = fields.iter().find(|(f, _)| *f == name).map(|(_, v)| (*v).to_owned());
                    (name, typed.unwrap_or(value))
                })
                .collect();
            // Submitting the confirmation, not its abort button.
            pairs.retain(|(name, _)| name != "abort");
            let target = here.join(&action).unwrap();
            response = browser
                .post(target.clone())
                .form(&pairs)
                .send()
                .await
                .map_err(|e| format!("POST {target} {pairs:?}: {e}\nprovider log:\n{}", self.log()))
                .unwrap();
        }
        unreachable!("the loop ends by returning")
    }

    /// An ID token for `username`, through the device grant as the CLI gets
    /// one.
    pub async fn id_token_for(&self, username: &str) -> String {
        self.device_sign_in(username, false).await
    }

    /// The device grant with the person on the page: through the complete
    /// verification URI, or (`typed`) the bare one with the code typed in.
    async fn device_sign_in(&self, username: &str, typed: bool) -> String {
        let discovery = self.discovery().await;
        let http = Self::plain();
        let device: Value = http
            .post(discovery["device_authorization_endpoint"].as_str().expect("the device grant is enabled"))
            .form(&[("client_id", CLI_CLIENT), ("scope", SCOPES)])
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        if typed {
            let uri = device["verification_uri"].as_str().unwrap();
            self.complete_device(uri, Some(device["user_code"].as_str().unwrap()), username).await;
        } else {
            self.complete_device(device["verification_uri_complete"].as_str().unwrap(), None, username).await;
        }
        let token_endpoint = discovery["token_endpoint"].as_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer: Value = http
                .post(token_endpoint)
                .form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", device["device_code"].as_str().unwrap()),
                    ("client_id", CLI_CLIENT),
                ])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(token) = answer["id_token"].as_str() {
                return token.to_owned();
            }
            assert_eq!(answer["error"], "authorization_pending", "{answer}");
            assert!(Instant::now() < deadline, "no ID token within 10 s: {answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The provider's published keys.
    pub async fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        let discovery = self.discovery().await;
        let url = discovery["jwks_uri"].as_str().unwrap();
        Self::plain().get(url).send().await.unwrap().error_for_status().unwrap().json().await.unwrap()
    }
}

/// Verifies an ID token against `jwks` for `issuer` and `audience`: its claims,
/// or why not.
pub fn verify_id_token(
    jwks: &jsonwebtoken::jwk::JwkSet,
    token: &str,
    issuer: &str,
    audience: &str,
) -> Result<Value, String> {
    halflife::crypto::install();
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks.find(&kid).ok_or_else(|| format!("kid {kid} is not published"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|d| d.claims).map_err(|e| e.to_string())
}

/// The first form of an HTML page: its action and its inputs' names and
/// values.
fn first_form(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let start = html.find("<form")?;
    let end = html[start..].find("</form>").map_or(html.len(), |e| start + e);
    let form = &html[start..end];
    let tag_end = form.find('>')?;
    let action = attribute(&form[..tag_end], "action").unwrap_or_default();
    let mut inputs = Vec::new();
    let mut rest = &form[tag_end..];
    while let Some(at) = rest.find("<input") {
        rest = &rest[at..];
        let close = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..close];
        if let Some(name) = attribute(tag, "name") {
            inputs.push((name, attribute(tag, "value").unwrap_or_default()));
        }
        rest = &rest[close..];
    }
    Some((action, inputs))
}

/// The href of a page's interaction Cancel link (`/interaction/…/abort`).
fn cancel_link(html: &str) -> Option<String> {
    let mut rest = html;
    while let Some(at) = rest.find("<a ") {
        rest = &rest[at..];
        let close = rest.find('>').unwrap_or(rest.len());
        if let Some(href) = attribute(&rest[..close], "href").filter(|h| h.ends_with("/abort")) {
            return Some(href);
        }
        rest = &rest[close..];
    }
    None
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let at = tag.find(&needle)? + needle.len();
    let end = tag[at..].find('"')? + at;
    Some(unescape(&tag[at..end]))
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// The first URL in a line of text.
pub fn url_in(line: &str) -> Option<Url> {
    line.split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .and_then(|w| Url::parse(w).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_signs_people_in_with_the_device_grant() {
    let Some(idp) = Idp::start(json!({"users": people(), "device_flow": true})) else { return };
    let discovery = idp.discovery().await;
    assert_eq!(discovery["issuer"], idp.issuer.as_str());
    assert!(discovery["device_authorization_endpoint"].is_string(), "{discovery}");

    let token = idp.id_token_for("alice").await;
    let jwks = idp.jwks().await;
    let claims = verify_id_token(&jwks, &token, &idp.issuer, CLI_CLIENT).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["groups"], json!(["hl-operators"]));
    let (header, _) = crate::helpers::parts(&token);
    assert_eq!(header["alg"], "RS256");

    // The code can also be typed in on the bare verification page.
    let typed = idp.device_sign_in("bob", true).await;
    let claims = verify_id_token(&jwks, &typed, &idp.issuer, CLI_CLIENT).unwrap();
    assert_eq!((&claims["sub"], &claims["groups"]), (&json!("bob"), &json!(["hl-auditors"])));

    // Someone else's provider does not vouch for it.
    let Some(other) = Idp::start(json!({"users": people()})) else { return };
    let foreign = other.jwks().await;
    assert!(verify_id_token(&foreign, &token, &idp.issuer, CLI_CLIENT).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_can_do_without_the_device_grant() {
    let Some(idp) = Idp::start(json!({"users": people(), "device_flow": false})) else { return };
    let discovery = idp.discovery().await;
    assert!(discovery.get("device_authorization_endpoint").is_none(), "{discovery}");
    assert!(discovery["authorization_endpoint"].is_string());
    assert_eq!(discovery["code_challenge_methods_supported"], json!(["S256"]));
}
