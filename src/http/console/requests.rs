//! Access requests: the approver's inbox, decisions, recent decisions, and
//! break-glass approvals awaiting a second person's review.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};

use super::session::{PostedAs, ViewerAs};
use super::{DoneQuery, Section, after, encode, notice, relative, render, when};
use crate::broker::approvals::Ruling;
use crate::domain::approval::{AccessRequest, AccessState, Decision};
use crate::http::AppState;
use crate::http::approvals::{Approvers, Deciders};
use crate::http::error::ApiError;
use crate::http::extract::{Params, Path};

/// How many decided requests the page lists.
const RECENT: i64 = 50;

/// `GET /console/requests`
pub async fn page(
    State(state): State<AppState>,
    ViewerAs { viewer, .. }: ViewerAs<Deciders>,
    Params(query): Params<DoneQuery>,
) -> Result<Response, ApiError> {
    let broker = &state.broker;
    let now = broker.clock.now();
    let pending: Vec<AccessRequest> = broker
        .access_requests(Some(AccessState::Pending), 1000)
        .await?
        .into_iter()
        .filter(|r| r.waiting(now))
        .collect();
    let reviews = broker.reviews().await?;
    let recent: Vec<AccessRequest> =
        broker.access_requests(None, RECENT).await?.into_iter().filter(|r| r.state != AccessState::Pending).collect();
    let decides = viewer.decides();
    let body = html! {
        (notice(query.done.as_deref()))
        h1 { "Access requests" }
        section #pending {
            h2 { "Waiting for a decision" }
            @if pending.is_empty() { p { "Nothing waits." } }
            @for r in &pending {
                article.request id={ "request-" (r.id) } {
                    (summary(r, now))
                    @if decides {
                        div.decide {
                            form method="post" action={ "/console/requests/" (encode(&r.id)) "/approve" } {
                                (viewer.csrf_field())
                                label { "For " input type="text" name="duration" placeholder="1h" size="6"; }
                                label { "Reason " input type="text" name="reason" maxlength="500"; }
                                button type="submit" { "Approve" }
                            }
                            form method="post" action={ "/console/requests/" (encode(&r.id)) "/deny" } {
                                (viewer.csrf_field())
                                label { "Reason " input type="text" name="reason" maxlength="500"; }
                                button.secondary type="submit" { "Deny" }
                            }
                        }
                    }
                }
            }
        }
        section #reviews {
            h2 { "Break-glass approvals awaiting review" }
            @if reviews.is_empty() { p { "None." } }
            @for r in &reviews {
                article.request id={ "review-" (r.id) } {
                    (summary(r, now))
                    @if decides {
                        form method="post" action={ "/console/reviews/" (encode(&r.id)) "/done" } {
                            (viewer.csrf_field())
                            label { "Note " input type="text" name="note" maxlength="500"; }
                            button type="submit" { "Mark reviewed" }
                        }
                    }
                }
            }
        }
        section #decided {
            h2 { "Recently decided" }
            table {
                thead { tr { th { "Request" } th { "System" } th { "Workload" } th { "State" } th { "By" } th { "Until" } th { "" } } }
                tbody {
                    @for r in &recent {
                        tr {
                            td { (r.id) }
                            td { a href={ "/console/systems/" (encode(&r.system_id)) } { (r.system_id) } }
                            td { (r.issuer) ": " (r.subject) }
                            td { (r.state.as_str()) @if r.break_glass { " (break glass)" } }
                            td { (r.decided_by.as_deref().unwrap_or("")) }
                            td { @if let Some(until) = r.approved_until { (when(until)) } }
                            td {
                                @if r.allows(now) && decides {
                                    form method="post" action={ "/console/requests/" (encode(&r.id)) "/revoke" } {
                                        (viewer.csrf_field())
                                        input type="hidden" name="reason" value="revoked in the console";
                                        button.secondary type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                    @if recent.is_empty() { tr { td colspan="7" { "None yet." } } }
                }
            }
        }
    };
    Ok(render(&viewer, "Access requests", Section::Requests, body))
}

fn summary(r: &AccessRequest, now: time::OffsetDateTime) -> Markup {
    html! {
        h3 { "System " a href={ "/console/systems/" (encode(&r.system_id)) } { (r.system_id) } ", grant " (r.grant_id) }
        dl {
            dt { "Workload" } dd { (r.issuer) ": " (r.subject) }
            @if let Some(who) = &r.on_behalf_of { dt { "On behalf of" } dd { (who) } }
            dt { "Asks for" } dd { code { (r.asked.to_string()) } }
            dt { "Asked" } dd { (when(r.created_at)) " (" (relative(r.created_at, now)) ")" }
            @if r.state == AccessState::Pending {
                dt { "Waits until" } dd { (when(r.expires_at)) " (" (relative(r.expires_at, now)) ")" }
            }
            @if let Some(by) = &r.decided_by { dt { "Decided by" } dd { (by) } }
            @if let Some(reason) = &r.reason { dt { "Reason" } dd { (reason) } }
            @if let Some(until) = r.approved_until { dt { "Approved until" } dd { (when(until)) } }
        }
    }
}

/// `POST /console/requests/{id}/{approve|deny|revoke}`
pub async fn decide(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    PostedAs { viewer, mut form, .. }: PostedAs<Approvers>,
) -> Result<Response, ApiError> {
    let decision = match action.as_str() {
        "approve" => Decision::Approve,
        "deny" => Decision::Deny,
        "revoke" => Decision::Revoke,
        _ => return Err(ApiError::NotFound(format!("no action {action:?} on access requests"))),
    };
    let duration = match form.take("duration").filter(|d| !d.trim().is_empty()) {
        Some(text) if decision == Decision::Approve => {
            Some(humantime::parse_duration(text.trim()).map_err(|e| ApiError::Invalid {
                field: "duration".into(),
                message: format!("{e}; write it like 30m"),
            })?)
        }
        _ => None,
    };
    let reason = form.take("reason").filter(|r| !r.trim().is_empty());
    let ruling = Ruling { decision, duration, reason, break_glass: false };
    let decided = state.broker.decide_access(&id, ruling, &viewer.caller, &viewer.meta).await?;
    let done = match decided.approved_until {
        Some(until) if decision == Decision::Approve => format!("Request {id} approved until {}.", when(until)),
        _ => format!("Request {id} is {}.", decided.state.as_str()),
    };
    Ok(after("/console/requests", &done))
}

/// `POST /console/reviews/{id}/done`
pub async fn review_done(
    State(state): State<AppState>,
    Path(id): Path<String>,
    PostedAs { viewer, mut form, .. }: PostedAs<Approvers>,
) -> Result<Response, ApiError> {
    let note = form.take("note").filter(|n| !n.trim().is_empty());
    state.broker.review_access(&id, note, &viewer.caller, &viewer.meta).await?;
    Ok(after("/console/requests", &format!("Break-glass approval {id} is reviewed.")))
}
