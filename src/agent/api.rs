//! The local API, on a Unix socket (mode 0600 unless configured otherwise)
//! and optionally on a loopback TCP port:
//!
//! | Route | |
//! |---|---|
//! | `GET /v1/credentials/{name}` | 200 the credential as JSON; 410 once removed, with the broker's reason; 503 while not yet obtained or waiting for approval; 404 for an unknown name |
//! | `POST /v1/credentials/{name}/proof` | `{"htm", "htu"}` → `{"proof"}`: a fresh DPoP proof with `ath`, for a DPoP-bound credential |
//! | `GET /healthz` | 200 when every credential is held, 503 otherwise; per-credential states |
//! | `GET /metrics` | OpenMetrics text |
//!
//! Served with hyper directly: four routes do not need a router, and the
//! agent stays small (see the agent's figures in docs/performance.md).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::config::ApiSettings;
use super::state::{Condition, Slot};
use super::{Agent, until_stopped};
use crate::clock::{Clock, SystemClock};

/// Largest request body (a proof request is two short strings).
const MAX_BODY_BYTES: usize = 8 * 1024;
/// Longest `htu` a proof may name.
const MAX_HTU_BYTES: usize = 2048;
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 512;
/// A client that does not finish its request headers in this time is cut off.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound listeners, not yet serving.
pub struct Listeners {
    unix: Option<(UnixListener, PathBuf)>,
    tcp: Option<TcpListener>,
}

impl Listeners {
    /// The Unix socket's path, to remove at shutdown.
    pub fn socket_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, path)| path.as_path())
    }
}

/// Binds the configured listeners. The socket is created under a
/// temporary name, given its mode (and group), then renamed into place,
/// so no one can connect to it before its mode is set. A socket another
/// agent still answers on is not taken over.
pub async fn bind(settings: &ApiSettings) -> anyhow::Result<Listeners> {
    let unix = match &settings.socket {
        None => None,
        Some(path) => {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    bail!(
                        "agent.socket: {} exists and is not a socket; remove it or choose another path",
                        path.display()
                    );
                }
                if tokio::net::UnixStream::connect(path).await.is_ok() {
                    bail!("agent.socket: another process is serving on {}", path.display());
                }
            }
            let name = path.file_name().context("agent.socket names no file")?;
            let random = crate::crypto::random_bytes::<6>().map_err(|_| anyhow::anyhow!("no randomness"))?;
            let mut tmp = std::ffi::OsString::from(".");
            tmp.push(name);
            tmp.push(format!(".{}.tmp", crate::crypto::hex(&random)));
            let tmp = path.with_file_name(tmp);
            let listener =
                UnixListener::bind(&tmp).with_context(|| format!("agent.socket: cannot bind {}", tmp.display()))?;
            let placed = (|| {
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(settings.socket_mode))?;
                if let Some(gid) = settings.socket_group {
                    std::os::unix::fs::chown(&tmp, None, Some(gid))?;
                }
                std::fs::rename(&tmp, path)
            })();
            if let Err(e) = placed {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("agent.socket: cannot place {}", path.display()));
            }
            Some((listener, path.clone()))
        }
    };
    let tcp = match settings.listen {
        None => None,
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("agent.listen: cannot bind {addr}"))?),
    };
    Ok(Listeners { unix, tcp })
}

impl Listeners {
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Serves until `stop` turns true.
pub async fn serve(agent: Arc<Agent>, listeners: Listeners, stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = Vec::new();
    if let Some((listener, _)) = listeners.unix {
        let (agent, permits, stop) = (Arc::clone(&agent), Arc::clone(&permits), stop.clone());
        tasks.push(tokio::spawn(async move {
            accept_loop(agent, permits, stop, || async { listener.accept().await.map(|(s, _)| s) }).await;
        }));
    }
    if let Some(listener) = listeners.tcp {
        let (agent, permits, stop) = (Arc::clone(&agent), Arc::clone(&permits), stop.clone());
        tasks.push(tokio::spawn(async move {
            accept_loop(agent, permits, stop, || async {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(stream)
            })
            .await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn accept_loop<S, F, Fut>(agent: Arc<Agent>, permits: Arc<Semaphore>, mut stop: watch::Receiver<bool>, accept: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    loop {
        let permit = tokio::select! {
            () = until_stopped(&mut stop) => return,
            permit = Arc::clone(&permits).acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
        };
        let stream = tokio::select! {
            () = until_stopped(&mut stop) => return,
            accepted = accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "local API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let agent = Arc::clone(&agent);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let agent = Arc::clone(&agent);
                async move { Ok::<_, Infallible>(handle(&agent, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json_reply(status: StatusCode, body: &serde_json::Value) -> Reply {
    reply(status, "application/json", body.to_string())
}

fn error(status: StatusCode, code: &str, description: &str) -> Reply {
    json_reply(status, &json!({"error": code, "error_description": description}))
}

async fn handle(agent: &Agent, request: Request<Incoming>) -> Reply {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["v1", "credentials", name]) => match served(agent, name) {
            Some(slot) => credential(slot),
            None => unknown(name),
        },
        (&Method::POST, ["v1", "credentials", name, "proof"]) => match served(agent, name) {
            Some(slot) => proof(slot, request).await,
            None => unknown(name),
        },
        (&Method::GET, ["healthz"]) => health(agent),
        (&Method::GET, ["metrics"]) => match agent.metrics.encode(&agent.slots, Instant::now()) {
            Ok(text) => reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text),
            Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the metrics could not be encoded"),
        },
        (_, ["v1", "credentials", _] | ["v1", "credentials", _, "proof"] | ["healthz"] | ["metrics"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "method not allowed on this route")
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such route; see GET /v1/credentials/{name}"),
    }
}

/// The slot named `name`, if it is served on this API.
fn served<'a>(agent: &'a Agent, name: &str) -> Option<&'a Arc<Slot>> {
    agent.slots.iter().find(|s| s.spec.name == name && s.spec.api)
}

fn unknown(name: &str) -> Reply {
    let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    error(StatusCode::NOT_FOUND, "not_found", &format!("no credential named {name:?} is served here"))
}

/// The answer for a credential that is not held: 410 with the reason it
/// was removed, or 503 while it is on its way.
fn not_held(slot: &Slot, condition: &Condition) -> Reply {
    match condition {
        Condition::Removed { code, description, at } => json_reply(
            StatusCode::GONE,
            &json!({"error": code, "error_description": description, "state": "removed",
                    "removed_at": super::state::timestamp(*at), "name": slot.spec.name}),
        ),
        Condition::Pending { interval, description } => {
            let mut response = json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "authorization_pending", "error_description": description,
                        "state": condition.name(), "interval": interval.as_secs(), "name": slot.spec.name}),
            );
            if let Ok(value) = HeaderValue::from_str(&interval.as_secs().max(1).to_string()) {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            response
        }
        Condition::Retrying { why } => {
            let mut response = json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "temporarily_unavailable", "error_description": format!("not obtained yet: {why}"),
                        "state": condition.name(), "name": slot.spec.name}),
            );
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        Condition::Starting | Condition::Active => {
            let mut response = json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "temporarily_unavailable", "error_description": "not obtained yet",
                        "state": "starting", "name": slot.spec.name}),
            );
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

fn credential(slot: &Slot) -> Reply {
    let snapshot = slot.snapshot();
    let Some(held) = &snapshot.held else { return not_held(slot, &snapshot.condition) };
    match serde_json::to_vec(&held.view(&slot.spec.name, &snapshot.condition, Instant::now())) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the credential could not be encoded"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofRequest {
    htm: String,
    htu: String,
}

async fn proof(slot: &Slot, request: Request<Incoming>) -> Reply {
    let Some(key) = &slot.dpop else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("credential {:?} is not DPoP-bound (binding = \"dpop\"); it needs no proof", slot.spec.name),
        );
    };
    let json_body = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json")));
    if !json_body {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request", "Content-Type must be application/json");
    }
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                &format!("the body is over {MAX_BODY_BYTES} bytes, or broke off"),
            );
        }
    };
    let asked: ProofRequest = match serde_json::from_slice(&body) {
        Ok(asked) => asked,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, "invalid_request", &format!("expected {{\"htm\", \"htu\"}}: {e}"));
        }
    };
    if asked.htm.is_empty() || asked.htm.len() > 16 || !asked.htm.bytes().all(|b| b.is_ascii_uppercase()) {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "htm must be an HTTP method in upper case, e.g. GET");
    }
    let htu = match url::Url::parse(&asked.htu) {
        Ok(mut url)
            if asked.htu.len() <= MAX_HTU_BYTES && matches!(url.scheme(), "http" | "https") && url.host().is_some() =>
        {
            // RFC 9449 §4.2: the URI without query and fragment.
            url.set_query(None);
            url.set_fragment(None);
            url
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "htu must be the absolute http(s) URL of the request the proof is for",
            );
        }
    };
    let snapshot = slot.snapshot();
    let Some(held) = &snapshot.held else { return not_held(slot, &snapshot.condition) };
    let token = secrecy::ExposeSecret::expose_secret(&held.token);
    match key.proof(&asked.htm, htu.as_str(), Some(token), SystemClock.now().unix_timestamp()) {
        Ok(proof) => json_reply(StatusCode::OK, &json!({"proof": proof, "token_type": "DPoP"})),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the proof could not be signed"),
    }
}

fn health(agent: &Agent) -> Reply {
    let now = Instant::now();
    let mut credentials = serde_json::Map::new();
    let mut all_held = true;
    for slot in &agent.slots {
        let snapshot = slot.snapshot();
        all_held &= snapshot.held.is_some();
        let mut entry = json!({"state": if snapshot.held.is_some() && snapshot.condition == Condition::Active {
            "active"
        } else {
            snapshot.condition.name()
        }});
        if let Some(held) = &snapshot.held {
            entry["expires_in"] = json!(held.expires.saturating_duration_since(now).as_secs());
        }
        if let Condition::Removed { code, .. } = &snapshot.condition {
            entry["reason"] = json!(code);
        }
        credentials.insert(slot.spec.name.clone(), entry);
    }
    let status = if all_held { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_reply(status, &json!({"status": if all_held { "ok" } else { "degraded" }, "credentials": credentials}))
}
