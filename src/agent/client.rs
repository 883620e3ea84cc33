//! The broker, through its public HTTP interface only: the RFC 8693
//! exchange (or `client_credentials` over the mTLS listener) and the
//! holder's status query, `POST /oauth2/token-status`.
//!
//! Every answer is sorted into what the agent does next: use the
//! credential; drop what it holds because the broker refused
//! ([`Failure::Refused`]); wait for a person's approval
//! ([`Failure::Pending`]); or keep what it holds and try again later
//! ([`Failure::Unavailable`]).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::attestation::Presentation;
use super::config::{BrokerSettings, CredentialSpec, Kind, X509Files};
use super::dpop::DpopKey;
use crate::clock::{Clock, SystemClock};

/// Largest answer read from the broker.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest error description kept (it is logged and shown on the local API).
const MAX_DESCRIPTION: usize = 512;

/// A credential the broker issued.
pub struct Issued {
    pub token: SecretString,
    /// `Bearer`, or `DPoP` for a token bound to the agent's key.
    pub token_type: String,
    pub issued_token_type: String,
    pub expires_in: Duration,
    pub scope: String,
    /// A database login's coordinates (its password is `token`).
    pub login: Option<Login>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Login {
    pub username: String,
    pub host: String,
    pub port: u16,
    pub database: String,
}

/// Why no credential (or no status) came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The broker said no: an OAuth error such as `access_denied` (the
    /// system is suspended, its pilot ended, an owner lapsed),
    /// `invalid_grant` or `unauthorized_client`.
    Refused { code: String, description: String },
    /// `authorization_pending` (a person must approve first): ask again
    /// after `interval`, or the last interval plus five seconds on
    /// `slow_down` (RFC 8628 §3.5).
    Pending { interval: Option<Duration>, slow_down: bool, description: String },
    /// No usable answer (unreachable, 5xx, rate limited, malformed): try
    /// again later, no sooner than `retry_after` when the broker said.
    Unavailable { why: String, retry_after: Option<Duration> },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused { code, description } => write!(f, "refused ({code}): {description}"),
            Self::Pending { description, .. } => write!(f, "waiting for approval: {description}"),
            Self::Unavailable { why, .. } => f.write_str(why),
        }
    }
}

/// The files of the client certificate, as last loaded: their modification
/// times and sizes.
type Stamp = [(Option<SystemTime>, u64); 2];

struct Current {
    client: Option<reqwest::Client>,
    stamp: Option<Stamp>,
    /// Counts the client certificates loaded: a token bound to an earlier
    /// one is renewed at once.
    generation: u64,
}

pub struct BrokerClient {
    settings: BrokerSettings,
    roots: Option<Arc<rustls::RootCertStore>>,
    current: Mutex<Current>,
}

impl BrokerClient {
    pub fn new(settings: BrokerSettings) -> Result<Self, String> {
        let roots = match &settings.ca_file {
            None => None,
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("agent.ca_file {}: {e}", path.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("agent.ca_file {}: {e}", path.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("agent.ca_file {}: no usable CA certificate", path.display()));
                }
                Some(Arc::new(roots))
            }
        };
        let client =
            Self { settings, roots, current: Mutex::new(Current { client: None, stamp: None, generation: 0 }) };
        if client.settings.identity.is_none() {
            let built = client.build(None)?;
            client.current.lock().unwrap_or_else(PoisonError::into_inner).client = Some(built);
        }
        Ok(client)
    }

    fn tls(
        &self,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match (&self.roots, self.settings.url.scheme()) {
            (Some(roots), _) => builder.with_root_certificates(Arc::clone(roots)),
            (None, "https") => {
                use rustls_platform_verifier::BuilderVerifierExt;
                builder.with_platform_verifier().map_err(|e| e.to_string())?
            }
            // Plain http: no TLS is ever spoken, so no trust store is loaded.
            (None, _) => builder.with_root_certificates(rustls::RootCertStore::empty()),
        };
        match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string()),
            None => Ok(builder.with_no_client_auth()),
        }
    }

    fn build(
        &self,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .tls_backend_preconfigured(self.tls(identity)?)
            .timeout(self.settings.request_timeout)
            .connect_timeout(self.settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // A connection per request: the broker closes idle connections
            // after a few seconds, and a request sent as it does would fail
            // for nothing; at a few requests a minute a handshake is cheap.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("halflife-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
    }

    /// The HTTP client, rebuilt when the client certificate's files have
    /// changed (an X.509-SVID is rotated in place). A file that cannot be
    /// loaded keeps the last good certificate.
    fn client(&self) -> Result<reqwest::Client, String> {
        let Some(files) = &self.settings.identity else {
            let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            return current.client.clone().ok_or_else(|| "no HTTP client".to_owned());
        };
        let stamp = stamp(files);
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.client.is_some() && current.stamp == Some(stamp) {
            return current.client.clone().ok_or_else(|| "no HTTP client".to_owned());
        }
        match load_identity(files).and_then(|identity| self.build(Some(identity))) {
            Ok(client) => {
                if current.client.is_some() {
                    tracing::info!(cert_file = %files.cert_file.display(), "the client certificate changed; using the new one");
                }
                current.client = Some(client);
                current.stamp = Some(stamp);
                current.generation += 1;
            }
            Err(e) => match &current.client {
                Some(_) => {
                    tracing::warn!(error = %e, "cannot load the changed client certificate; keeping the last good one")
                }
                None => return Err(format!("cannot load the client certificate: {e}")),
            },
        }
        current.client.clone().ok_or_else(|| "no HTTP client".to_owned())
    }

    /// Which client certificate is in use (it is re-read first if its
    /// files changed): tokens obtained under an earlier one are bound to a
    /// certificate the workload no longer presents. 0 without one.
    pub fn identity(&self) -> u64 {
        if self.settings.identity.is_some() {
            let _ = self.client();
        }
        self.current.lock().unwrap_or_else(PoisonError::into_inner).generation
    }

    /// Asks for `spec`, presenting `presentation` and, for a DPoP-bound
    /// credential, a proof of `dpop`.
    pub async fn exchange(
        &self,
        spec: &CredentialSpec,
        presentation: &Presentation,
        dpop: Option<&DpopKey>,
    ) -> Result<Issued, Failure> {
        let client = self.client().map_err(|why| Failure::Unavailable { why, retry_after: None })?;
        let body = exchange_form(spec, presentation);
        let mut request = client
            .post(self.settings.token_url())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.as_str().to_owned());
        if let Some(key) = dpop {
            request = request.header("DPoP", proof(key, &self.settings.token_htu(), None)?);
        }
        let (status, retry_after, answer) = send(request).await?;
        if status != 200 {
            return Err(classify(status, retry_after, &answer));
        }
        parse_issued(&answer, spec.kind)
    }

    /// Whether the broker still holds `token` active. Any failure (the
    /// broker unreachable, or an answer that is not a status) is an error
    /// for the caller to retry, never a verdict.
    pub async fn status(&self, token: &SecretString, dpop: Option<&DpopKey>) -> Result<bool, Failure> {
        let client = self.client().map_err(|why| Failure::Unavailable { why, retry_after: None })?;
        let mut body = Zeroizing::new(String::new());
        form_urlencoded::Serializer::new(&mut *body).append_pair("token", token.expose_secret()).finish();
        let mut request = client
            .post(self.settings.status_url())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.as_str().to_owned());
        if let Some(key) = dpop {
            request = request.header("DPoP", proof(key, &self.settings.status_htu(), Some(token.expose_secret()))?);
        }
        let (status, retry_after, answer) = send(request).await?;
        if status != 200 {
            return Err(classify(status, retry_after, &answer));
        }
        #[derive(Deserialize)]
        struct StatusAnswer {
            active: bool,
        }
        serde_json::from_slice::<StatusAnswer>(&answer).map(|a| a.active).map_err(|_| Failure::Unavailable {
            why: "the broker's status answer is malformed".into(),
            retry_after: None,
        })
    }
}

/// The exchange's form body (zeroized when dropped: it may hold the
/// attestation).
fn exchange_form(spec: &CredentialSpec, presentation: &Presentation) -> Zeroizing<String> {
    let mut body = Zeroizing::new(String::new());
    let mut form = form_urlencoded::Serializer::new(&mut *body);
    match presentation {
        Presentation::SubjectToken(token) => {
            form.append_pair("grant_type", crate::http::oauth::GRANT_TOKEN_EXCHANGE);
            form.append_pair("subject_token_type", crate::http::oauth::TOKEN_TYPE_JWT);
            form.append_pair("subject_token", token.expose_secret());
        }
        Presentation::ClientCertificate => {
            form.append_pair("grant_type", crate::http::oauth::GRANT_CLIENT_CREDENTIALS);
        }
    }
    match spec.kind {
        Kind::Jwt => {}
        Kind::Secret => {
            form.append_pair("requested_token_type", crate::http::oauth::TOKEN_TYPE_SECRET);
        }
        Kind::PostgresLogin => {
            form.append_pair("requested_token_type", crate::http::oauth::TOKEN_TYPE_POSTGRES_LOGIN);
        }
    }
    for (name, value) in [("audience", &spec.audience), ("scope", &spec.scope), ("resource", &spec.resource)] {
        if let Some(value) = value {
            form.append_pair(name, value);
        }
    }
    if let Some(ttl) = spec.ttl {
        form.append_pair("requested_ttl", &ttl.as_secs().to_string());
    }
    form.finish();
    body
}

fn stamp(files: &X509Files) -> Stamp {
    let of = |path: &Path| std::fs::metadata(path).map_or((None, 0), |m| (m.modified().ok(), m.len()));
    [of(&files.cert_file), of(&files.key_file)]
}

fn load_identity(files: &X509Files) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", files.cert_file.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| format!("{}: {e}", files.key_file.display()))?;
    Ok((chain, key))
}

fn proof(key: &DpopKey, htu: &str, access_token: Option<&str>) -> Result<String, Failure> {
    key.proof("POST", htu, access_token, SystemClock.now().unix_timestamp())
        .map_err(|e| Failure::Unavailable { why: format!("cannot sign a DPoP proof: {e}"), retry_after: None })
}

/// Sends a request; the status, the `Retry-After` seconds and the body
/// (at most [`MAX_ANSWER_BYTES`], zeroized when dropped: it may hold a
/// credential).
async fn send(request: reqwest::RequestBuilder) -> Result<(u16, Option<Duration>, Zeroizing<Vec<u8>>), Failure> {
    let unavailable = |why: String| Failure::Unavailable { why, retry_after: None };
    let mut response =
        request.send().await.map_err(|e| unavailable(format!("the broker is unreachable: {}", describe(&e))))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    let mut body = Zeroizing::new(Vec::new());
    while let Some(chunk) =
        response.chunk().await.map_err(|e| unavailable(format!("the broker's answer broke off: {}", describe(&e))))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(unavailable(format!("the broker's answer is larger than {MAX_ANSWER_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, retry_after, body))
}

/// A reqwest error with its causes (connection refused, timed out, …).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sorts a non-200 answer.
fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Failure {
    #[derive(Deserialize)]
    struct ErrorAnswer {
        error: String,
        #[serde(default)]
        error_description: String,
        interval: Option<u64>,
        retry_after: Option<u64>,
    }
    let answer = serde_json::from_slice::<ErrorAnswer>(body).ok();
    let description = answer.as_ref().map(|a| clean(&a.error_description)).unwrap_or_default();
    let code = answer.as_ref().map(|a| clean(&a.error));
    match code.as_deref() {
        Some("authorization_pending") => Failure::Pending {
            interval: answer.and_then(|a| a.interval).map(|s| Duration::from_secs(s.clamp(1, 3600))),
            slow_down: false,
            description,
        },
        Some("slow_down") => Failure::Pending {
            interval: answer.and_then(|a| a.interval).map(|s| Duration::from_secs(s.clamp(1, 3600))),
            slow_down: true,
            description,
        },
        Some("rate_limited") | Some("temporarily_unavailable") | Some("server_error") => Failure::Unavailable {
            why: format!("the broker answered {status} {}: {description}", code.unwrap_or_default()),
            retry_after: retry_after.or(answer.and_then(|a| a.retry_after).map(|s| Duration::from_secs(s.min(3600)))),
        },
        _ if status == 429 || status >= 500 => {
            Failure::Unavailable { why: format!("the broker answered {status}"), retry_after }
        }
        Some(code) if !code.is_empty() => Failure::Refused { code: code.to_owned(), description },
        _ => Failure::Refused {
            code: format!("http_{status}"),
            description: format!("the broker answered {status} without an OAuth error"),
        },
    }
}

/// Printable text of bounded length.
fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_DESCRIPTION).collect()
}

fn parse_issued(body: &[u8], kind: Kind) -> Result<Issued, Failure> {
    #[derive(Deserialize)]
    struct TokenAnswer {
        access_token: SecretString,
        token_type: String,
        #[serde(default)]
        issued_token_type: String,
        expires_in: i64,
        #[serde(default)]
        scope: String,
        username: Option<String>,
        host: Option<String>,
        port: Option<u16>,
        database: Option<String>,
    }
    let malformed = |what: &str| Failure::Unavailable {
        why: format!("the broker's answer is malformed: {what}"),
        retry_after: None,
    };
    let answer: TokenAnswer = serde_json::from_slice(body).map_err(|_| malformed("not a token response"))?;
    if answer.expires_in <= 0 {
        return Err(malformed("expires_in is not positive"));
    }
    let login = match (kind, answer.username, answer.host, answer.port, answer.database) {
        (Kind::PostgresLogin, Some(username), Some(host), Some(port), Some(database)) => {
            Some(Login { username, host, port, database })
        }
        (Kind::PostgresLogin, ..) => return Err(malformed("a database login without its coordinates")),
        _ => None,
    };
    Ok(Issued {
        token: answer.access_token,
        token_type: clean(&answer.token_type),
        issued_token_type: clean(&answer.issued_token_type),
        expires_in: Duration::from_secs(u64::try_from(answer.expires_in).unwrap_or(0)),
        scope: clean(&answer.scope),
        login,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_sorted_into_what_to_do_next() {
        let refused = classify(400, None, br#"{"error":"access_denied","error_description":"system x is suspended"}"#);
        assert_eq!(
            refused,
            Failure::Refused { code: "access_denied".into(), description: "system x is suspended".into() }
        );
        let pending =
            classify(400, None, br#"{"error":"authorization_pending","error_description":"ask dana","interval":7}"#);
        assert_eq!(
            pending,
            Failure::Pending {
                interval: Some(Duration::from_secs(7)),
                slow_down: false,
                description: "ask dana".into()
            }
        );
        assert!(matches!(classify(400, None, br#"{"error":"slow_down"}"#), Failure::Pending { slow_down: true, .. }));
        let limited = classify(429, Some(Duration::from_secs(3)), br#"{"error":"rate_limited","retry_after":3}"#);
        assert!(matches!(limited, Failure::Unavailable { retry_after: Some(d), .. } if d == Duration::from_secs(3)));
        assert!(matches!(classify(503, None, b"<html>"), Failure::Unavailable { .. }));
        assert!(matches!(classify(502, None, b""), Failure::Unavailable { .. }));
        assert!(matches!(classify(404, None, b"not json"), Failure::Refused { code, .. } if code == "http_404"));
        let noisy = classify(
            400,
            None,
            format!(r#"{{"error":"invalid_grant","error_description":"a\nb{}"}}"#, "x".repeat(2000)).as_bytes(),
        );
        let Failure::Refused { description, .. } = noisy else { panic!() };
        assert!(!description.contains('\n') && description.len() == MAX_DESCRIPTION);
    }

    #[test]
    fn a_token_answer_needs_a_lifetime_and_a_login_its_coordinates() {
        let jwt =
            parse_issued(br#"{"access_token":"eyJ","token_type":"DPoP","expires_in":60,"scope":"a b"}"#, Kind::Jwt)
                .unwrap();
        assert_eq!(
            (jwt.token_type.as_str(), jwt.expires_in, jwt.scope.as_str()),
            ("DPoP", Duration::from_secs(60), "a b")
        );
        assert!(parse_issued(br#"{"access_token":"eyJ","token_type":"Bearer","expires_in":0}"#, Kind::Jwt).is_err());
        let login = br#"{"access_token":"pw","token_type":"Bearer","expires_in":60,"username":"hlf_x","host":"db","port":5432,"database":"reports"}"#;
        assert_eq!(parse_issued(login, Kind::PostgresLogin).unwrap().login.unwrap().username, "hlf_x");
        assert!(
            parse_issued(br#"{"access_token":"pw","token_type":"Bearer","expires_in":60}"#, Kind::PostgresLogin)
                .is_err()
        );
    }
}
