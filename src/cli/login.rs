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
//! [`super::session`] keeps. The OAuth flows themselves are the `oauth2`
//! crate's; this module only connects them.
//!
//! No token is ever printed: provider and server errors are shown by their
//! `error` and `error_description`.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::body::Bytes;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, CsrfToken, DeviceAuthorizationUrl, ErrorResponse, ExtraTokenFields,
    PkceCodeChallenge, RedirectUrl, RequestTokenError, Scope, StandardDeviceAuthorizationResponse,
    StandardRevocableToken, StandardTokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::client::{Remote, client_tls};
use super::session::{self, Person, Session};
use crate::clock::{Clock, SystemClock};

/// Every request to the provider or the server gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the browser path waits for the provider to send the browser back.
const BROWSER_WAIT: Duration = Duration::from_secs(300);
/// An upper bound on the device grant's wait, whatever `expires_in` says.
const DEVICE_WAIT: Duration = Duration::from_secs(900);

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const SESSION_TOKEN_TYPE: &str = "urn:halflife:token-type:session";

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
}

/// The provider's token response carries the ID token beside the access
/// token (OpenID Connect Core §3.1.3.3).
#[derive(Debug, Deserialize, Serialize)]
struct IdTokenField {
    // Never serialized: the response type must be `Serialize`, the token must
    // not be written anywhere.
    #[serde(skip_serializing)]
    id_token: Option<SecretString>,
}

impl ExtraTokenFields for IdTokenField {}

type IdTokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;
/// The client before its endpoints are set (each setter changes the type).
type OidcClient = oauth2::Client<
    BasicErrorResponse,
    IdTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
>;

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

/// Sends one of `oauth2`'s requests with reqwest.
async fn send(http: &reqwest::Client, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, reqwest::Error> {
    let (parts, body) = request.into_parts();
    let response = http.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body).send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await?.to_vec();
    let mut out = oauth2::HttpResponse::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// A provider's refusal or failure, by its `error` and `error_description`
/// only (a response body that could not be parsed may hold a token).
fn provider_error<RE, T>(what: &str, error: RequestTokenError<RE, T>) -> anyhow::Error
where
    RE: std::error::Error + 'static,
    T: ErrorResponse + std::fmt::Display + 'static,
{
    match error {
        RequestTokenError::ServerResponse(e) => anyhow::anyhow!("{what}: the identity provider answered {e}"),
        RequestTokenError::Request(e) => anyhow::anyhow!("{what}: {e}"),
        RequestTokenError::Parse(e, _) => {
            anyhow::anyhow!("{what}: the identity provider's answer could not be read (at {})", e.path())
        }
        RequestTokenError::Other(e) => anyhow::anyhow!("{what}: {e}"),
    }
}

/// Reads a JSON answer, or fails with the server's `error`/`error_description`.
async fn json_answer(response: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await.with_context(|| format!("{what}: failed to read the answer"))?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let error = value.get("error").and_then(Value::as_str).unwrap_or("request failed");
        let description = value.get("error_description").and_then(Value::as_str);
        let description = description.map(|d| format!(": {d}")).unwrap_or_default();
        bail!("{what}: {error}{description} ({status})");
    }
    if value.is_null() {
        bail!("{what}: the answer is not JSON ({status})");
    }
    Ok(value)
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
    let sign_in: SignIn = serde_json::from_value(json_answer(sign_in, "asking the server how to sign in").await?)
        .context("the server's sign-in description is malformed")?;
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

/// OpenID Connect Discovery: the provider's metadata, which must name the
/// issuer it was asked about (§4.3).
async fn discover(http: &reqwest::Client, issuer: &str) -> anyhow::Result<Discovery> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let response =
        http.get(&url).send().await.with_context(|| format!("cannot reach the identity provider at {url}"))?;
    let value = json_answer(response, "reading the identity provider's discovery document").await?;
    let discovery: Discovery =
        serde_json::from_value(value).context("the identity provider's discovery document is malformed")?;
    if discovery.issuer != issuer {
        bail!("the identity provider at {url} calls itself {}, not {issuer}", discovery.issuer);
    }
    Ok(discovery)
}

/// The device grant: print where to go and the code, then poll.
async fn device_flow(
    http: &reqwest::Client,
    sign_in: &SignIn,
    discovery: &Discovery,
    device_endpoint: &str,
    scopes: &[String],
) -> anyhow::Result<SecretString> {
    let client = OidcClient::new(ClientId::new(sign_in.client_id.clone()))
        .set_device_authorization_url(
            DeviceAuthorizationUrl::new(device_endpoint.to_owned()).context("the device endpoint is not a URL")?,
        )
        .set_token_uri(TokenUrl::new(discovery.token_endpoint.clone()).context("the token endpoint is not a URL")?);
    let http_client = |request: oauth2::HttpRequest| send(http, request);
    let details: StandardDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scopes(scopes.iter().cloned().map(Scope::new))
        .request_async(&http_client)
        .await
        .map_err(|e| provider_error("starting the sign-in", e))?;

    let code = details.user_code().secret();
    let page = details.verification_uri().as_str();
    match details.verification_uri_complete() {
        Some(complete) => {
            eprintln!(
                "To sign in, open this page in a browser and confirm the code {code}:\n\n    {}\n",
                complete.secret()
            );
            eprintln!("(or open {page} and enter the code {code})");
        }
        None => eprintln!("To sign in, open this page in a browser and enter the code {code}:\n\n    {page}\n"),
    }
    let minutes = details.expires_in().as_secs().div_ceil(60);
    eprintln!("Waiting for you to finish signing in (the code expires in {minutes} minutes)…");

    // The crate polls at `interval`, adds 5 s on `slow_down`, keeps polling on
    // `authorization_pending` and stops on any other answer (`access_denied`,
    // `expired_token`) or when `expires_in` has passed.
    let wait = details.expires_in().min(DEVICE_WAIT);
    let token = client
        .exchange_device_access_token(&details)
        .request_async(&http_client, tokio::time::sleep, Some(wait))
        .await
        .map_err(|e| provider_error("signing in", e))?;
    let id_token = id_token_of(token)?;
    check_id_token(&id_token, &discovery.issuer, &sign_in.client_id, None)?;
    Ok(id_token)
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
        .clone()
        .context("the identity provider offers neither the device grant nor an authorization endpoint")?;
    // RFC 8252 §7.3: the loopback IP literal, any free port, chosen now.
    let listener =
        tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("failed to listen on a loopback port")?;
    let port = listener.local_addr().context("the loopback listener has no address")?.port();
    let redirect = format!("http://127.0.0.1:{port}/callback");

    let client = OidcClient::new(ClientId::new(sign_in.client_id.clone()))
        .set_auth_uri(AuthUrl::new(authorization_endpoint).context("the authorization endpoint is not a URL")?)
        .set_token_uri(TokenUrl::new(discovery.token_endpoint.clone()).context("the token endpoint is not a URL")?)
        .set_redirect_uri(RedirectUrl::new(redirect.clone()).context("the loopback redirect is not a URL")?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let nonce = CsrfToken::new_random();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(scopes.iter().cloned().map(Scope::new))
        .add_extra_param("nonce", nonce.secret().clone())
        .set_pkce_challenge(challenge)
        .url();

    eprintln!("To sign in, open this page in a browser on this machine:\n\n    {url}\n");
    eprintln!("Waiting for the browser to come back to {redirect} …");
    let callback = tokio::time::timeout(BROWSER_WAIT, wait_for_redirect(listener))
        .await
        .map_err(|_| anyhow::anyhow!("no browser came back within {} minutes", BROWSER_WAIT.as_secs() / 60))??;

    let param = |name: &str| callback.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    if param("state").as_deref() != Some(state.secret().as_str()) {
        bail!("the browser came back with a different sign-in's state; start again with halflife login");
    }
    if let Some(error) = param("error") {
        let description = param("error_description").map(|d| format!(": {d}")).unwrap_or_default();
        bail!("signing in: the identity provider answered {error}{description}");
    }
    // RFC 9207: when the provider names itself in the response, it must be
    // the one asked.
    if let Some(iss) = param("iss")
        && iss != discovery.issuer
    {
        bail!("the authorization response came from {iss}, not {}", discovery.issuer);
    }
    let code = param("code").context("the browser came back without an authorization code")?;
    let http_client = |request: oauth2::HttpRequest| send(http, request);
    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http_client)
        .await
        .map_err(|e| provider_error("signing in", e))?;
    let id_token = id_token_of(token)?;
    check_id_token(&id_token, &discovery.issuer, &sign_in.client_id, Some(nonce.secret()))?;
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

fn id_token_of(token: IdTokenResponse) -> anyhow::Result<SecretString> {
    token
        .extra_fields()
        .id_token
        .clone()
        .context("the identity provider answered without an ID token (is openid among the scopes?)")
}

/// The checks a client owes an ID token it got straight from the token
/// endpoint over TLS (OpenID Connect Core §3.1.3.7: issuer, audience, and the
/// nonce it sent); its signature is the server's to verify, which it does
/// before it issues a session.
fn check_id_token(
    id_token: &SecretString,
    issuer: &str,
    client_id: &str,
    nonce: Option<&String>,
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
        && claims.get("nonce").and_then(Value::as_str) != Some(nonce.as_str())
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
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", TOKEN_EXCHANGE)
        .append_pair("subject_token", id_token.expose_secret())
        .append_pair("subject_token_type", ID_TOKEN_TYPE)
        .append_pair("requested_token_type", SESSION_TOKEN_TYPE)
        .finish();
    let body = SecretString::from(body);
    let response = http
        .post(format!("{base}/oauth2/token"))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body.expose_secret().to_owned())
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let value = json_answer(response, "the server refused the sign-in").await?;
    let grant: SessionGrant = serde_json::from_value(value).map_err(|e| {
        anyhow::anyhow!("the server's session answer is malformed (line {}, column {})", e.line(), e.column())
    })?;
    if grant.issued_token_type != SESSION_TOKEN_TYPE {
        bail!("the server issued a {} instead of a session", grant.issued_token_type);
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
    let error = json_answer(response, "revoking the session").await.err();
    let why = error.map_or_else(|| status.to_string(), |e| e.to_string());
    bail!("{why}; the session is kept so you can retry halflife logout")
}
