//! The OpenAPI 3.1 description of every endpoint, generated from the
//! handlers' annotations and served at `GET /openapi.json`. A test checks
//! that the routes the routers register and the paths documented here are
//! the same set.

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error body (RFC 6749 §5.2 shape).
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the body is built by ApiError")]
pub struct ErrorBody {
    /// An OAuth error code, or `not_found`, `conflict`, `promotion_refused`, `rate_limited`, ...
    error: String,
    error_description: String,
    /// The request field a validation error concerns.
    field: Option<String>,
    /// Every failed check of a refused promotion.
    failed_checks: Option<Vec<String>>,
    /// Seconds until a rate-limited request may succeed (also `Retry-After`).
    retry_after: Option<u64>,
}

/// The error answers the operator routes share, each described once and
/// named in a route's `responses(...)` list.
pub mod errors {
    use std::collections::BTreeMap;

    use utoipa::IntoResponses;
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};

    /// What every operator route may answer instead of its result.
    pub struct Refusals;
    /// A request field that fails validation.
    pub struct Invalid;
    pub struct NotFound;
    pub struct Conflict;
    /// A JSON request body refused before the handler reads it.
    pub struct BodyErrors;

    impl IntoResponses for Refusals {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            described(&[
                (401, "No or invalid admin token"),
                (403, "The role may not call this route (recorded as access.denied)"),
                (503, "Storage unavailable; nothing changed"),
            ])
        }
    }

    impl IntoResponses for Invalid {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            described(&[(400, "Invalid request; field names the culprit")])
        }
    }

    impl IntoResponses for NotFound {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            described(&[(404, "Not found")])
        }
    }

    impl IntoResponses for Conflict {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            described(&[(409, "Conflicts with the current state")])
        }
    }

    impl IntoResponses for BodyErrors {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            described(&[(413, "Body over server.max_body_bytes"), (415, "Not application/json")])
        }
    }

    /// Error responses with an [`ErrorBody`](super::ErrorBody) each.
    fn described(answers: &[(u16, &str)]) -> BTreeMap<String, RefOr<Response>> {
        answers
            .iter()
            .map(|&(status, description)| {
                let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
                let response = ResponseBuilder::new().description(description).content("application/json", body);
                (status.to_string(), response.build().into())
            })
            .collect()
    }
}

/// `POST /oauth2/token` (RFC 8693 token exchange, or RFC 8705
/// `client_credentials` over the mTLS listener).
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the form is parsed by Form")]
pub struct TokenForm {
    /// `urn:ietf:params:oauth:grant-type:token-exchange`, or `client_credentials` over mTLS.
    #[schema(pattern = "^(urn:ietf:params:oauth:grant-type:token-exchange|client_credentials)$")]
    grant_type: String,
    /// The attestation JWT (token exchange); with `actor_token`, the token of
    /// whom the issued token acts for.
    subject_token: Option<String>,
    /// `urn:ietf:params:oauth:token-type:jwt` or `urn:ietf:params:oauth:token-type:id_token`; with
    /// `actor_token` also `urn:ietf:params:oauth:token-type:access_token`.
    subject_token_type: Option<String>,
    /// Delegation (RFC 8693 §2.1): the acting workload's attestation.
    actor_token: Option<String>,
    /// `urn:ietf:params:oauth:token-type:jwt` or `urn:ietf:params:oauth:token-type:id_token`.
    actor_token_type: Option<String>,
    audience: Option<String>,
    /// Space-separated scopes.
    scope: Option<String>,
    /// access_token (default), jwt, `urn:halflife:token-type:secret` or `urn:halflife:token-type:postgres-login`.
    requested_token_type: Option<String>,
    /// `postgres:<backend>`, only with a postgres-login.
    resource: Option<String>,
    /// Lifetime in whole seconds.
    requested_ttl: Option<String>,
    /// With client_credentials: must be the certificate's SPIFFE ID.
    client_id: Option<String>,
}

/// A successful exchange (RFC 8693 §2.2.1).
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the body is built in the handler")]
pub struct TokenResponse {
    access_token: String,
    issued_token_type: String,
    /// `Bearer`, or `DPoP` for a DPoP-bound token.
    token_type: String,
    expires_in: i64,
    scope: String,
    /// Database logins only.
    username: Option<String>,
    password: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    database: Option<String>,
    expires_at: Option<String>,
}

/// `POST /oauth2/introspect` and `POST /oauth2/revoke`.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the form is parsed by Form")]
pub struct TokenOnlyForm {
    #[schema(min_length = 1)]
    token: String,
}

/// RFC 7662: `{"active": false}` alone, or `active: true` with the claims.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the body is built in the handler")]
pub struct IntrospectionResponse {
    active: bool,
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<String>,
    exp: Option<i64>,
    iat: Option<i64>,
    nbf: Option<i64>,
    jti: Option<String>,
    scope: Option<String>,
    client_id: Option<String>,
    system: Option<String>,
    /// `x5t#S256` and/or `jkt` of a sender-constrained token.
    #[schema(value_type = Option<Object>)]
    cnf: Option<serde_json::Value>,
    /// A delegated token's actor `{sub, iss}`, a chain's earlier actors
    /// nested in its own `act` (RFC 8693 §4.1).
    #[schema(value_type = Option<Object>)]
    act: Option<serde_json::Value>,
    token_type: Option<String>,
}

/// `POST /oauth2/token-status`: exactly `{"active": bool}`.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the body is built in the handler")]
pub struct TokenStatusResponse {
    active: bool,
}

struct AdminTokenScheme;

impl Modify for AdminTokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("admin_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "halflife",
        description = "Short-lived credential broker: attested workload identity in, scoped time-bound credential out."
    ),
    modifiers(&AdminTokenScheme),
    components(schemas(ErrorBody, TokenForm, TokenResponse, TokenOnlyForm, IntrospectionResponse, TokenStatusResponse)),
    tags(
        (name = "oauth", description = "Token exchange, introspection, revocation, the holder's status query"),
        (name = "discovery", description = "Metadata, keys, health, metrics"),
        (name = "systems", description = "Systems, grants and their credentials"),
        (name = "owners", description = "Accountable owners"),
        (name = "operations", description = "Revocation, jobs, deadlines, admin tokens, signing keys"),
        (name = "audit", description = "The audit trail")
    )
)]
struct Base;

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Base::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.merge(super::oauth::Api::openapi());
    doc.merge(super::DiscoveryApi::openapi());
    doc.merge(super::admin::Api::openapi());
    doc.merge(super::audit::Api::openapi());
    doc
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| document().to_json().unwrap_or_else(|_| "{}".to_owned()));

/// `GET /openapi.json`
#[utoipa::path(get, path = "/openapi.json", tag = "discovery",
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> Response {
    let mut response = DOCUMENT.as_str().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
