//! OAuth endpoints: token exchange (RFC 8693), introspection (RFC 7662),
//! revocation (RFC 7009), and the holder's status query. Handlers only
//! translate: parse → use case → map.

use std::time::Duration;

use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{Form, Meta, Roles, authorize, client_auth};
#[allow(unused_imports, reason = "named by the OpenAPI annotations")]
use super::openapi::{ErrorBody, IntrospectionResponse, TokenForm, TokenOnlyForm, TokenResponse, TokenStatusResponse};
use crate::attest::x509::PeerCertificates;
use crate::broker::exchange::{ExchangeRequest, Proof, SubjectKind};
use crate::broker::introspect::{Presented, StatusError};
use crate::broker::people::{ID_TOKEN_TYPE, SESSION_TOKEN_TYPE, SignInError};
use crate::domain::model::Role;
use crate::domain::policy::Ask;
use crate::domain::values::{Audience, CredentialKind, ScopeSet, truncate};

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8705 `tls_client_auth`: the X.509-SVID is the attestation.
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// An opaque `hlf_` secret instead of a JWT.
pub const TOKEN_TYPE_SECRET: &str = "urn:halflife:token-type:secret";
/// A dynamic PostgreSQL login (`resource=postgres:<backend>`).
pub const TOKEN_TYPE_POSTGRES_LOGIN: &str = "urn:halflife:token-type:postgres-login";

/// Subject token types accepted from a workload acting for itself.
pub const SUBJECT_TOKEN_TYPES: &[&str] = &[TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN];
/// Subject token types accepted in a delegation (with an `actor_token`):
/// also an access token, a person's or one of halflife's own (a chain).
pub const DELEGATED_SUBJECT_TOKEN_TYPES: &[&str] = &[TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_ACCESS_TOKEN];
/// Actor token types accepted: the acting workload's attestation.
pub const ACTOR_TOKEN_TYPES: &[&str] = &[TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN];
/// Token types that can be requested.
pub const REQUESTED_TOKEN_TYPES: &[&str] =
    &[TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, TOKEN_TYPE_SECRET, TOKEN_TYPE_POSTGRES_LOGIN];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/revoke", post(revoke))
        .route("/oauth2/token-status", post(token_status))
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// `requested_ttl`: a positive whole number of seconds, digits only.
fn parse_ttl(text: &str) -> Result<Duration, ApiError> {
    let invalid = || ApiError::invalid_request("requested_ttl must be a positive whole number of seconds");
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match text.parse::<u64>() {
        Ok(0) | Err(_) => Err(invalid()),
        Ok(secs) => Ok(Duration::from_secs(secs)),
    }
}

/// Parses a token request. Over mTLS, `client_credentials` takes the
/// client certificate as the attestation; otherwise a `subject_token` is
/// exchanged.
pub fn exchange_request(mut form: Form) -> Result<(Proof, Ask, &'static str), ApiError> {
    let proof = match form.take("grant_type").as_deref() {
        Some(GRANT_TOKEN_EXCHANGE) => {
            let subject_token = form.require_secret("subject_token")?;
            let subject_token_type = form.require("subject_token_type")?;
            let actor_token = form.secret("actor_token");
            let actor_token_type = form.take("actor_token_type");
            match (actor_token, actor_token_type) {
                (None, None) => {
                    if !SUBJECT_TOKEN_TYPES.contains(&subject_token_type.as_str()) {
                        let also = if subject_token_type == TOKEN_TYPE_ACCESS_TOKEN {
                            " (an access token is exchanged only on someone's behalf, with an actor_token)"
                        } else {
                            ""
                        };
                        return Err(ApiError::invalid_request(format!(
                            "subject_token_type must be one of {}{also}",
                            SUBJECT_TOKEN_TYPES.join(", ")
                        )));
                    }
                    Proof::SubjectToken(subject_token)
                }
                (Some(actor_token), Some(actor_token_type)) => {
                    if actor_token.expose_secret().is_empty() {
                        return Err(ApiError::invalid_request("actor_token is empty"));
                    }
                    if !ACTOR_TOKEN_TYPES.contains(&actor_token_type.as_str()) {
                        return Err(ApiError::invalid_request(format!(
                            "actor_token_type must be one of {}: the actor is a workload, proved by its attestation",
                            ACTOR_TOKEN_TYPES.join(", ")
                        )));
                    }
                    let subject_kind = match subject_token_type.as_str() {
                        TOKEN_TYPE_ACCESS_TOKEN => SubjectKind::AccessToken,
                        t if DELEGATED_SUBJECT_TOKEN_TYPES.contains(&t) => SubjectKind::Jwt,
                        _ => {
                            return Err(ApiError::invalid_request(format!(
                                "subject_token_type must be one of {}",
                                DELEGATED_SUBJECT_TOKEN_TYPES.join(", ")
                            )));
                        }
                    };
                    Proof::Delegated { subject_token, subject_kind, actor_token }
                }
                (Some(_), None) => {
                    return Err(ApiError::invalid_request("actor_token requires actor_token_type (RFC 8693 §2.1)"));
                }
                (None, Some(_)) => {
                    return Err(ApiError::invalid_request("actor_token_type was sent without actor_token"));
                }
            }
        }
        Some(GRANT_CLIENT_CREDENTIALS) => {
            if form.contains("subject_token") || form.contains("client_secret") {
                return Err(ApiError::invalid_request(
                    "client_credentials authenticates with the TLS client certificate alone \
                     (tls_client_auth); send no subject_token or client_secret",
                ));
            }
            Proof::ClientCertificate { client_id: form.take("client_id").filter(|c| !c.is_empty()) }
        }
        Some("") | None => {
            return Err(ApiError::invalid_request("missing required parameter grant_type"));
        }
        Some(_) => {
            return Err(ApiError::OAuth {
                code: "unsupported_grant_type",
                description: format!(
                    "grant_type must be {GRANT_TOKEN_EXCHANGE}, or {GRANT_CLIENT_CREDENTIALS} over the mTLS listener"
                ),
            });
        }
    };
    let resources = form.take_all("resource");
    let issued_token_type = match form.take("requested_token_type").as_deref() {
        None | Some(TOKEN_TYPE_ACCESS_TOKEN) => TOKEN_TYPE_ACCESS_TOKEN,
        Some(TOKEN_TYPE_JWT) => TOKEN_TYPE_JWT,
        Some(TOKEN_TYPE_SECRET) => TOKEN_TYPE_SECRET,
        Some(TOKEN_TYPE_POSTGRES_LOGIN) => TOKEN_TYPE_POSTGRES_LOGIN,
        Some(_) => {
            return Err(ApiError::invalid_request(format!(
                "requested_token_type must be one of {}",
                REQUESTED_TOKEN_TYPES.join(", ")
            )));
        }
    };
    let scopes = match form.take("scope") {
        None => None,
        Some(s) => Some(
            ScopeSet::parse_space_separated(&s)
                .map_err(|e| ApiError::OAuth { code: "invalid_scope", description: e.0 })?,
        ),
    };
    let requested_ttl = form.take("requested_ttl").map(|t| parse_ttl(&t)).transpose()?;
    let invalid_target = |description: String| ApiError::OAuth { code: "invalid_target", description };
    // The targets: each `audience` (RFC 8693 §2.1), and each `resource`
    // (RFC 8707 §2: an absolute URI without a fragment), except the one
    // `resource=postgres:<backend>` that names a database login's backend.
    let mut targets: Vec<Audience> = Vec::new();
    let mut add = |target: Audience| {
        if !targets.contains(&target) {
            targets.push(target);
        }
    };
    for audience in form.take_all("audience") {
        add(Audience::parse(&audience).map_err(|e| invalid_target(e.0))?);
    }
    let mut backend = None;
    for resource in resources {
        if issued_token_type == TOKEN_TYPE_POSTGRES_LOGIN && resource.starts_with("postgres:") {
            match CredentialKind::parse(&resource) {
                Ok(kind @ CredentialKind::Postgres(_)) if backend.is_none() => backend = Some(kind),
                Ok(_) => return Err(invalid_target("a postgres-login names one resource=postgres:<backend>".into())),
                Err(e) => return Err(invalid_target(e.0)),
            }
            continue;
        }
        let uri = url::Url::parse(&resource)
            .map_err(|_| invalid_target(format!("resource {:?} is not an absolute URI", truncate(&resource, 80))))?;
        if uri.fragment().is_some() {
            return Err(invalid_target(format!("resource {:?} has a fragment", truncate(&resource, 80))));
        }
        if uri.scheme() == "postgres" {
            return Err(invalid_target(
                "resource=postgres:<backend> names a database login's backend; ask for \
                 requested_token_type=urn:halflife:token-type:postgres-login"
                    .into(),
            ));
        }
        add(Audience::parse(&resource).map_err(|e| invalid_target(e.0))?);
    }
    let kind = match (issued_token_type, backend) {
        (TOKEN_TYPE_POSTGRES_LOGIN, Some(kind)) => kind,
        (TOKEN_TYPE_POSTGRES_LOGIN, None) => {
            return Err(ApiError::invalid_request("a postgres-login needs resource=postgres:<backend>"));
        }
        (TOKEN_TYPE_SECRET, _) => CredentialKind::Secret,
        _ => CredentialKind::Jwt,
    };
    let ask = Ask { targets, scopes, requested_ttl, kind: Some(kind) };
    Ok((proof, ask, issued_token_type))
}

/// `client_credentials` sent to the plain listener: it is served on the mTLS
/// listener (named by the metadata's `mtls_endpoint_aliases`), or nowhere.
fn client_credentials_elsewhere(state: &AppState) -> ApiError {
    let description = match state.metadata["mtls_endpoint_aliases"]["token_endpoint"].as_str() {
        Some(url) => format!(
            "client_credentials is served on the mTLS listener, {url}, where the client's X.509-SVID authenticates it"
        ),
        None => "client_credentials needs the mTLS listener (an X.509-SVID authenticates the client), and this \
                 broker has none configured; exchange a subject_token instead"
            .to_owned(),
    };
    ApiError::OAuth { code: "unsupported_grant_type", description }
}

/// The request's one `DPoP` header, if any (RFC 9449 §4.3: more than one
/// is an error).
fn dpop_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("dpop").iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => match value.to_str() {
            Ok(text) => Ok(Some(text.to_owned())),
            Err(_) => Err(ApiError::OAuth {
                code: "invalid_dpop_proof",
                description: "DPoP header is not visible ASCII".into(),
            }),
        },
        (Some(_), Some(_)) => {
            Err(ApiError::OAuth { code: "invalid_dpop_proof", description: "send exactly one DPoP header".into() })
        }
    }
}

/// `POST /oauth2/token`
#[utoipa::path(post, path = "/oauth2/token", tag = "oauth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    params(("DPoP" = Option<String>, Header, description = "A DPoP proof (RFC 9449) to bind the token to its key")),
    responses(
        (status = 200, description = "Issued (RFC 8693 §2.2.1)", body = TokenResponse),
        (status = 400, description = "Refused: invalid_request, invalid_grant, invalid_scope, invalid_target, unauthorized_client, access_denied, unsupported_grant_type, invalid_dpop_proof", body = ErrorBody),
        (status = 401, description = "invalid_client: no valid X.509-SVID (client_credentials)", body = ErrorBody),
        (status = 413, description = "Body over server.max_body_bytes", body = ErrorBody),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = ErrorBody),
        (status = 429, description = "rate_limited; Retry-After says when to retry", body = ErrorBody),
        (status = 503, description = "The decision could not be recorded; nothing was issued", body = ErrorBody)))]
async fn token(
    State(state): State<AppState>,
    Meta(meta): Meta,
    peer: Option<Extension<PeerCertificates>>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ApiError> {
    if form.peek("requested_token_type") == Some(SESSION_TOKEN_TYPE) {
        return sign_in(&state, form, &meta).await;
    }
    let subject_token = form.secret("subject_token");
    let over_mtls = peer.is_some();
    let parsed = dpop_header(&headers).and_then(|dpop| Ok((dpop, exchange_request(form)?))).and_then(|parsed| {
        match &parsed.1.0 {
            // No client certificate can reach this listener: say where
            // client_credentials is served instead of calling the absent
            // certificate invalid.
            Proof::ClientCertificate { .. } if !over_mtls => Err(client_credentials_elsewhere(&state)),
            _ => Ok(parsed),
        }
    });
    let (dpop, (proof, ask, issued_token_type)) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            // A malformed exchange is a refused exchange: record it too.
            if let ApiError::OAuth { code, description } = &error {
                let token = subject_token.as_ref().map(ExposeSecret::expose_secret);
                state.broker.record_refused_request(code, description, token, &meta).await?;
            }
            return Err(error);
        }
    };
    let request = ExchangeRequest {
        proof,
        ask,
        peer: peer.map(|Extension(p)| p),
        dpop: dpop.map(|proof| (proof, state.token_endpoint.as_ref().clone())),
    };
    let issued = state.broker.exchange(request, &meta).await?;
    let secret = issued.access_token.expose_secret();
    let login = issued.login.as_ref().map(|login| LoginAnswer {
        username: &login.username,
        password: secret,
        host: &login.host,
        port: login.port,
        database: &login.database,
        expires_at: crate::domain::rfc3339(login.expires_at),
    });
    let answer = TokenAnswer {
        access_token: secret,
        issued_token_type,
        token_type: issued.token_type,
        expires_in: issued.expires_in,
        scope: &issued.scope,
        login,
    };
    // One buffer the size of the answer, written once: the token is most
    // of it, and is not copied into a `Value` on the way.
    let mut body = Vec::with_capacity(secret.len() * 2 + 512);
    serde_json::to_writer(&mut body, &answer).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = Response::new(axum::body::Body::from(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(no_store(response))
}

/// A token endpoint's answer (RFC 6749 §5.1, RFC 8693 §2.2.1), with a
/// database login's connection details beside it.
#[derive(Serialize)]
struct TokenAnswer<'a> {
    access_token: &'a str,
    issued_token_type: &'a str,
    token_type: &'a str,
    expires_in: i64,
    scope: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    login: Option<LoginAnswer<'a>>,
}

#[derive(Serialize)]
struct LoginAnswer<'a> {
    username: &'a str,
    password: &'a str,
    host: &'a str,
    port: u16,
    database: &'a str,
    expires_at: String,
}

/// A person signs in: their OpenID Connect ID token is exchanged for a
/// session token (`requested_token_type` [`SESSION_TOKEN_TYPE`]).
async fn sign_in(state: &AppState, mut form: Form, meta: &crate::store::RequestMeta) -> Result<Response, ApiError> {
    if form.take("grant_type").as_deref() != Some(GRANT_TOKEN_EXCHANGE) {
        return Err(ApiError::invalid_request(format!(
            "a session is requested with grant_type {GRANT_TOKEN_EXCHANGE}"
        )));
    }
    let id_token = form.require_secret("subject_token")?;
    if form.require("subject_token_type")? != ID_TOKEN_TYPE {
        return Err(ApiError::invalid_request(format!(
            "a session is exchanged for the person's ID token: subject_token_type must be {ID_TOKEN_TYPE}"
        )));
    }
    if form.contains("actor_token") || form.contains("actor_token_type") {
        return Err(ApiError::invalid_request("a person signs in for themselves: send no actor_token"));
    }
    let session = match state.broker.sign_in(id_token.expose_secret(), meta).await {
        Ok(session) => session,
        Err(SignInError::Invalid(why)) => {
            return Err(ApiError::OAuth {
                code: "invalid_grant",
                description: format!("the ID token is not valid: {why}"),
            });
        }
        Err(SignInError::Denied(why)) => return Err(ApiError::OAuth { code: "access_denied", description: why }),
        Err(SignInError::Provider(why)) => {
            tracing::warn!(reason = %why, "sign-in failed: the identity provider cannot be reached");
            return Err(ApiError::Unavailable);
        }
        Err(SignInError::Failure(failure)) => return Err(failure.into()),
        Err(SignInError::Throttled(throttled)) => return Err(ApiError::TooManyRequests(throttled)),
    };
    let expires_in = (session.record.expires_at - session.record.created_at).whole_seconds();
    Ok(no_store(
        Json(json!({
            "access_token": session.token.expose_secret(),
            "issued_token_type": SESSION_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "session": session_json(&session.record),
        }))
        .into_response(),
    ))
}

/// A session as the API shows it (never its token).
pub fn session_json(record: &crate::store::SessionRecord) -> Value {
    json!({
        "id": record.id,
        "issuer": record.issuer,
        "subject": record.subject,
        "email": record.email,
        "name": record.name,
        "roles": record.roles,
        "created_at": crate::domain::rfc3339(record.created_at),
        "expires_at": crate::domain::rfc3339(record.expires_at),
    })
}

/// The request's form and the client it authenticates, if any (see
/// [`client_auth`]). Credentials in a header are checked before the body is
/// read, so a caller that fails them learns nothing of the form's rules;
/// `client_secret_post` credentials are in the form, which is read first.
async fn authenticated_form<R: Roles>(
    state: &AppState,
    request: Request,
    route: &str,
    meta: &crate::store::RequestMeta,
) -> Result<(Form, Option<crate::broker::admin::AdminCaller>), ApiError> {
    let (parts, body) = request.into_parts();
    if super::extract::authorization(&parts.headers)?.is_some() {
        // Authenticate, authorize, and only then parse.
        let mut empty = Form::parse(b"")?;
        let caller = client_auth(state, &parts.headers, &mut empty, route, meta).await?;
        if let Some(caller) = &caller {
            authorize::<R>(state, caller, route, meta).await?;
        }
        let form = Form::from_request(Request::from_parts(parts, body), state).await?;
        if form.contains("client_secret") {
            return Err(ApiError::invalid_request(
                "use one client authentication method: the Authorization header or client_secret, not both",
            ));
        }
        return Ok((form, caller));
    }
    let mut form = Form::from_request(Request::from_parts(parts.clone(), body), state).await?;
    let caller = client_auth(state, &parts.headers, &mut form, route, meta).await?;
    if let Some(caller) = &caller {
        authorize::<R>(state, caller, route, meta).await?;
    }
    Ok((form, caller))
}

/// Any authenticated admin caller: revocation checks client
/// authentication, not a role (the token authenticates its own revocation).
enum AnyAdmin {}

impl Roles for AnyAdmin {
    fn allows(_: Role) -> bool {
        true
    }
    const REFUSAL: &'static str = "revoke tokens";
}

/// The roles that may introspect: introspectors, operators and admins.
enum Introspectors {}

impl Roles for Introspectors {
    fn allows(role: Role) -> bool {
        role.may_introspect()
    }
    const REFUSAL: &'static str = "introspect tokens";
}

/// `POST /oauth2/introspect`
#[utoipa::path(post, path = "/oauth2/introspect", tag = "oauth",
    request_body(content = TokenOnlyForm, content_type = "application/x-www-form-urlencoded"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "RFC 7662: exactly {\"active\": false} for anything not active", body = IntrospectionResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "No or invalid admin token", body = ErrorBody),
        (status = 403, description = "The role may not introspect", body = ErrorBody),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody)))]
async fn introspect(State(state): State<AppState>, Meta(meta): Meta, request: Request) -> Result<Response, ApiError> {
    let route = "/oauth2/introspect";
    let (mut form, caller) = authenticated_form::<Introspectors>(&state, request, route, &meta).await?;
    caller.ok_or_else(|| ApiError::Unauthorized("introspection requires client authentication".into()))?;
    let token = form.require_secret("token")?;
    let body = match state.broker.introspect(token.expose_secret()).await? {
        None => json!({"active": false}),
        Some(claims) => {
            let mut value = serde_json::to_value(&claims).map_err(|e| ApiError::Internal(e.to_string()))?;
            let token_type = if claims.cnf.as_ref().is_some_and(|c| c.jkt.is_some()) { "DPoP" } else { "Bearer" };
            if let Value::Object(map) = &mut value {
                map.insert("active".into(), Value::Bool(true));
                map.insert("token_type".into(), Value::String(token_type.into()));
            }
            value
        }
    };
    Ok(no_store(Json(body).into_response()))
}

/// `POST /oauth2/revoke`: the token authenticates its own revocation.
#[utoipa::path(post, path = "/oauth2/revoke", tag = "oauth",
    request_body(content = TokenOnlyForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked, or nothing to revoke (RFC 7009)"),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody)))]
async fn revoke(State(state): State<AppState>, Meta(meta): Meta, request: Request) -> Result<Response, ApiError> {
    // The token authenticates its own revocation; a client that
    // authenticates too (as standard clients do) must do so correctly.
    let (mut form, _) = authenticated_form::<AnyAdmin>(&state, request, "/oauth2/revoke", &meta).await?;
    let token = form.require_secret("token")?;
    state.broker.revoke_by_holder(token.expose_secret(), &meta).await?;
    Ok(no_store(axum::http::StatusCode::OK.into_response()))
}

/// `POST /oauth2/token-status`: the holder of a token asks whether it is
/// still active; the token authenticates the query, as it does its own
/// revocation. A sender-constrained token must prove possession.
#[utoipa::path(post, path = "/oauth2/token-status", tag = "oauth",
    request_body(content = TokenOnlyForm, content_type = "application/x-www-form-urlencoded"),
    params(("DPoP" = Option<String>, Header, description = "For a DPoP-bound token: a proof of its key for this endpoint, with ath")),
    responses(
        (status = 200, description = "{\"active\": true} or {\"active\": false}; unknown, malformed and foreign tokens are inactive", body = TokenStatusResponse),
        (status = 400, description = "Malformed request; invalid_dpop_proof for a DPoP-bound token without a valid proof; invalid_request for a certificate-bound token without its certificate", body = ErrorBody),
        (status = 413, description = "Body over server.max_body_bytes", body = ErrorBody),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody)))]
async fn token_status(
    State(state): State<AppState>,
    peer: Option<Extension<PeerCertificates>>,
    headers: HeaderMap,
    mut form: Form,
) -> Result<Response, ApiError> {
    let token = form.require_secret("token")?;
    let dpop = dpop_header(&headers)?;
    // This listener's token endpoint with `-status`: the URL a proof names.
    let mut endpoint = state.token_endpoint.as_ref().clone();
    let path = format!("{}-status", endpoint.path());
    endpoint.set_path(&path);
    let presented = Presented { dpop: dpop.as_deref(), endpoint: &endpoint, peer: peer.as_ref().map(|Extension(p)| p) };
    let active = match state.broker.token_status(token.expose_secret(), presented).await {
        Ok(active) => active,
        Err(StatusError::Dpop(description)) => return Err(ApiError::OAuth { code: "invalid_dpop_proof", description }),
        Err(e @ StatusError::Certificate) => return Err(ApiError::invalid_request(e.to_string())),
        Err(StatusError::Unavailable(e)) => return Err(e.into()),
    };
    Ok(no_store(Json(json!({"active": active})).into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_accepts_only_positive_whole_seconds() {
        assert_eq!(parse_ttl("60").unwrap(), Duration::from_secs(60));
        for bad in ["0", "-1", "1.5", " 60", "60s", "", "18446744073709551616", "99999999999"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }
}

/// The OAuth endpoints' part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(token, introspect, revoke, token_status))]
pub struct Api;
