//! The operator API under `/v1/`, authenticated with admin bearer tokens.
//!
//! Roles: `admin` may do everything; `operator` manages systems, owners,
//! grants, promotion, suspension and revocation; `auditor` reads; an
//! `introspector` token and a workload's access token get 403 here, and the
//! attempt is recorded as `access.denied`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AppState;
#[allow(clippy::wildcard_imports, reason = "utoipa's path types come with the handlers")]
use super::approvals::*;
use super::error::ApiError;
use super::extract::{Authorized, JsonBody, Params, Path, Roles};
use super::openapi::ErrorBody;
use super::openapi::errors::{BodyErrors, Conflict, Invalid, NotFound, Refusals};
#[allow(clippy::wildcard_imports, reason = "utoipa's path types come with the handlers")]
use super::people::*;
use crate::broker::apply::{self, GrantEntry};
use crate::domain::catalog::{NewSystem, SystemPatch};
use crate::domain::model::{Role, Tier};
use crate::domain::values::{GrantId, OwnerId, SystemId};

/// Admins, operators and auditors.
enum Read {}

impl Roles for Read {
    fn allows(role: Role) -> bool {
        matches!(role, Role::Admin | Role::Operator | Role::Auditor)
    }
    const REFUSAL: &'static str = "call this route";
}

/// Admins and operators.
enum Write {}

impl Roles for Write {
    fn allows(role: Role) -> bool {
        matches!(role, Role::Admin | Role::Operator)
    }
    const REFUSAL: &'static str = "call this route";
}

/// Admins only.
enum AdminOnly {}

impl Roles for AdminOnly {
    fn allows(role: Role) -> bool {
        role == Role::Admin
    }
    const REFUSAL: &'static str = "call this route";
}

/// The operator API's routes, each at the path and method its
/// `#[utoipa::path]` names: a route is written once, in its annotation,
/// and a handler named once, in [`operator_api!`] below.
pub fn router() -> Router<AppState> {
    use utoipa::OpenApi as _;
    let mut router = Router::new();
    for (path, item) in Api::openapi().paths.paths {
        let operations = [
            (MethodFilter::GET, item.get),
            (MethodFilter::POST, item.post),
            (MethodFilter::PATCH, item.patch),
            (MethodFilter::PUT, item.put),
            (MethodFilter::DELETE, item.delete),
        ];
        for (method, operation) in operations {
            let Some(id) = operation.and_then(|o| o.operation_id) else { continue };
            // Every operation of `Api` is one of `handler`'s (the same
            // list makes both).
            if let Some(handler) = handler(&id, method) {
                router = router.route(&path, handler);
            }
        }
    }
    router
}

pub(super) fn system_id(raw: &str) -> Result<SystemId, ApiError> {
    SystemId::parse(raw).map_err(|e| ApiError::NotFound(e.0))
}

pub(super) fn owner_id(raw: &str) -> Result<OwnerId, ApiError> {
    OwnerId::parse(raw).map_err(|e| ApiError::NotFound(e.0))
}

fn field<T>(name: &str, parsed: Result<T, crate::domain::values::InvalidValue>) -> Result<T, ApiError> {
    parsed.map_err(|e| ApiError::Invalid { field: name.to_owned(), message: e.0 })
}

fn time_field(name: &str, raw: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    raw.map(|t| {
        OffsetDateTime::parse(t, &Rfc3339).map_err(|_| ApiError::Invalid {
            field: name.to_owned(),
            message: format!("{t:?} is not an RFC 3339 time (e.g. 2026-12-31T00:00:00Z)"),
        })
    })
    .transpose()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewSystemBody {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    id: String,
    #[schema(min_length = 1, max_length = 500, pattern = "\\S")]
    name: String,
    #[schema(min_length = 1, max_length = 500, pattern = "\\S")]
    purpose: String,
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    business_owner: String,
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    technical_owner: String,
    #[serde(default)]
    #[schema(pattern = "^(sandbox|pilot)$")]
    tier: Option<String>,
    #[serde(default)]
    #[schema(format = DateTime)]
    pilot_ends_at: Option<String>,
    #[serde(default)]
    data_classification: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchSystemBody {
    #[serde(default)]
    #[schema(min_length = 1, max_length = 500, pattern = "\\S")]
    name: Option<String>,
    #[serde(default)]
    purpose: Option<String>,
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    business_owner: Option<String>,
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    technical_owner: Option<String>,
    #[serde(default)]
    #[schema(format = DateTime)]
    pilot_ends_at: Option<String>,
    #[serde(default)]
    data_classification: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EndDateBody {
    #[serde(default)]
    #[schema(format = DateTime)]
    pilot_ends_at: Option<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReinstateBody {
    /// The new end date of a sandbox or pilot.
    #[serde(default)]
    #[schema(format = DateTime)]
    pilot_ends_at: Option<String>,
    /// Why; recorded. Required when the new end date starts a new
    /// `lifecycle.max_pilot` period.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 500)]
    reason: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewOwnerBody {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    id: String,
    #[schema(min_length = 1, max_length = 500, pattern = "\\S")]
    display_name: String,
    #[schema(format = Email)]
    email: String,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DepartBody {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewGrantBody {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    id: String,
    issuer: String,
    subject: String,
    audiences: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    default_scopes: Vec<String>,
    #[serde(default)]
    kinds: Option<Vec<String>>,
    max_ttl: String,
    #[serde(default)]
    binding: Option<String>,
    /// Most targets (audiences, resources) one token may name (default 1).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 16)]
    max_audiences: Option<u32>,
    /// Whom the workload may act for (delegation, RFC 8693).
    #[serde(default)]
    on_behalf_of: Vec<apply::OnBehalfOfEntry>,
    /// `none` (default) or `required`: every exchange waits for a person's approval.
    #[serde(default)]
    #[schema(pattern = "^(none|required)$")]
    approval: Option<String>,
    /// Who may approve: groups or email addresses (default: anyone with the approver role).
    #[serde(default)]
    approvers: Vec<String>,
    /// The longest approval, e.g. "1h" (the default; at most 7d).
    #[serde(default)]
    approval_max_duration: Option<String>,
    /// Whether an owner of the system may approve (default false).
    #[serde(default)]
    allow_owner_approval: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    reason: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct GrantQuery {
    id: String,
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct CatalogQuery {
    /// Plan and report, change nothing.
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct JobsQuery {
    #[serde(default)]
    all: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewAdminTokenBody {
    #[schema(pattern = "^(admin|operator|auditor|introspector)$")]
    role: String,
    /// How long the token lasts, e.g. "30d" (default 90d, at most 732d).
    #[serde(default)]
    #[schema(pattern = "^[0-9]+(ms|s|m|h|d)$")]
    ttl: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u001f\\u007f-\\u009f\\s][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    name: String,
}

/// An optional JSON body: an empty body means the defaults; a body that is
/// there must be a JSON object, as everywhere.
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Default> axum::extract::FromRequest<S> for OptionalBody<T>
where
    AppState: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let empty = req.headers().get(axum::http::header::CONTENT_LENGTH).is_some_and(|v| v == "0")
            || !req.headers().contains_key(axum::http::header::CONTENT_TYPE);
        if empty {
            return Ok(Self(T::default()));
        }
        JsonBody::<T>::from_request(req, state).await.map(|JsonBody(v)| Self(v))
    }
}

#[utoipa::path(
    get, path = "/v1/systems", tag = "systems",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"systems\": [System]}`", body = Object),
        Refusals,
    )
)]
async fn list_systems(State(state): State<AppState>, _: Authorized<Read>) -> Result<Response, ApiError> {
    let systems: Vec<_> = state.broker.systems().await?.into_iter().map(|v| v.system).collect();
    Ok(Json(json!({ "systems": systems })).into_response())
}

#[utoipa::path(
    post, path = "/v1/systems", tag = "systems",
    request_body(content = NewSystemBody, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "The new System", body = Object),
        Invalid, Conflict, BodyErrors, Refusals,
    )
)]
async fn create_system(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    JsonBody(body): JsonBody<NewSystemBody>,
) -> Result<Response, ApiError> {
    let tier = match body.tier.as_deref() {
        None => Tier::Sandbox,
        Some(t) => Tier::parse(t).ok_or_else(|| ApiError::Invalid {
            field: "tier".into(),
            message: "must be sandbox or pilot (production is reached through promotion)".into(),
        })?,
    };
    let input = NewSystem {
        id: field("id", SystemId::parse(&body.id))?,
        name: body.name,
        purpose: body.purpose,
        business_owner: field("business_owner", OwnerId::parse(&body.business_owner))?,
        technical_owner: field("technical_owner", OwnerId::parse(&body.technical_owner))?,
        tier,
        pilot_ends_at: time_field("pilot_ends_at", body.pilot_ends_at.as_deref())?,
        data_classification: body.data_classification,
    };
    let system = state.broker.create_system(input, &caller, &meta).await?;
    Ok((StatusCode::CREATED, Json(json!(system))).into_response())
}

#[utoipa::path(
    get, path = "/v1/systems/{id}", tag = "systems",
    params(("id" = String, Path, description = "System id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "System", body = Object),
        Invalid, NotFound, Refusals,
    )
)]
async fn show_system(
    State(state): State<AppState>,
    _: Authorized<Read>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = state.broker.system_view(&system_id(&id)?).await?;
    Ok(Json(json!(view.system)).into_response())
}

#[utoipa::path(
    patch, path = "/v1/systems/{id}", tag = "systems",
    request_body(content = PatchSystemBody, content_type = "application/json"),
    params(("id" = String, Path, description = "System id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "System", body = Object),
        Invalid, NotFound, Conflict, BodyErrors, Refusals,
    )
)]
async fn update_system(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PatchSystemBody>,
) -> Result<Response, ApiError> {
    let patch = SystemPatch {
        name: body.name,
        purpose: body.purpose,
        business_owner: body.business_owner.map(|o| field("business_owner", OwnerId::parse(&o))).transpose()?,
        technical_owner: body.technical_owner.map(|o| field("technical_owner", OwnerId::parse(&o))).transpose()?,
        pilot_ends_at: time_field("pilot_ends_at", body.pilot_ends_at.as_deref())?,
        data_classification: body.data_classification,
    };
    let system = state.broker.update_system(&system_id(&id)?, patch, &caller, &meta).await?;
    Ok(Json(json!(system)).into_response())
}

#[utoipa::path(
    post, path = "/v1/systems/{id}/promote", tag = "systems",
    request_body(content = Option<EndDateBody>, content_type = "application/json"),
    params(("id" = String, Path, description = "System id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{system, gate}`", body = Object),
        Invalid, NotFound, Conflict, BodyErrors, Refusals,
    )
)]
async fn promote(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Path(id): Path<String>,
    OptionalBody(body): OptionalBody<EndDateBody>,
) -> Result<Response, ApiError> {
    let end = time_field("pilot_ends_at", body.pilot_ends_at.as_deref())?;
    let (system, gate) = state.broker.promote_system(&system_id(&id)?, end, &caller, &meta).await?;
    Ok(Json(json!({"system": system, "gate": gate})).into_response())
}

#[utoipa::path(
    post, path = "/v1/systems/{id}/suspend", tag = "systems",
    request_body(content = ReasonBody, content_type = "application/json"),
    params(("id" = String, Path, description = "System id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{system, revoked}`", body = Object),
        Invalid, NotFound, Conflict, BodyErrors, Refusals,
    )
)]
async fn suspend(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> Result<Response, ApiError> {
    let (system, outcome) = state.broker.suspend_system(&system_id(&id)?, &body.reason, &caller, &meta).await?;
    Ok(Json(json!({"system": system, "revoked": outcome.revoked})).into_response())
}

#[utoipa::path(
    post, path = "/v1/systems/{id}/retire", tag = "systems",
    request_body(content = ReasonBody, content_type = "application/json"),
    params(("id" = String, Path, description = "System id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{system, revoked}`", body = Object),
        Invalid, NotFound, Conflict, BodyErrors, Refusals,
    )
)]
async fn retire(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> Result<Response, ApiError> {
    let (system, outcome) = state.broker.retire_system(&system_id(&id)?, &body.reason, &caller, &meta).await?;
    Ok(Json(json!({"system": system, "revoked": outcome.revoked})).into_response())
}

#[utoipa::path(
    post, path = "/v1/systems/{id}/reinstate", tag = "systems",
    request_body(content = Option<ReinstateBody>, content_type = "application/json"),
    params(("id" = String, Path, description = "System id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "System", body = Object),
        Invalid, NotFound, Conflict, BodyErrors, Refusals,
    )
)]
async fn reinstate(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Path(id): Path<String>,
    OptionalBody(body): OptionalBody<ReinstateBody>,
) -> Result<Response, ApiError> {
    let end = time_field("pilot_ends_at", body.pilot_ends_at.as_deref())?;
    let system = state.broker.reinstate_system(&system_id(&id)?, end, body.reason, &caller, &meta).await?;
    Ok(Json(json!(system)).into_response())
}

#[utoipa::path(
    post, path = "/v1/systems/{id}/revoke", tag = "systems",
    request_body(content = ReasonBody, content_type = "application/json"),
    params(("id" = String, Path, description = "System id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{revoked, systems}`", body = Object),
        Invalid, NotFound, BodyErrors, Refusals,
    )
)]
async fn revoke_system(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> Result<Response, ApiError> {
    let revocation = state.broker.revoke_system(&system_id(&id)?, &body.reason, &caller, &meta).await?;
    Ok(Json(json!(revocation)).into_response())
}

#[utoipa::path(
    get, path = "/v1/systems/{id}/grants", tag = "systems",
    params(("id" = String, Path, description = "System id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"grants\": [Grant]}`", body = Object),
        Invalid, NotFound, Refusals,
    )
)]
async fn list_grants(
    State(state): State<AppState>,
    _: Authorized<Read>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let grants = state.broker.grants_of(&system_id(&id)?).await?;
    Ok(Json(json!({ "grants": grants })).into_response())
}

#[utoipa::path(
    post, path = "/v1/systems/{id}/grants", tag = "systems",
    request_body(content = NewGrantBody, content_type = "application/json"),
    params(("id" = String, Path, description = "System id")),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "The new Grant", body = Object),
        Invalid, NotFound, Conflict, BodyErrors, Refusals,
    )
)]
async fn create_grant(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewGrantBody>,
) -> Result<Response, ApiError> {
    let entry = GrantEntry {
        id: body.id,
        system: system_id(&id)?.to_string(),
        issuer: body.issuer,
        subject: body.subject,
        audiences: body.audiences,
        scopes: body.scopes,
        default_scopes: body.default_scopes,
        kinds: body.kinds,
        max_ttl: body.max_ttl,
        binding: body.binding,
        max_audiences: body.max_audiences,
        on_behalf_of: body.on_behalf_of,
        approval: body.approval,
        approvers: body.approvers,
        approval_max_duration: body.approval_max_duration,
        allow_owner_approval: body.allow_owner_approval,
    };
    let grant =
        apply::grant(entry, &state.broker.issuer_names, &state.broker.logins.backends(), state.broker.limits.ceiling)
            .map_err(|errs| {
            let (field, message) = errs.into_iter().next().unwrap_or(("grant", "invalid".into()));
            ApiError::Invalid { field: field.to_owned(), message }
        })?;
    let grant = state.broker.create_grant(grant, &caller, &meta).await?;
    Ok((StatusCode::CREATED, Json(json!(grant))).into_response())
}

#[utoipa::path(
    delete, path = "/v1/systems/{id}/grants", tag = "systems",
    params(("id" = String, Path, description = "System id"), GrantQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{revoked}`: deleted, and what was issued under it revoked", body = Object),
        (status = 409, description = "Would leave a production system without a grant", body = ErrorBody),
        Invalid, NotFound, Refusals,
    )
)]
async fn delete_grant_by_query(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Path(id): Path<String>,
    Params(query): Params<GrantQuery>,
) -> Result<Response, ApiError> {
    let grant = GrantId::parse(&query.id).map_err(|e| ApiError::NotFound(e.0))?;
    let revoked = state.broker.delete_grant(&system_id(&id)?, &grant, &caller, &meta).await?;
    Ok(Json(json!({"revoked": revoked})).into_response())
}

#[utoipa::path(
    delete, path = "/v1/systems/{id}/grants/{grant}", tag = "systems",
    params(("id" = String, Path, description = "System id"), ("grant" = String, Path, description = "Grant id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{revoked}`: deleted, and what was issued under it revoked", body = Object),
        (status = 409, description = "Would leave a production system without a grant", body = ErrorBody),
        Invalid, NotFound, Refusals,
    )
)]
async fn delete_grant(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Path((id, grant)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let grant = GrantId::parse(&grant).map_err(|e| ApiError::NotFound(e.0))?;
    let revoked = state.broker.delete_grant(&system_id(&id)?, &grant, &caller, &meta).await?;
    Ok(Json(json!({"revoked": revoked})).into_response())
}

#[utoipa::path(
    get, path = "/v1/systems/{id}/credentials", tag = "systems",
    params(("id" = String, Path, description = "System id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Outstanding credentials (never the token)", body = Object),
        Invalid, NotFound, Refusals,
    )
)]
async fn credentials(
    State(state): State<AppState>,
    _: Authorized<Read>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let credentials = state.broker.credentials_of(&system_id(&id)?).await?;
    Ok(Json(json!({ "credentials": credentials })).into_response())
}

#[utoipa::path(
    get, path = "/v1/owners", tag = "owners",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"owners\": [Owner]}`", body = Object),
        Refusals,
    )
)]
async fn list_owners(State(state): State<AppState>, _: Authorized<Read>) -> Result<Response, ApiError> {
    let owners = state.broker.owners().await?;
    Ok(Json(json!({ "owners": owners })).into_response())
}

#[utoipa::path(
    get, path = "/v1/owners/{id}", tag = "owners",
    params(("id" = String, Path, description = "Owner id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Owner", body = Object),
        Invalid, NotFound, Refusals,
    )
)]
async fn show_owner(
    State(state): State<AppState>,
    _: Authorized<Read>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = state.broker.owner(&owner_id(&id)?).await?;
    let people = state.broker.sessions.people_of_owner(owner.id.as_str()).await.map_err(crate::broker::Unavailable)?;
    let mut body = json!(owner);
    body["people"] = json!(people);
    Ok(Json(body).into_response())
}

#[utoipa::path(
    post, path = "/v1/owners", tag = "owners",
    request_body(content = NewOwnerBody, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "The new Owner", body = Object),
        Invalid, Conflict, BodyErrors, Refusals,
    )
)]
async fn create_owner(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    JsonBody(body): JsonBody<NewOwnerBody>,
) -> Result<Response, ApiError> {
    let id = field("id", OwnerId::parse(&body.id))?;
    let owner = state.broker.create_owner(id, body.display_name, body.email, &caller, &meta).await?;
    Ok((StatusCode::CREATED, Json(json!(owner))).into_response())
}

#[utoipa::path(
    post, path = "/v1/owners/{id}/recertify", tag = "owners",
    params(("id" = String, Path, description = "Owner id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Owner with a new attested_until", body = Object),
        Invalid, NotFound, Conflict, Refusals,
    )
)]
async fn recertify(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = state.broker.recertify_owner(&owner_id(&id)?, &caller, &meta).await?;
    Ok(Json(json!(owner)).into_response())
}

#[utoipa::path(
    post, path = "/v1/owners/{id}/depart", tag = "owners",
    request_body(content = Option<DepartBody>, content_type = "application/json"),
    params(("id" = String, Path, description = "Owner id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Owner", body = Object),
        Invalid, NotFound, Conflict, BodyErrors, Refusals,
    )
)]
async fn depart(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Path(id): Path<String>,
    OptionalBody(body): OptionalBody<DepartBody>,
) -> Result<Response, ApiError> {
    let owner = state.broker.depart_owner(&owner_id(&id)?, body.reason.as_deref(), &caller, &meta).await?;
    Ok(Json(json!(owner)).into_response())
}

#[utoipa::path(
    post, path = "/v1/owners/{id}/revoke", tag = "owners",
    request_body(content = ReasonBody, content_type = "application/json"),
    params(("id" = String, Path, description = "Owner id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{revoked, systems}`", body = Object),
        Invalid, NotFound, BodyErrors, Refusals,
    )
)]
async fn revoke_owner(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> Result<Response, ApiError> {
    let revocation = state.broker.revoke_owner(&owner_id(&id)?, &body.reason, &caller, &meta).await?;
    Ok(Json(json!(revocation)).into_response())
}

/// `POST /v1/revoke`: one credential by `jti`, or every credential of an
/// identity by `issuer` + `subject` (a workload's own, and those issued on
/// its behalf).
#[utoipa::path(
    post, path = "/v1/revoke", tag = "operations",
    request_body(content = RevokeBody, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{revoked}`", body = Object),
        Invalid, NotFound, BodyErrors, Refusals,
    )
)]
async fn revoke(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    JsonBody(body): JsonBody<RevokeBody>,
) -> Result<Response, ApiError> {
    let revocation = match (body.jti, body.issuer, body.subject) {
        (Some(jti), None, None) => state.broker.revoke_jti(&jti, &body.reason, &caller, &meta).await?,
        (None, Some(issuer), Some(subject)) => {
            state.broker.revoke_workload(&issuer, &subject, &body.reason, &caller, &meta).await?
        }
        _ => {
            return Err(ApiError::Invalid {
                field: "jti".into(),
                message: "give either jti, or issuer and subject (a workload identity)".into(),
            });
        }
    };
    Ok(Json(json!(revocation)).into_response())
}

/// `POST /v1/catalog`: a catalog file (`halflife apply`) as JSON, applied
/// under the caller's name by the same rules as every other change.
#[utoipa::path(
    post, path = "/v1/catalog", tag = "operations",
    request_body(content = apply::ApplyFile, content_type = "application/json"),
    params(CatalogQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{created, updated, unchanged, suspended, dry_run}`", body = Object),
        (status = 400, description = "Invalid catalog; `problems` names each entry and field", body = ErrorBody),
        (
            status = 409,
            description = "Conflicts with the rules or the current state (recorded as catalog.refused)",
            body = ErrorBody
        ),
        NotFound, BodyErrors, Refusals,
    )
)]
async fn apply_catalog(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<Write>,
    Params(query): Params<CatalogQuery>,
    JsonBody(body): JsonBody<apply::ApplyFile>,
) -> Result<Response, ApiError> {
    let report = state.broker.apply_catalog(body, query.dry_run, &caller, &meta).await?;
    let mut value = json!(report);
    if let Some(map) = value.as_object_mut() {
        map.insert("dry_run".into(), json!(query.dry_run));
    }
    Ok(Json(value).into_response())
}

#[utoipa::path(
    get, path = "/v1/expiring", tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{deadlines, notices}`", body = Object),
        Refusals,
    )
)]
async fn expiring(State(state): State<AppState>, _: Authorized<Read>) -> Result<Response, ApiError> {
    let now = state.broker.clock.now();
    let deadlines = state.broker.deadlines(now).await?;
    let notices = state
        .broker
        .lifecycle
        .list_notices(now - state.broker.lifecycle_policy.notice_window)
        .await
        .map_err(crate::broker::Unavailable)?;
    Ok(Json(json!({ "deadlines": deadlines, "notices": notices })).into_response())
}

#[utoipa::path(
    get, path = "/v1/jobs", tag = "operations",
    params(JobsQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"jobs\": [...]}`", body = Object),
        Invalid, Refusals,
    )
)]
async fn jobs(
    State(state): State<AppState>,
    _: Authorized<Read>,
    Params(query): Params<JobsQuery>,
) -> Result<Response, ApiError> {
    let jobs = state.broker.jobs.list_jobs(query.all).await.map_err(crate::broker::Unavailable)?;
    let jobs: Vec<_> = jobs
        .into_iter()
        .map(|j| {
            let status = if j.state == "done" {
                "done"
            } else if j.attempts >= crate::broker::lifecycle::FAILING_AFTER {
                "failing"
            } else {
                "pending"
            };
            let mut value = json!(j);
            if let Some(map) = value.as_object_mut() {
                map.insert("status".into(), json!(status));
            }
            value
        })
        .collect();
    Ok(Json(json!({ "jobs": jobs })).into_response())
}

#[utoipa::path(
    post, path = "/v1/admin-tokens", tag = "operations",
    request_body(content = NewAdminTokenBody, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "`{id, name, role, token}`: the token is shown once", body = Object),
        Invalid, BodyErrors, Refusals,
    )
)]
async fn create_admin_token(
    State(state): State<AppState>,
    Authorized { caller, .. }: Authorized<AdminOnly>,
    JsonBody(body): JsonBody<NewAdminTokenBody>,
) -> Result<Response, ApiError> {
    let role = crate::broker::admin::automation_role(&body.role)
        .map_err(|message| ApiError::Invalid { field: "role".into(), message })?;
    let name = crate::broker::admin::check_token_name(&body.name)
        .map_err(|message| ApiError::Invalid { field: "name".into(), message })?;
    let ttl = crate::broker::admin::check_token_ttl(body.ttl.as_deref())
        .map_err(|message| ApiError::Invalid { field: "ttl".into(), message })?;
    let (record, token) = crate::broker::admin::create_admin_token(
        state.broker.admin_tokens.as_ref(),
        role,
        name,
        ttl,
        &caller.actor(),
        state.broker.clock.now(),
    )
    .await?;
    use secrecy::ExposeSecret;
    let body = json!({
        "id": record.id, "name": record.name, "role": record.role,
        "expires_at": record.expires_at.map(crate::domain::rfc3339), "token": token.expose_secret(),
    });
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the new key is published before it signs, e.g. "10m".
    #[serde(default)]
    #[schema(pattern = "^[0-9]+(ms|s|m|h|d)$")]
    pre_publish: Option<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RetireKeyBody {
    /// Retire even though tokens it signed may still be valid.
    #[serde(default)]
    force: bool,
}

/// `GET /v1/keys`: every signing key and what it does now.
#[utoipa::path(
    get, path = "/v1/keys", tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"keys\": [Key]}`", body = Object),
        Refusals,
    )
)]
async fn list_keys(State(state): State<AppState>, _: Authorized<Read>) -> Result<Response, ApiError> {
    let now = state.broker.clock.now();
    Ok(Json(json!({"keys": state.broker.key_list(now)})).into_response())
}

/// `POST /v1/keys/rotate`: the next key, published now, signing after the
/// pre-publish time.
#[utoipa::path(
    post, path = "/v1/keys/rotate", tag = "operations",
    request_body(content = Option<RotateBody>, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "`{\"key\": Key}` (pending)", body = Object),
        Invalid, Conflict, BodyErrors, Refusals,
    )
)]
async fn rotate_key(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<AdminOnly>,
    OptionalBody(body): OptionalBody<RotateBody>,
) -> Result<Response, ApiError> {
    let pre_publish = body
        .pre_publish
        .map(|text| {
            humantime::parse_duration(&text).map_err(|_| ApiError::Invalid {
                field: "pre_publish".into(),
                message: format!("{text:?} is not a duration such as 10m"),
            })
        })
        .transpose()?;
    let now = state.broker.clock.now();
    let key = state.broker.rotate_key(now, pre_publish, &caller.actor(), &meta).await?;
    Ok((StatusCode::CREATED, Json(json!({"key": key}))).into_response())
}

/// `POST /v1/keys/{kid}/retire`
#[utoipa::path(
    post, path = "/v1/keys/{kid}/retire", tag = "operations",
    request_body(content = Option<RetireKeyBody>, content_type = "application/json"),
    params(("kid" = String, Path, description = "Key id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"key\": Key}` (retired)", body = Object),
        Invalid, NotFound, Conflict, BodyErrors, Refusals,
    )
)]
async fn retire_key(
    State(state): State<AppState>,
    Authorized { caller, meta, .. }: Authorized<AdminOnly>,
    Path(kid): Path<String>,
    OptionalBody(body): OptionalBody<RetireKeyBody>,
) -> Result<Response, ApiError> {
    let now = state.broker.clock.now();
    let key = state.broker.retire_key(&kid, now, body.force, &caller.actor(), &meta).await?;
    Ok(Json(json!({"key": key})).into_response())
}

/// Declares the operator API once: the OpenAPI part (`Api`, with each
/// handler's path, method and answers from its annotation) and `handler`,
/// which finds a handler by its operation id for [`router`].
macro_rules! operator_api {
    (handlers($($handler:ident),+ $(,)?), $components:meta) => {
        /// The operator API's part of the OpenAPI document.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($handler),+), $components)]
        pub struct Api;

        /// The handler of operation `id`, for `method`.
        fn handler(id: &str, method: MethodFilter) -> Option<MethodRouter<AppState>> {
            match id {
                $(stringify!($handler) => Some(on(method, $handler)),)+
                _ => None,
            }
        }
    };
}

operator_api!(
    handlers(
        list_systems,
        create_system,
        show_system,
        update_system,
        promote,
        suspend,
        retire,
        reinstate,
        revoke_system,
        list_grants,
        create_grant,
        delete_grant_by_query,
        delete_grant,
        credentials,
        list_owners,
        create_owner,
        show_owner,
        recertify,
        depart,
        revoke_owner,
        revoke,
        apply_catalog,
        expiring,
        jobs,
        create_admin_token,
        list_admin_tokens,
        revoke_admin_token,
        sign_in_info,
        whoami,
        list_sessions,
        revoke_session,
        list_access_requests,
        show_access_request,
        approve_access,
        deny_access,
        revoke_access,
        list_reviews,
        review_done,
        list_keys,
        rotate_key,
        retire_key
    ),
    components(schemas(
        NewSystemBody,
        PatchSystemBody,
        ReasonBody,
        EndDateBody,
        ReinstateBody,
        NewOwnerBody,
        DepartBody,
        NewGrantBody,
        RevokeBody,
        NewAdminTokenBody,
        RotateBody,
        RetireKeyBody,
        ApproveBody,
        DecisionReasonBody,
        ReviewBody
    ))
);
