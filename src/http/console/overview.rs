//! The overview: the state of everything at a glance.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::{Section, Viewer, encode, relative, render, when};
use crate::broker::Unavailable;
use crate::domain::approval::AccessState;
use crate::domain::model::{SystemState, Tier};
use crate::http::AppState;
use crate::http::error::ApiError;

/// Most events the overview verifies.
const RECENT: i64 = 10_000;

/// `GET /console/`
pub async fn page(State(state): State<AppState>, viewer: Viewer) -> Result<Response, ApiError> {
    if !viewer.reads() {
        // An approver's console is the inbox.
        return Ok(Redirect::to("/console/requests").into_response());
    }
    let broker = &state.broker;
    let now = broker.clock.now();
    let systems = broker.systems().await?;
    let deadlines = broker.deadlines(now).await?;
    let jobs = broker.jobs.list_jobs(false).await.map_err(Unavailable)?;
    let failing: Vec<_> =
        jobs.iter().filter(|j| j.state != "done" && j.attempts >= crate::broker::lifecycle::FAILING_AFTER).collect();
    let pending = broker.access_requests(Some(AccessState::Pending), 1000).await?;
    let pending: Vec<_> = pending.into_iter().filter(|r| r.waiting(now)).collect();
    let reviews = broker.reviews().await?;
    let checkpoint = broker.last_checkpoint().await?;
    // The chain since the last checkpoint, and never more than the last
    // RECENT events, however long the log and however long since a
    // checkpoint. The whole chain is verified on the audit page, on request.
    let head = broker.audit.audit_head().await.map_err(Unavailable)?.map_or(0, |(seq, _)| seq);
    let from = checkpoint.seq.max(head - RECENT).max(1);
    let recent = broker.verify_audit(Some(from), None).await?;

    let mut by_tier: BTreeMap<(u8, &str), [usize; 3]> = BTreeMap::new();
    for view in &systems {
        let tier = view.system.tier;
        let order = match tier {
            Tier::Sandbox => 0,
            Tier::Pilot => 1,
            Tier::Production => 2,
        };
        let column = match view.system.state {
            SystemState::Active => 0,
            SystemState::Suspended => 1,
            SystemState::Retired => 2,
        };
        by_tier.entry((order, tier.as_str())).or_default()[column] += 1;
    }
    let pilots: Vec<_> = deadlines.iter().filter(|d| d.kind == "pilot.ending").collect();
    let owners: Vec<_> = deadlines.iter().filter(|d| d.kind != "pilot.ending").collect();

    let body = html! {
        h1 { "Overview" }
        div.cards {
            section.card #systems-by-tier {
                h2 { "Systems" }
                table {
                    thead { tr { th { "Tier" } th.num { "Active" } th.num { "Suspended" } th.num { "Retired" } } }
                    tbody {
                        @for ((_, tier), counts) in &by_tier {
                            tr {
                                td { a href={ "/console/systems?tier=" (tier) } { (tier) } }
                                @for n in counts { td.num { (n) } }
                            }
                        }
                        @if by_tier.is_empty() { tr { td colspan="4" { "No systems yet." } } }
                    }
                }
            }
            section.card #audit-chain {
                h2 { "Audit log" }
                @if recent.ok {
                    p.ok { "The chain verifies from event " (from) " to the head." }
                } @else {
                    p.fail role="alert" {
                        "The chain does not verify: "
                        @if let Some(problem) = &recent.first_problem { "event " (problem.seq) ": " (problem.what) }
                    }
                }
                p {
                    @match checkpoint.at {
                        Some(at) => { "Last signed checkpoint at event " (checkpoint.seq) ", " (when(at)) "." }
                        None => { "No signed checkpoint yet." }
                    }
                    " Head: event " (recent.head_seq.unwrap_or(0)) "."
                }
                p { a href="/console/audit/verify" { "Verify the whole chain" } }
            }
            section.card #access-requests {
                h2 { "Access requests" }
                p { (pending.len()) " pending, " (reviews.len()) " break-glass "
                    (if reviews.len() == 1 { "access" } else { "accesses" }) " awaiting review." }
                @if !pending.is_empty() || !reviews.is_empty() { p { a href="/console/requests" { "Open the inbox" } } }
            }
            section.card #jobs {
                h2 { "Jobs" }
                @if failing.is_empty() {
                    p.ok { "No job is failing." }
                } @else {
                    ul {
                        @for job in &failing {
                            li.fail { (job.kind) " #" (job.id) ": " (job.attempts) " attempts; "
                                (job.last_error.as_deref().unwrap_or("no error recorded")) }
                        }
                    }
                }
            }
        }
        section #pilots-ending {
            h2 { "Pilots ending within the notice window" }
            @if pilots.is_empty() { p { "None." } } @else {
                table {
                    thead { tr { th { "System" } th { "Ends" } th { "" } } }
                    tbody {
                        @for d in &pilots {
                            tr {
                                td { a href={ "/console/systems/" (encode(&d.subject_id)) } { (d.subject_id) } }
                                td { (when(d.due_at)) " (" (relative(d.due_at, now)) ")" }
                                td { (d.message) }
                            }
                        }
                    }
                }
            }
        }
        section #owners-lapsing {
            h2 { "Owners lapsed or lapsing" }
            @if owners.is_empty() { p { "None." } } @else {
                table {
                    thead { tr { th { "Owner" } th { "Attested until" } th { "Systems" } th { "" } } }
                    tbody {
                        @for d in &owners {
                            tr.(if d.kind == "owner.lapsed" { "lapsed" } else { "soon" }) {
                                td { a href={ "/console/owners/" (encode(&d.subject_id)) } { (d.subject_id) } }
                                td { (when(d.due_at)) " (" (relative(d.due_at, now)) ")" }
                                td { (d.systems.join(", ")) }
                                td { (d.message) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(render(&viewer, "Overview", Section::Overview, body))
}
