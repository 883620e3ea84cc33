//! People's sign-in information, sessions and the caller's own identity,
//! and the listing and revocation of automation tokens. Routed with the
//! rest of the operator API (see [`super::admin`]).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::{Authorized, Path, Roles};
use super::oauth::session_json;
use super::openapi::ErrorBody;
use super::openapi::errors::{NotFound, Refusals};
use crate::domain::model::Role;

/// Every signed-in person and every automation token.
pub enum Anyone {}

impl Roles for Anyone {
    fn allows(_: Role) -> bool {
        true
    }
    const REFUSAL: &'static str = "call this route";
}

/// Admins only.
pub enum Admins {}

impl Roles for Admins {
    fn allows(role: Role) -> bool {
        role == Role::Admin
    }
    const REFUSAL: &'static str = "call this route";
}

/// `GET /v1/sign-in`: what a client needs to sign a person in.
#[utoipa::path(
    get, path = "/v1/sign-in", tag = "people",
    responses(
        (status = 200, description = "`{issuer, client_id, scopes}`: the OpenID provider people sign in with", body = Object),
        (status = 404, description = "People do not sign in here (no `[people]` configuration)", body = ErrorBody),
    )
)]
pub async fn sign_in_info(State(state): State<AppState>) -> Result<Response, ApiError> {
    match &state.broker.people {
        Some(people) => Ok(Json(people.sign_in_info()).into_response()),
        None => Err(ApiError::NotFound(
            "people do not sign in to this broker: it has no [people] configuration; use an automation token".into(),
        )),
    }
}

/// `GET /v1/whoami`: the caller, as the broker knows it.
#[utoipa::path(
    get, path = "/v1/whoami", tag = "people",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{kind: person|automation, id, roles, …}`", body = Object),
        Refusals,
    )
)]
pub async fn whoami(Authorized { caller, .. }: Authorized<Anyone>) -> Result<Response, ApiError> {
    Ok(Json(caller.describe()).into_response())
}

/// `GET /v1/sessions`: active sessions (an admin sees everyone's).
#[utoipa::path(
    get, path = "/v1/sessions", tag = "people",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"sessions\": [Session]}`, newest first", body = Object),
        Refusals,
    )
)]
pub async fn list_sessions(
    State(state): State<AppState>,
    Authorized { caller, .. }: Authorized<Anyone>,
) -> Result<Response, ApiError> {
    let sessions = state.broker.sessions(&caller).await?;
    Ok(Json(json!({"sessions": sessions.iter().map(session_json).collect::<Vec<_>>()})).into_response())
}

/// `POST /v1/sessions/{id}/revoke`: ends a session at once (`current`:
/// the caller's own).
#[utoipa::path(
    post, path = "/v1/sessions/{id}/revoke", tag = "people",
    params(("id" = String, Path, description = "Session id, or `current` for the caller's own")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{id, revoked}`: `revoked` is false if it already was", body = Object),
        NotFound, Refusals,
    )
)]
pub async fn revoke_session(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Anyone>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = if id == "current" {
        if caller.person.is_none() {
            return Err(ApiError::invalid_request(
                "an automation token has no session; revoke it with POST /v1/admin-tokens/{id}/revoke",
            ));
        }
        caller.id.clone()
    } else {
        id
    };
    match state.broker.revoke_session(&id, &caller, &meta).await? {
        Some(revoked) => Ok(Json(json!({"id": id, "revoked": revoked})).into_response()),
        None => Err(ApiError::NotFound(format!("no session {id} that you may revoke"))),
    }
}

/// `GET /v1/admin-tokens`: every automation token, with its expiry and last use.
#[utoipa::path(
    get, path = "/v1/admin-tokens", tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"tokens\": [{id, name, role, created_at, expires_at, last_used_at, revoked_at}]}`", body = Object),
        Refusals,
    )
)]
pub async fn list_admin_tokens(State(state): State<AppState>, _: Authorized<Admins>) -> Result<Response, ApiError> {
    Ok(Json(json!({"tokens": state.broker.admin_tokens().await?})).into_response())
}

/// `POST /v1/admin-tokens/{id}/revoke`: the token stops working at once.
#[utoipa::path(
    post, path = "/v1/admin-tokens/{id}/revoke", tag = "operations",
    params(("id" = String, Path, description = "Automation token id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{id, revoked: true}`", body = Object),
        NotFound, Refusals,
    )
)]
pub async fn revoke_admin_token(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if state.broker.revoke_admin_token(&id, &caller, &meta).await? {
        Ok(Json(json!({"id": id, "revoked": true})).into_response())
    } else {
        Err(ApiError::NotFound(format!("no active automation token {id}")))
    }
}
