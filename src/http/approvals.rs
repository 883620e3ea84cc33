//! Access requests and break-glass reviews under `/v1/` (see
//! [`crate::broker::approvals`]). Routed with the rest of the operator API.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::{Authorized, Params, Path, Roles};
use super::openapi::errors::{BodyErrors, Conflict, Invalid, NotFound, Refusals};
use crate::broker::approvals::{DecideError, Ruling};
use crate::domain::approval::{AccessState, Decision};
use crate::domain::model::Role;

/// Who sees access requests: approvers, operators, auditors and admins.
pub enum Deciders {}

impl Roles for Deciders {
    fn allows(role: Role) -> bool {
        matches!(role, Role::Approver | Role::Operator | Role::Auditor | Role::Admin)
    }
    const REFUSAL: &'static str = "call this route";
}

/// Who decides: approvers, operators (break glass, revocation) and admins;
/// the finer rules are the broker's.
pub enum Approvers {}

impl Roles for Approvers {
    fn allows(role: Role) -> bool {
        matches!(role, Role::Approver | Role::Operator | Role::Admin)
    }
    const REFUSAL: &'static str = "call this route";
}

impl From<DecideError> for ApiError {
    fn from(e: DecideError) -> Self {
        match e {
            DecideError::NotFound(d) => Self::NotFound(d),
            DecideError::Forbidden(d) => Self::Forbidden(d),
            DecideError::Conflict(d) => Self::Conflict(d),
            DecideError::Invalid(d) => match d.split_once(": ") {
                Some((field, message)) => Self::Invalid { field: field.into(), message: message.into() },
                None => Self::invalid_request(d),
            },
            DecideError::Unavailable(u) => u.into(),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AccessQuery {
    /// `pending`, `approved`, `denied`, `expired` or `revoked`; all when absent.
    #[serde(default)]
    state: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /v1/access-requests`: access requests, newest first.
#[utoipa::path(
    get, path = "/v1/access-requests", tag = "approvals",
    params(AccessQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"access_requests\": [AccessRequest]}`", body = Object),
        Invalid, Refusals,
    )
)]
pub async fn list_access_requests(
    State(state): State<AppState>,
    _: Authorized<Deciders>,
    Params(query): Params<AccessQuery>,
) -> Result<Response, ApiError> {
    let wanted = match query.state.as_deref() {
        None => None,
        Some(text) => Some(AccessState::parse(text).ok_or_else(|| ApiError::Invalid {
            field: "state".into(),
            message: "must be pending, approved, denied, expired or revoked".into(),
        })?),
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Invalid { field: "limit".into(), message: "must be between 1 and 1000".into() });
    }
    let requests = state.broker.access_requests(wanted, limit).await?;
    Ok(Json(json!({"access_requests": requests})).into_response())
}

/// `GET /v1/access-requests/{id}`
#[utoipa::path(
    get, path = "/v1/access-requests/{id}", tag = "approvals",
    params(("id" = String, Path, description = "Access request id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "AccessRequest", body = Object),
        NotFound, Refusals,
    )
)]
pub async fn show_access_request(
    State(state): State<AppState>,
    _: Authorized<Deciders>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let request =
        state.broker.access_request(&id).await?.ok_or_else(|| ApiError::NotFound(format!("no access request {id}")))?;
    Ok(Json(json!(request)).into_response())
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// How long the approval lasts, e.g. "30m" (default and most: the grant's approval_max_duration).
    #[serde(default)]
    #[schema(pattern = "^[0-9]+(ms|s|m|h|d)$")]
    duration: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    /// An operator approving what they may not otherwise (their own system): needs a reason, is announced at
    /// once and awaits a second person's review.
    #[serde(default)]
    break_glass: bool,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionReasonBody {
    /// Why (required; at most 500 characters).
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    #[serde(default)]
    note: Option<String>,
}

/// `POST /v1/access-requests/{id}/approve`
#[utoipa::path(
    post, path = "/v1/access-requests/{id}/approve", tag = "approvals",
    request_body(content = ApproveBody, content_type = "application/json"),
    params(("id" = String, Path, description = "Access request id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The approved AccessRequest", body = Object),
        Invalid, NotFound, Conflict, BodyErrors, Refusals,
    )
)]
pub async fn approve_access(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Approvers>,
    Path(id): Path<String>,
    super::admin::OptionalBody(body): super::admin::OptionalBody<ApproveBody>,
) -> Result<Response, ApiError> {
    let duration =
        match body.duration.as_deref() {
            None => None,
            Some(text) => Some(humantime::parse_duration(text).map_err(|e| ApiError::Invalid {
                field: "duration".into(),
                message: format!("{e}; write it like 30m"),
            })?),
        };
    let decided = state
        .broker
        .decide_access(
            &id,
            Ruling { decision: Decision::Approve, duration, reason: body.reason, break_glass: body.break_glass },
            &caller,
            &meta,
        )
        .await?;
    Ok(Json(json!(decided)).into_response())
}

/// A denial or revocation, with its reason.
fn ruling(decision: Decision, reason: Option<String>) -> Ruling {
    Ruling { decision, duration: None, reason, break_glass: false }
}

/// `POST /v1/access-requests/{id}/deny`
#[utoipa::path(
    post, path = "/v1/access-requests/{id}/deny", tag = "approvals",
    request_body(content = DecisionReasonBody, content_type = "application/json"),
    params(("id" = String, Path, description = "Access request id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The denied AccessRequest", body = Object),
        Invalid, NotFound, Conflict, BodyErrors, Refusals,
    )
)]
pub async fn deny_access(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Approvers>,
    Path(id): Path<String>,
    super::extract::JsonBody(body): super::extract::JsonBody<DecisionReasonBody>,
) -> Result<Response, ApiError> {
    let decided = state.broker.decide_access(&id, ruling(Decision::Deny, body.reason), &caller, &meta).await?;
    Ok(Json(json!(decided)).into_response())
}

/// `POST /v1/access-requests/{id}/revoke`: ends an approval and revokes
/// the credentials issued under it.
#[utoipa::path(
    post, path = "/v1/access-requests/{id}/revoke", tag = "approvals",
    request_body(content = DecisionReasonBody, content_type = "application/json"),
    params(("id" = String, Path, description = "Access request id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The revoked AccessRequest", body = Object),
        Invalid, NotFound, Conflict, BodyErrors, Refusals,
    )
)]
pub async fn revoke_access(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Approvers>,
    Path(id): Path<String>,
    super::extract::JsonBody(body): super::extract::JsonBody<DecisionReasonBody>,
) -> Result<Response, ApiError> {
    let decided = state.broker.decide_access(&id, ruling(Decision::Revoke, body.reason), &caller, &meta).await?;
    Ok(Json(json!(decided)).into_response())
}

/// `GET /v1/reviews`: break-glass approvals awaiting a second person.
#[utoipa::path(
    get, path = "/v1/reviews", tag = "approvals",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"reviews\": [AccessRequest]}`, oldest first", body = Object),
        Refusals,
    )
)]
pub async fn list_reviews(State(state): State<AppState>, _: Authorized<Deciders>) -> Result<Response, ApiError> {
    Ok(Json(json!({"reviews": state.broker.reviews().await?})).into_response())
}

/// `POST /v1/reviews/{id}/done`: a second person has reviewed a
/// break-glass approval.
#[utoipa::path(
    post, path = "/v1/reviews/{id}/done", tag = "approvals",
    request_body(content = ReviewBody, content_type = "application/json"),
    params(("id" = String, Path, description = "Access request id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The reviewed AccessRequest", body = Object),
        NotFound, Conflict, BodyErrors, Refusals,
    )
)]
pub async fn review_done(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Deciders>,
    Path(id): Path<String>,
    super::admin::OptionalBody(body): super::admin::OptionalBody<ReviewBody>,
) -> Result<Response, ApiError> {
    let reviewed = state.broker.review_access(&id, body.note, &caller, &meta).await?;
    Ok(Json(json!(reviewed)).into_response())
}
