//! The audit API: query, streamed export, checkpoints, verification, and
//! one credential's story. Read-only: auditors, operators and admins.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AppState;
use super::error::ApiError;
use super::extract::{Authorized, Params, Path, Roles};
use super::openapi::errors::{Invalid, NotFound, Refusals};
use crate::audit::AuditRecord;
use crate::broker::Unavailable;
use crate::broker::audit::PAGE;
use crate::domain::model::Role;
use crate::store::AuditFilter;

/// Most events one page of the JSON API returns.
pub const MAX_LIMIT: u32 = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/audit/events", get(events))
        .route("/v1/audit/checkpoints", get(checkpoints))
        .route("/v1/audit/verify", get(verify))
        .route("/v1/credentials/{jti}", get(credential))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub system: Option<String>,
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub owner: Option<String>,
    pub workload: Option<String>,
    pub actor: Option<String>,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub kind: Option<String>,
    #[param(pattern = "^(success|denied|failure)$")]
    pub outcome: Option<String>,
    pub jti: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub cursor: Option<i64>,
    pub limit: Option<u32>,
    #[param(pattern = "^(json|jsonl|csv)$")]
    pub format: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct VerifyQuery {
    from: Option<i64>,
    to: Option<i64>,
}

/// RFC 3339, or a duration before now such as `24h`.
fn instant(field: &str, raw: &str, now: OffsetDateTime) -> Result<i64, ApiError> {
    let invalid = || ApiError::Invalid {
        field: field.to_owned(),
        message: format!("{raw:?} is neither an RFC 3339 time nor a duration such as 24h"),
    };
    let t = match OffsetDateTime::parse(raw, &Rfc3339) {
        Ok(t) => t,
        Err(_) => {
            let d = humantime::parse_duration(raw).map_err(|_| invalid())?;
            now.checked_sub(time::Duration::try_from(d).map_err(|_| invalid())?).ok_or_else(invalid)?
        }
    };
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| invalid())
}

pub fn filter_of(q: &EventsQuery, now: OffsetDateTime) -> Result<AuditFilter, ApiError> {
    if let Some(outcome) = &q.outcome
        && !matches!(outcome.as_str(), "success" | "denied" | "failure")
    {
        return Err(ApiError::Invalid {
            field: "outcome".into(),
            message: "must be success, denied or failure".into(),
        });
    }
    if let Some(owner) = &q.owner {
        crate::domain::values::OwnerId::parse(owner)
            .map_err(|e| ApiError::Invalid { field: "owner".into(), message: e.0 })?;
    }
    Ok(AuditFilter {
        system: q.system.clone(),
        owner: q.owner.clone(),
        workload: q.workload.clone(),
        actor: q.actor.clone(),
        subject: q.subject.clone(),
        issuer: q.issuer.clone(),
        kind: q.kind.clone(),
        outcome: q.outcome.clone(),
        jti: q.jti.clone(),
        since_ms: q.since.as_deref().map(|s| instant("since", s, now)).transpose()?,
        until_ms: q.until.as_deref().map(|s| instant("until", s, now)).transpose()?,
        from_seq: None,
        to_seq: None,
        newest_first: false,
    })
}

/// Admins, operators and auditors.
enum AuditRead {}

impl Roles for AuditRead {
    fn allows(role: Role) -> bool {
        matches!(role, Role::Admin | Role::Operator | Role::Auditor)
    }
    const REFUSAL: &'static str = "read the audit log";
}

const CSV_HEADER: &[&str] = &[
    "seq",
    "time",
    "kind",
    "outcome",
    "reason",
    "actor",
    "system_id",
    "owners",
    "grant_id",
    "jti",
    "request_id",
    "source",
    "attestation_issuer",
    "issuer",
    "subject",
    "attestation_id",
    "audience",
    "scopes",
    "iat",
    "exp",
    "detail",
    "prev_hash",
    "hash",
];

fn csv_rows(events: &[AuditRecord], header: bool) -> Result<Vec<u8>, String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if header {
        w.write_record(CSV_HEADER).map_err(|e| e.to_string())?;
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    for e in events {
        w.write_record([
            e.seq.to_string(),
            e.time(),
            e.event.kind.clone(),
            e.event.outcome.as_str().to_owned(),
            opt(&e.event.reason),
            opt(&e.event.actor),
            opt(&e.event.system_id),
            opt(&e.event.owners),
            opt(&e.event.grant_id),
            opt(&e.event.jti),
            opt(&e.event.request_id),
            opt(&e.event.source),
            opt(&e.event.attestation_issuer),
            opt(&e.issuer),
            opt(&e.event.subject),
            opt(&e.event.attestation_id),
            opt(&e.event.audience),
            opt(&e.event.scopes),
            num(e.event.iat),
            num(e.event.exp),
            e.event.detail.as_ref().map(|d| d.to_string()).unwrap_or_default(),
            e.prev_hash.clone(),
            e.hash.clone(),
        ])
        .map_err(|e| e.to_string())?;
    }
    w.into_inner().map_err(|e| e.to_string())
}

fn jsonl_rows(events: &[AuditRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        if serde_json::to_writer(&mut out, e).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// `GET /v1/audit/events`: a page as JSON, or the whole result streamed as
/// JSONL or CSV (page by page: constant memory however large).
#[utoipa::path(
    get, path = "/v1/audit/events", tag = "audit",
    params(EventsQuery),
    security(("admin_token" = [])),
    responses(
        (
            status = 200,
            description = "`{events, next_cursor}` (json); JSON lines (jsonl) or CSV (csv), streamed",
            body = Object
        ),
        Invalid, Refusals,
    )
)]
async fn events(
    State(state): State<AppState>,
    _: Authorized<AuditRead>,
    Params(q): Params<EventsQuery>,
) -> Result<Response, ApiError> {
    let mut filter = filter_of(&q, state.broker.clock.now())?;
    filter.issuer = filter.issuer.map(|issuer| state.broker.issuer_filter(&issuer));
    let format = q.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "jsonl" | "csv") {
        return Err(ApiError::Invalid { field: "format".into(), message: "must be json, jsonl or csv".into() });
    }
    if format == "json" {
        let limit = q.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::Invalid {
                field: "limit".into(),
                message: format!("must be between 1 and {MAX_LIMIT}"),
            });
        }
        let mut events = state.broker.audit.audit_events(&filter, q.cursor, limit).await.map_err(Unavailable)?;
        state.broker.name_issuers(&mut events);
        let next = (events.len() == limit as usize).then(|| events.last().map(|e| e.seq)).flatten();
        return Ok(Json(json!({"events": events, "next_cursor": next})).into_response());
    }
    Ok(export(&state, filter, q.cursor, format == "csv"))
}

/// The events `filter` selects, after `cursor`, streamed as CSV (with a
/// header row) or JSON lines, page by page: constant memory however many.
pub fn export(state: &AppState, filter: AuditFilter, cursor: Option<i64>, csv: bool) -> Response {
    let reader = state.broker.audit.clone();
    let broker = state.broker.clone();
    let stream = futures_util::stream::unfold((cursor, false, true), move |(after, done, first)| {
        let reader = reader.clone();
        let filter = filter.clone();
        let broker = broker.clone();
        async move {
            if done {
                return None;
            }
            let mut page = match reader.audit_events(&filter, after, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "audit export failed mid-stream");
                    return Some((Err(std::io::Error::other("storage unavailable")), (after, true, false)));
                }
            };
            broker.name_issuers(&mut page);
            let finished = page.len() < PAGE as usize;
            let next = page.last().map(|e| e.seq).or(after);
            let chunk = if csv { csv_rows(&page, first).map_err(std::io::Error::other) } else { Ok(jsonl_rows(&page)) };
            Some((chunk.map(Bytes::from), (next, finished, false)))
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    let content_type = if csv { "text/csv; charset=utf-8" } else { "application/x-ndjson" };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[utoipa::path(
    get, path = "/v1/audit/checkpoints", tag = "audit",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"checkpoints\": [...]}`", body = Object),
        Refusals,
    )
)]
async fn checkpoints(State(state): State<AppState>, _: Authorized<AuditRead>) -> Result<Response, ApiError> {
    let checkpoints = state.broker.audit.checkpoints().await.map_err(Unavailable)?;
    Ok(Json(json!({"checkpoints": checkpoints})).into_response())
}

#[utoipa::path(
    get, path = "/v1/audit/verify", tag = "audit",
    params(VerifyQuery),
    security(("admin_token" = [])),
    responses(
        (
            status = 200,
            description = "`{ok, events_checked, checkpoints_checked, head_seq, first_problem}`",
            body = Object
        ),
        Invalid, Refusals,
    )
)]
async fn verify(
    State(state): State<AppState>,
    _: Authorized<AuditRead>,
    Params(q): Params<VerifyQuery>,
) -> Result<Response, ApiError> {
    let report = state.broker.verify_audit(q.from, q.to).await?;
    Ok(Json(json!(report)).into_response())
}

#[utoipa::path(
    get, path = "/v1/credentials/{jti}", tag = "audit",
    params(("jti" = String, Path, description = "Credential id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A credential and its events", body = Object),
        Invalid, NotFound, Refusals,
    )
)]
async fn credential(
    State(state): State<AppState>,
    _: Authorized<AuditRead>,
    Path(jti): Path<String>,
) -> Result<Response, ApiError> {
    match state.broker.credential_story(&jti).await? {
        Some(story) => Ok(Json(story).into_response()),
        None => Err(ApiError::NotFound(format!("no credential with jti {jti}"))),
    }
}

/// The audit API's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(events, checkpoints, verify, credential))]
pub struct Api;
