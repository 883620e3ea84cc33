//! `halflife login` and `halflife logout`: a person signs in with the
//! organisation's OpenID provider and trades the ID token for a halflife
//! session.
//!
//! The server names the provider and the CLI's public client id
//! (`GET /v1/sign-in`); the CLI reads the provider's discovery document and
//! signs in with the device grant (RFC 8628) when the provider offers it,
//! otherwise (or with `--browser`) with an authorization code and PKCE on a
//! loopback redirect (RFC 8252 §7.3). The ID token is exchanged at the
//! server's token endpoint (RFC 8693) for a session token, which
//! [`super::session`] keeps. Both flows are a few form POSTs, written out
//! here with the CLI's reqwest client and [`crate::crypto`] (ring), so the
//! CLI carries no second crypto or random-number implementation.
//!
//! No token is ever printed: provider and server errors are shown by their
//! `error` and `error_description`.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::body::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::client::{Remote, client_tls};
use super::session::{self, Person, Session};
use crate::clock::{Clock, SystemClock};
use crate::crypto::{b64url, random_bytes, sha256};

/// Every request to the provider or the server gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the browser path waits for the provider to send the browser back.
const BROWSER_WAIT: Duration = Duration::from_secs(300);
/// An upper bound on the device grant's wait, whatever `expires_in` says.
const DEVICE_WAIT: Duration = Duration::from_secs(900);
/// RFC 8628 §3.2: the poll interval when the provider names none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// RFC 8628 §3.5: what `slow_down` adds to the interval.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// The shortest interval honoured, so a provider's `interval: 0` is no busy loop.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest answer read from the provider or the server.
const MAX_ANSWER: usize = 64 * 1024;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const SESSION_TOKEN_TYPE: &str = "urn:halflife:token-type:session";
const FORM: &str = "application/x-www-form-urlencoded";

/// What the server says about signing in (`GET /v1/sign-in`).
#[derive(Debug, Deserialize)]
struct SignIn {
    issuer: String,
    client_id: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// The parts of the provider's discovery document the CLI uses.
#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: String,
    device_authorization_endpoint: Option<String>,
    /// RFC 9207 §3: the provider puts `iss` in every authorization response.
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

/// The device authorization response (RFC 8628 §3.2).
#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: SecretString,
    user_code: String,
    verification_uri: url::Url,
    verification_uri_complete: Option<url::Url>,
    expires_in: u64,
    interval: Option<u64>,
}

/// The provider's token response, success or error (RFC 6749 §5.1, §5.2);
/// only the ID token is kept (OpenID Connect Core §3.1.3.3).
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    id_token: Option<SecretString>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// An OAuth error answer's two display fields.
#[derive(Debug, Default, Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// The CLI's HTTP client: TLS with the platform's trust store, a timeout on
/// every request, and no redirects (a token endpoint that redirects is
/// refused, not followed with the code or the ID token).
fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_tls()?)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("failed to build the HTTP client")
}

/// Reads an answer's body, refusing one over [`MAX_ANSWER`]. The buffer is
/// wiped when dropped: it may hold a token.
async fn read_bounded(mut response: reqwest::Response, what: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let too_big = || anyhow::anyhow!("{what}: the answer is over {} KiB", MAX_ANSWER / 1024);
    if response.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
        return Err(too_big());
    }
    let mut body = Zeroizing::new(Vec::new());
    while let Some(chunk) = response.chunk().await.with_context(|| format!("{what}: failed to read the answer"))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Text from a provider or server, made safe for a terminal: no control
/// characters (escape sequences), and not endless.
fn printable(text: &str) -> String {
    const MAX: usize = 300;
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(MAX).collect();
    if text.chars().filter(|c| !c.is_control()).nth(MAX).is_some() {
        out.push('…');
    }
    out
}

/// `error` and, when given, `: error_description`, printable.
fn describe(error: &str, description: Option<&str>) -> String {
    let description = description.map(|d| format!(": {}", printable(d))).unwrap_or_default();
    format!("{}{description}", printable(error))
}

/// A refusal by its `error` and `error_description` only: nothing else of
/// the body is ever shown, as it may hold a token.
fn refusal(what: &str, status: reqwest::StatusCode, body: &[u8]) -> anyhow::Error {
    let answer: ErrorAnswer = serde_json::from_slice(body).unwrap_or_default();
    let error = answer.error.as_deref().unwrap_or("request failed");
    anyhow::anyhow!("{what}: {} ({status})", describe(error, answer.error_description.as_deref()))
}

/// Reads a JSON answer of type `T`, or fails with the server's
/// `error`/`error_description`.
async fn json_answer<T: DeserializeOwned>(response: reqwest::Response, what: &str) -> anyhow::Result<T> {
    let status = response.status();
    let body = read_bounded(response, what).await?;
    if !status.is_success() {
        return Err(refusal(what, status, &body));
    }
    serde_json::from_slice(&body).map_err(|e| {
        anyhow::anyhow!("{what}: the answer is malformed (line {}, column {}) ({status})", e.line(), e.column())
    })
}

/// POSTs a form; the body is secret (it may carry a code, a verifier or a
/// token) and is wiped once sent.
async fn post_form(http: &reqwest::Client, url: &str, body: SecretString) -> reqwest::Result<reqwest::Response> {
    http.post(url)
        .header(reqwest::header::CONTENT_TYPE, FORM)
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body.expose_secret().to_owned())
        .send()
        .await
}

/// A form body from its fields.
fn form(fields: &[(&str, &str)]) -> SecretString {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in fields {
        serializer.append_pair(name, value);
    }
    SecretString::from(serializer.finish())
}

/// `halflife login`.
pub async fn login(remote: &Remote, browser: bool) -> anyhow::Result<()> {
    let base = remote.server.as_deref().context("no server to sign in to: set --server or HALFLIFE_URL")?;
    let base = base.trim_end_matches('/').to_owned();
    let http = http_client()?;

    let sign_in =
        http.get(format!("{base}/v1/sign-in")).send().await.with_context(|| format!("cannot reach {base}"))?;
    if sign_in.status() == reqwest::StatusCode::NOT_FOUND {
        bail!("{base} offers no sign-in for people (its configuration has no [people]); use HALFLIFE_TOKEN instead");
    }
    let sign_in: SignIn = json_answer(sign_in, "asking the server how to sign in").await?;
    let discovery = discover(&http, &sign_in.issuer).await?;
    let scopes = if sign_in.scopes.is_empty() {
        vec!["openid".to_owned(), "email".to_owned(), "profile".to_owned()]
    } else {
        sign_in.scopes.clone()
    };

    let id_token = match (&discovery.device_authorization_endpoint, browser) {
        (Some(device), false) => device_flow(&http, &sign_in, &discovery, device, &scopes).await?,
        _ => browser_flow(&http, &sign_in, &discovery, &scopes).await?,
    };

    let session = exchange(&http, &base, &id_token).await?;
    let path = session::save(&session)?;
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&session.public())?);
    } else {
        let who = session.person.email.as_deref().unwrap_or(&session.person.subject);
        println!("Signed in to {} as {who} ({} at {})", session.server, session.person.subject, session.person.issuer);
        let roles = if session.person.roles.is_empty() { "none".to_owned() } else { session.person.roles.join(", ") };
        println!("Roles: {roles}");
        println!("Session expires at {} ({})", session.expiry(), remaining(session.expires_at));
    }
    eprintln!("session stored in {}", path.display());
    Ok(())
}

/// The time left until `at`, in words.
fn remaining(at: OffsetDateTime) -> String {
    let left = at - SystemClock.now();
    if left.is_negative() {
        return "already expired".to_owned();
    }
    let minutes = left.whole_minutes();
    if minutes >= 60 { format!("in {}h {}m", minutes / 60, minutes % 60) } else { format!("in {minutes}m") }
}

/// An endpoint the CLI sends a code, a verifier or a token to: https, or
/// http on a loopback address (a provider on the same machine).
fn endpoint(name: &str, value: &str) -> anyhow::Result<url::Url> {
    let url = url::Url::parse(value).with_context(|| format!("the identity provider's {name} is not a URL"))?;
    let ok = match url.scheme() {
        "https" => true,
        "http" => crate::config::is_loopback_host(&url),
        _ => false,
    };
    if !ok {
        bail!("the identity provider's {name} {url} is not https");
    }
    Ok(url)
}

/// OpenID Connect Discovery: the provider's metadata, which must name the
/// issuer it was asked about (§4.3).
async fn discover(http: &reqwest::Client, issuer: &str) -> anyhow::Result<Discovery> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let response =
        http.get(&url).send().await.with_context(|| format!("cannot reach the identity provider at {url}"))?;
    let discovery: Discovery = json_answer(response, "reading the identity provider's discovery document").await?;
    if discovery.issuer != issuer {
        bail!("the identity provider at {url} calls itself {}, not {issuer}", printable(&discovery.issuer));
    }
    Ok(discovery)
}

/// What one poll of the token endpoint during the device grant means
/// (RFC 8628 §3.5).
#[derive(Debug)]
enum DevicePoll {
    /// The person signed in.
    Done(SecretString),
    /// Not yet: poll again after the interval.
    Pending,
    /// Not yet, and poll less often.
    SlowDown,
    /// The sign-in is over without a token.
    Refused(String),
}

/// Reads one answer of the token endpoint to a device-code poll.
fn device_poll(success: bool, answer: TokenAnswer) -> DevicePoll {
    if success {
        return match answer.id_token {
            Some(token) => DevicePoll::Done(token),
            None => DevicePoll::Refused(NO_ID_TOKEN.to_owned()),
        };
    }
    let description = answer.error_description.as_deref();
    match answer.error.as_deref() {
        Some("authorization_pending") => DevicePoll::Pending,
        Some("slow_down") => DevicePoll::SlowDown,
        Some(error @ "access_denied") => DevicePoll::Refused(format!(
            "access was denied at the identity provider ({}); start again with halflife login to retry",
            describe(error, description)
        )),
        Some("expired_token") => DevicePoll::Refused(
            "the code expired before the sign-in was finished; start again with halflife login".into(),
        ),
        Some(error) => DevicePoll::Refused(format!("the identity provider answered {}", describe(error, description))),
        None => DevicePoll::Refused("the identity provider's answer could not be read".to_owned()),
    }
}

const NO_ID_TOKEN: &str = "the identity provider answered without an ID token (is openid among the scopes?)";

/// The poll interval the provider asked for, [`DEFAULT_INTERVAL`] when it
/// named none, never under [`MIN_INTERVAL`].
fn poll_interval(interval: Option<u64>) -> Duration {
    interval.map_or(DEFAULT_INTERVAL, Duration::from_secs).max(MIN_INTERVAL)
}

/// Sends one request to the token endpoint and reads its answer, success
/// or OAuth error; whether it succeeded is returned beside it.
async fn token_request(
    http: &reqwest::Client,
    token_endpoint: &url::Url,
    body: SecretString,
) -> anyhow::Result<(bool, TokenAnswer)> {
    let what = "signing in";
    let response = post_form(http, token_endpoint.as_str(), body)
        .await
        .with_context(|| format!("{what}: cannot reach the identity provider's token endpoint"))?;
    let status = response.status();
    let body = read_bounded(response, what).await?;
    match serde_json::from_slice::<TokenAnswer>(&body) {
        Ok(answer) => Ok((status.is_success(), answer)),
        Err(e) if status.is_success() => {
            bail!("{what}: the identity provider's answer could not be read (line {}, column {})", e.line(), e.column())
        }
        Err(_) => bail!("{what}: the identity provider answered {status}"),
    }
}

/// The device grant: print where to go and the code, then poll.
async fn device_flow(
    http: &reqwest::Client,
    sign_in: &SignIn,
    discovery: &Discovery,
    device_endpoint: &str,
    scopes: &[String],
) -> anyhow::Result<SecretString> {
    let device_endpoint = endpoint("device authorization endpoint", device_endpoint)?;
    let token_endpoint = endpoint("token endpoint", &discovery.token_endpoint)?;
    let scope = scopes.join(" ");
    let what = "starting the sign-in";
    let response =
        post_form(http, device_endpoint.as_str(), form(&[("client_id", &sign_in.client_id), ("scope", &scope)]))
            .await
            .with_context(|| format!("{what}: cannot reach the identity provider"))?;
    let details: DeviceAuthorization = json_answer(response, what).await?;
    let started = Instant::now();

    let code = printable(&details.user_code);
    let page = details.verification_uri.as_str();
    match &details.verification_uri_complete {
        Some(complete) => {
            eprintln!("To sign in, open this page in a browser and confirm the code {code}:\n\n    {complete}\n");
            eprintln!("(or open {page} and enter the code {code})");
        }
        None => eprintln!("To sign in, open this page in a browser and enter the code {code}:\n\n    {page}\n"),
    }
    let minutes = details.expires_in.div_ceil(60);
    eprintln!("Waiting for you to finish signing in (the code expires in {minutes} minutes)…");

    // RFC 8628 §3.4-3.5: poll every `interval`, 5 s more after each
    // `slow_down`, until a token, a refusal, or the code's expiry.
    let deadline = started + Duration::from_secs(details.expires_in).min(DEVICE_WAIT);
    let mut interval = poll_interval(details.interval);
    loop {
        tokio::time::sleep_until((Instant::now() + interval).min(deadline)).await;
        let body = form(&[
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", details.device_code.expose_secret()),
            ("client_id", &sign_in.client_id),
        ]);
        let (success, answer) = token_request(http, &token_endpoint, body).await?;
        match device_poll(success, answer) {
            DevicePoll::Done(id_token) => {
                check_id_token(&id_token, &discovery.issuer, &sign_in.client_id, None)?;
                return Ok(id_token);
            }
            DevicePoll::Refused(why) => bail!("signing in: {why}"),
            DevicePoll::SlowDown => interval += SLOW_DOWN_STEP,
            DevicePoll::Pending => {}
        }
        if Instant::now() >= deadline {
            bail!("signing in: the code expired before the sign-in was finished; start again with halflife login");
        }
    }
}

/// A fresh random value for `state`, `nonce` or a PKCE verifier: 32 bytes
/// from the OS generator, base64url (43 characters, RFC 7636 §4.1).
fn random_token() -> anyhow::Result<SecretString> {
    let bytes: Zeroizing<[u8; 32]> =
        Zeroizing::new(random_bytes().map_err(|_| anyhow::anyhow!("the system's random generator failed"))?);
    Ok(SecretString::from(b64url(*bytes)))
}

/// RFC 7636 §4.2, S256: `BASE64URL(SHA256(ASCII(code_verifier)))`.
fn pkce_challenge(verifier: &SecretString) -> String {
    b64url(sha256(verifier.expose_secret().as_bytes()))
}

/// The redirect's checks, in RFC 9207's order (who answered, before what
/// the answer says): the sign-in's own `state`, the provider's `iss` when
/// it sent one (required when it advertises sending it), then `error`, and
/// finally the authorization code.
fn code_of(callback: &url::Url, state: &SecretString, discovery: &Discovery) -> anyhow::Result<SecretString> {
    let param = |name: &str| callback.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let state_ok = param("state").is_some_and(|s| bool::from(s.as_bytes().ct_eq(state.expose_secret().as_bytes())));
    if !state_ok {
        bail!("the browser came back with a different sign-in's state; start again with halflife login");
    }
    match param("iss") {
        Some(iss) if iss != discovery.issuer => {
            bail!("the authorization response came from {}, not {}", printable(&iss), discovery.issuer)
        }
        None if discovery.authorization_response_iss_parameter_supported => {
            bail!("the authorization response does not name its issuer, which {} always does", discovery.issuer)
        }
        _ => {}
    }
    if let Some(error) = param("error") {
        bail!("signing in: the identity provider answered {}", describe(&error, param("error_description").as_deref()));
    }
    param("code").map(SecretString::from).context("the browser came back without an authorization code")
}

/// The authorization code with PKCE, redirected to a loopback listener.
async fn browser_flow(
    http: &reqwest::Client,
    sign_in: &SignIn,
    discovery: &Discovery,
    scopes: &[String],
) -> anyhow::Result<SecretString> {
    let authorization_endpoint = discovery
        .authorization_endpoint
        .as_deref()
        .context("the identity provider offers neither the device grant nor an authorization endpoint")?;
    let mut url = endpoint("authorization endpoint", authorization_endpoint)?;
    let token_endpoint = endpoint("token endpoint", &discovery.token_endpoint)?;
    // RFC 8252 §7.3: the loopback IP literal, any free port, chosen now.
    let listener =
        tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("failed to listen on a loopback port")?;
    let port = listener.local_addr().context("the loopback listener has no address")?.port();
    let redirect = format!("http://127.0.0.1:{port}/callback");

    let verifier = random_token()?;
    let state = random_token()?;
    let nonce = random_token()?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &sign_in.client_id)
        .append_pair("redirect_uri", &redirect)
        .append_pair("scope", &scopes.join(" "))
        .append_pair("state", state.expose_secret())
        .append_pair("nonce", nonce.expose_secret())
        .append_pair("code_challenge", &pkce_challenge(&verifier))
        .append_pair("code_challenge_method", "S256");

    eprintln!("To sign in, open this page in a browser on this machine:\n\n    {url}\n");
    eprintln!("Waiting for the browser to come back to {redirect} …");
    let callback = tokio::time::timeout(BROWSER_WAIT, wait_for_redirect(listener))
        .await
        .map_err(|_| anyhow::anyhow!("no browser came back within {} minutes", BROWSER_WAIT.as_secs() / 60))??;
    let code = code_of(&callback, &state, discovery)?;

    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", code.expose_secret()),
        ("redirect_uri", &redirect),
        ("client_id", &sign_in.client_id),
        ("code_verifier", verifier.expose_secret()),
    ]);
    let (success, answer) = token_request(http, &token_endpoint, body).await?;
    if !success {
        let error = answer.error.as_deref().unwrap_or("request failed");
        bail!("signing in: the identity provider answered {}", describe(error, answer.error_description.as_deref()));
    }
    let id_token = answer.id_token.context(NO_ID_TOKEN)?;
    check_id_token(&id_token, &discovery.issuer, &sign_in.client_id, Some(&nonce))?;
    Ok(id_token)
}

/// Serves the loopback listener until the one redirect to `/callback`
/// arrives; answers it with a short page and returns its URL once that page
/// is sent. Other paths (a browser's favicon request) get a 404 and are
/// otherwise ignored.
async fn wait_for_redirect(listener: tokio::net::TcpListener) -> anyhow::Result<url::Url> {
    use std::sync::{Arc, Mutex};

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper::{Request, Response, StatusCode};

    let (tx, mut rx) = tokio::sync::mpsc::channel::<url::Url>(1);
    loop {
        tokio::select! {
            got = rx.recv() => return got.context("the loopback listener stopped"),
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("the loopback listener failed")?;
                let tx = tx.clone();
                let arrived: Arc<Mutex<Option<url::Url>>> = Arc::default();
                let slot = arrived.clone();
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let target = format!("http://127.0.0.1{}", request.uri());
                    let parsed = url::Url::parse(&target).ok().filter(|u| u.path() == "/callback");
                    let (status, page) = match parsed {
                        Some(url) => {
                            if let Ok(mut slot) = slot.lock() {
                                *slot = Some(url);
                            }
                            (StatusCode::OK, CALLBACK_PAGE)
                        }
                        None => (StatusCode::NOT_FOUND, "not found\n"),
                    };
                    let mut response = Response::new(Full::new(Bytes::from_static(page.as_bytes())));
                    *response.status_mut() = status;
                    let headers = response.headers_mut();
                    headers.insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                    headers.insert(
                        hyper::header::CONTENT_SECURITY_POLICY,
                        hyper::header::HeaderValue::from_static("default-src 'none'"),
                    );
                    std::future::ready(Ok::<_, Infallible>(response))
                });
                // One request per connection, so the page has been sent when
                // the connection ends and the redirect is handed over.
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .keep_alive(false)
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(io, service)
                        .await;
                    let url = arrived.lock().ok().and_then(|mut slot| slot.take());
                    if let Some(url) = url {
                        let _ = tx.try_send(url);
                    }
                });
            }
        }
    }
}

/// Static on purpose: nothing from the redirect's query is echoed back.
const CALLBACK_PAGE: &str = "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>halflife</title></head>\
<body><p>halflife has the answer from your identity provider. You can close this window and return to the \
terminal.</p></body></html>\n";

/// The checks a client owes an ID token it got straight from the token
/// endpoint over TLS (OpenID Connect Core §3.1.3.7: issuer, audience, and the
/// nonce it sent); its signature is the server's to verify, which it does
/// before it issues a session.
fn check_id_token(
    id_token: &SecretString,
    issuer: &str,
    client_id: &str,
    nonce: Option<&SecretString>,
) -> anyhow::Result<()> {
    let payload = id_token.expose_secret().split('.').nth(1).context("the ID token is not a JWT")?;
    let claims: Value = crate::crypto::b64url_decode(payload)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .context("the ID token's claims cannot be read")?;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        bail!("the ID token was not issued by {issuer}");
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == client_id,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    };
    if !audience_ok {
        bail!("the ID token is not meant for the client {client_id}");
    }
    if let Some(nonce) = nonce
        && claims.get("nonce").and_then(Value::as_str) != Some(nonce.expose_secret())
    {
        bail!("the ID token does not carry this sign-in's nonce; start again with halflife login");
    }
    Ok(())
}

/// The server's answer to the ID-token exchange.
#[derive(Debug, Deserialize)]
struct SessionGrant {
    access_token: SecretString,
    issued_token_type: String,
    session: SessionInfo,
}

#[derive(Debug, Deserialize)]
struct SessionInfo {
    id: String,
    issuer: String,
    subject: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

/// RFC 8693 at the server: the person's ID token for a session token.
async fn exchange(http: &reqwest::Client, base: &str, id_token: &SecretString) -> anyhow::Result<Session> {
    let body = form(&[
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", id_token.expose_secret()),
        ("subject_token_type", ID_TOKEN_TYPE),
        ("requested_token_type", SESSION_TOKEN_TYPE),
    ]);
    let response =
        post_form(http, &format!("{base}/oauth2/token"), body).await.with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let body = read_bounded(response, "signing in at the server").await?;
    if !status.is_success() {
        return Err(refusal("the server refused the sign-in", status, &body));
    }
    let grant: SessionGrant = serde_json::from_slice(&body).map_err(|e| {
        anyhow::anyhow!("the server's session answer is malformed (line {}, column {})", e.line(), e.column())
    })?;
    if grant.issued_token_type != SESSION_TOKEN_TYPE {
        bail!("the server issued a {} instead of a session", printable(&grant.issued_token_type));
    }
    let info = grant.session;
    Ok(Session {
        server: base.to_owned(),
        token: grant.access_token,
        id: info.id,
        expires_at: info.expires_at,
        person: Person { issuer: info.issuer, subject: info.subject, email: info.email, roles: info.roles },
    })
}

/// `halflife logout`: revoke the stored session at its server, then delete
/// it. A session the server no longer knows (expired, revoked) is deleted
/// all the same; one the server could not be asked about is kept, so the
/// revocation can be retried.
pub async fn logout() -> anyhow::Result<()> {
    let Some(stored) = session::load()? else {
        println!("Not signed in (no session at {}).", session::path()?.display());
        return Ok(());
    };
    if stored.expires_at <= SystemClock.now() {
        session::delete()?;
        println!("Your session had already expired at {}; removed it.", stored.expiry());
        return Ok(());
    }
    let http = http_client()?;
    let url = format!("{}/v1/sessions/current/revoke", stored.server);
    let response = http.post(&url).bearer_auth(stored.token.expose_secret()).send().await.with_context(|| {
        format!("cannot reach {} to revoke the session; it is kept so you can retry", stored.server)
    })?;
    let status = response.status();
    if status.is_success() {
        session::delete()?;
        println!("Signed out of {}: session {} revoked.", stored.server, stored.id);
        return Ok(());
    }
    if matches!(status, reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::NOT_FOUND) {
        session::delete()?;
        println!(
            "Signed out: {} no longer knew session {} (already expired or revoked); removed it.",
            stored.server, stored.id
        );
        return Ok(());
    }
    let error = json_answer::<serde::de::IgnoredAny>(response, "revoking the session").await.err();
    let why = error.map_or_else(|| status.to_string(), |e| e.to_string());
    bail!("{why}; the session is kept so you can retry halflife logout")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: serde_json::Value) -> TokenAnswer {
        serde_json::from_value(json).unwrap()
    }

    fn discovery(iss_always: bool) -> Discovery {
        Discovery {
            issuer: "https://idp.example".into(),
            authorization_endpoint: Some("https://idp.example/auth".into()),
            token_endpoint: "https://idp.example/token".into(),
            device_authorization_endpoint: None,
            authorization_response_iss_parameter_supported: iss_always,
        }
    }

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        let verifier = SecretString::from("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(pkce_challenge(&verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn random_tokens_are_43_base64url_characters_and_differ() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.expose_secret().len(), 43);
        assert!(a.expose_secret().bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn device_polls_follow_rfc_8628() {
        let pending = answer(serde_json::json!({"error": "authorization_pending"}));
        assert!(matches!(device_poll(false, pending), DevicePoll::Pending));
        let slow = answer(serde_json::json!({"error": "slow_down"}));
        assert!(matches!(device_poll(false, slow), DevicePoll::SlowDown));
        let denied = answer(serde_json::json!({"error": "access_denied", "error_description": "no\u{1b}[31m"}));
        let DevicePoll::Refused(why) = device_poll(false, denied) else { panic!("not refused") };
        assert!(why.contains("access was denied") && why.contains("access_denied: no[31m"), "{why}");
        let expired = answer(serde_json::json!({"error": "expired_token"}));
        let DevicePoll::Refused(why) = device_poll(false, expired) else { panic!("not refused") };
        assert!(why.contains("expired"), "{why}");
        let other = answer(serde_json::json!({"error": "invalid_client"}));
        assert!(matches!(device_poll(false, other), DevicePoll::Refused(w) if w.contains("invalid_client")));
        let done = answer(serde_json::json!({"id_token": "a.b.c", "access_token": "x"}));
        assert!(matches!(device_poll(true, done), DevicePoll::Done(t) if t.expose_secret() == "a.b.c"));
        let bare = answer(serde_json::json!({"access_token": "x"}));
        assert!(matches!(device_poll(true, bare), DevicePoll::Refused(w) if w.contains("without an ID token")));
    }

    #[test]
    fn the_poll_interval_defaults_to_five_seconds_and_never_spins() {
        assert_eq!(poll_interval(None), Duration::from_secs(5));
        assert_eq!(poll_interval(Some(0)), Duration::from_secs(1));
        assert_eq!(poll_interval(Some(7)), Duration::from_secs(7));
    }

    #[test]
    fn the_redirect_is_checked_for_state_issuer_and_error() {
        let state = SecretString::from("s1");
        let at = |q: &str| url::Url::parse(&format!("http://127.0.0.1:1/callback?{q}")).unwrap();
        let code =
            |q: &str, always: bool| code_of(&at(q), &state, &discovery(always)).map(|c| c.expose_secret().to_owned());
        assert_eq!(code("code=c1&state=s1", false).unwrap(), "c1");
        assert_eq!(code("code=c1&state=s1&iss=https%3A%2F%2Fidp.example", true).unwrap(), "c1");
        let err = |q: &str, always: bool| code(q, always).unwrap_err().to_string();
        assert!(err("code=c1&state=s2", false).contains("different sign-in"));
        assert!(err("code=c1", false).contains("different sign-in"));
        assert!(
            err("code=c1&state=s1&iss=https%3A%2F%2Fevil.example", false).contains("came from https://evil.example")
        );
        assert!(err("code=c1&state=s1", true).contains("does not name its issuer"));
        assert!(err("error=access_denied&state=s1", false).contains("answered access_denied"));
        assert!(err("state=s1", false).contains("without an authorization code"));
    }

    #[test]
    fn endpoints_must_be_https_unless_on_loopback() {
        assert!(endpoint("token endpoint", "https://idp.example/token").is_ok());
        assert!(endpoint("token endpoint", "http://127.0.0.1:8080/token").is_ok());
        assert!(endpoint("token endpoint", "http://idp.example/token").is_err());
        assert!(endpoint("token endpoint", "ftp://idp.example/token").is_err());
    }

    #[test]
    fn provider_text_is_made_printable() {
        assert_eq!(printable("a\u{1b}]0;x\u{7}b\nc"), "a]0;xbc");
        assert_eq!(printable(&"x".repeat(400)).chars().count(), 301);
    }
}
