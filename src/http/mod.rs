//! HTTP: routers that only translate, one error type, the middleware stack,
//! and the listener (timeouts, connection limit, TLS).

pub mod admin;
pub mod approvals;
pub mod audit;
pub mod console;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod oauth;
pub mod openapi;
pub mod people;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::attest::jwt::IssuerKeys;
use crate::broker::Broker;
use crate::store::Health;
use error::ApiError;

/// Shared state of every handler. Extractors clone it for every request,
/// so it is one reference count: a copy of the parts themselves (the
/// broker alone holds two dozen counted references and a string) cost
/// about 1.5 % of the broker's CPU at the peak exchange rate.
#[derive(Clone)]
pub struct AppState(Arc<StateParts>);

impl AppState {
    pub fn new(parts: StateParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = StateParts;

    fn deref(&self) -> &StateParts {
        &self.0
    }
}

pub struct StateParts {
    pub broker: Broker,
    pub health: Arc<dyn Health>,
    pub metadata: Arc<Value>,
    pub max_body_bytes: usize,
    /// This listener's token endpoint: what a DPoP proof's `htu` must name.
    pub token_endpoint: Arc<url::Url>,
    pub metrics: Arc<metrics::Metrics>,
    /// The web console's settings, on the listener that serves it.
    pub console: Option<Arc<console::Settings>>,
}

pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

/// The whole HTTP surface with its middleware.
pub fn router(state: AppState, limits: &Limits) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let middleware = ServiceBuilder::new()
        .layer(axum::middleware::map_request(drop_unusable_request_id))
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            // The path only: a query string could carry something secret.
            let route = req.extensions().get::<MatchedPath>().map_or_else(|| req.uri().path(), MatchedPath::as_str);
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
            tracing::info_span!("request", method = %req.method(), route, request_id = id)
        }))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout));

    Router::new()
        .merge(oauth::router())
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/livez", get(livez))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .merge(admin::router())
        .merge(audit::router())
        .merge(if state.console.is_some() { console::router() } else { Router::new() })
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // One layer, outermost first: each `Router::layer` boxes every
        // route once more, and axum clones each box for every request.
        .layer(
            middleware
                .layer(axum::middleware::map_response_with_state(Arc::clone(&state.metrics), count_response))
                .layer(DefaultBodyLimit::max(limits.max_body_bytes))
                .layer(axum::middleware::map_request(one_authorization_header)),
        )
        .with_state(state)
}

/// Counts answers the metrics care about (503s) on their way out.
async fn count_response(State(metrics): State<Arc<metrics::Metrics>>, response: Response) -> Response {
    metrics.count_response(response.status());
    response
}

/// Refuses a request with more than one `Authorization` header (400) on
/// every route, before routing: the OAuth endpoints and the operator API
/// alike, whether or not the route reads the header.
async fn one_authorization_header(req: Request) -> Result<Request, ApiError> {
    extract::authorization(req.headers())?;
    Ok(req)
}

/// Longest client-supplied request id kept.
const MAX_REQUEST_ID: usize = 128;

/// Removes a client's `x-request-id` that is too long or not plain
/// printable ASCII, so a fresh one is generated: the id lands in logs and
/// audit events and must not be a vector for junk.
async fn drop_unusable_request_id(mut req: Request) -> Request {
    let usable = req.headers().get("x-request-id").is_none_or(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| c.is_ascii_graphic())
    });
    if !usable {
        req.headers_mut().remove("x-request-id");
    }
    req
}

/// RFC 8414 authorization server metadata.
/// RFC 8414 metadata. `mtls_base` is the mTLS listener's base URL when one
/// is configured: it is advertised as `mtls_endpoint_aliases` (RFC 8705 §5)
/// together with `tls_client_auth`.
pub fn metadata_document(issuer: &str, signing_algs: &[&str], mtls_base: Option<&str>) -> Value {
    let mut auth_methods = vec!["none"];
    let mut grant_types = vec![oauth::GRANT_TOKEN_EXCHANGE];
    if mtls_base.is_some() {
        auth_methods.push("tls_client_auth");
        grant_types.push(oauth::GRANT_CLIENT_CREDENTIALS);
    }
    let mut document = json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "grant_types_supported": grant_types,
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "subject_token_types_supported": oauth::SUBJECT_TOKEN_TYPES,
        "requested_token_types_supported": oauth::REQUESTED_TOKEN_TYPES,
        "access_token_signing_alg_values_supported": signing_algs,
        "dpop_signing_alg_values_supported": crate::attest::dpop::DPOP_ALGORITHMS,
    });
    if let Some(base) = mtls_base {
        // Only a running mTLS listener can bind tokens to certificates.
        document["tls_client_certificate_bound_access_tokens"] = json!(true);
        document["mtls_endpoint_aliases"] = json!({
            "token_endpoint": format!("{base}/oauth2/token"),
            "introspection_endpoint": format!("{base}/oauth2/introspect"),
            "revocation_endpoint": format!("{base}/oauth2/revoke"),
        });
    }
    document
}

#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "discovery", responses((status = 200, description = "RFC 8414 metadata", body = Object)))]
async fn metadata(State(state): State<AppState>) -> Json<Value> {
    Json(state.metadata.as_ref().clone())
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "discovery", responses((status = 200, description = "RFC 7517 key set: every published signing key", body = Object)))]
async fn jwks(State(state): State<AppState>) -> Response {
    let now = state.broker.clock.now();
    let mut response = Json(state.broker.keys.get().jwks(now)).into_response();
    response
        .headers_mut()
        .insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("public, max-age=300"));
    response
}

/// Process is up; no dependency checks.
#[utoipa::path(get, path = "/livez", tag = "discovery", responses((status = 200, description = "The process is up", body = Object)))]
async fn livez() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready to serve: database reachable, signing key loaded, every remote
/// JWKS fetched at least once.
#[utoipa::path(get, path = "/readyz", tag = "discovery", responses((status = 200, description = "Ready: database, signing key, remote JWKS", body = Object), (status = 503, description = "Not ready; checks say which", body = Object)))]
async fn readyz(State(state): State<AppState>) -> Response {
    let database = state.health.ping().await.is_ok();
    let mut pending: Vec<String> = Vec::new();
    for issuer in state.broker.verifier.issuers() {
        if let IssuerKeys::Remote(remote) = &issuer.keys
            && !remote.has_keys()
        {
            pending.push(issuer.name.clone());
        }
    }
    pending.sort();
    let ready = database && pending.is_empty();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "database": if database { "ok" } else { "unavailable" },
            "signing_key": state.broker.keys.get().signing(state.broker.clock.now()).kid(),
            "jwks_pending": pending,
        }
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// `GET /healthz`: an alias of `/livez`.
#[utoipa::path(get, path = "/healthz", tag = "discovery", responses((status = 200, description = "The process is up", body = Object)))]
async fn healthz() -> Json<Value> {
    livez().await
}

/// Discovery, health and metrics in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(metadata, jwks, livez, healthz, readyz, metrics::metrics, openapi::openapi_json))]
pub struct DiscoveryApi;
