//! The audit log: search with keyset pagination (newest first), one
//! event, a credential's attribution, export of a search as CSV or JSON
//! lines (streamed, as the API's), verification of the chain; and the
//! signing keys.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use maud::{Markup, html};
use serde_json::Value;

use super::session::ViewerAs;
use super::{Readers, Section, encode, relative, render, when};
use crate::audit::AuditRecord;
use crate::broker::Unavailable;
use crate::http::AppState;
use crate::http::audit::{EventsQuery, export as export_events, filter_of};
use crate::http::error::ApiError;
use crate::http::extract::{Params, Path};
use crate::store::AuditFilter;

/// Events per page.
const PAGE: u32 = 50;

/// The search fields, as the form names them and the API's query does.
const FIELDS: [(&str, &str, &str); 9] = [
    ("system", "System", "summarizer"),
    ("owner", "Owner", "alice"),
    ("workload", "Workload subject", "spiffe://…"),
    ("kind", "Kind", "credential.issued or system.*"),
    ("outcome", "Outcome", "success, denied, failure"),
    ("jti", "Credential id (jti)", ""),
    ("actor", "Actor subject", ""),
    ("since", "Since", "24h or 2026-12-01T00:00:00Z"),
    ("until", "Until", "RFC 3339 time"),
];

/// The query with blank form fields dropped (a form sends every field).
fn cleaned(mut q: EventsQuery) -> EventsQuery {
    for field in [
        &mut q.system,
        &mut q.owner,
        &mut q.workload,
        &mut q.actor,
        &mut q.subject,
        &mut q.issuer,
        &mut q.kind,
        &mut q.outcome,
        &mut q.jti,
        &mut q.since,
        &mut q.until,
        &mut q.format,
    ] {
        if field.as_deref().is_some_and(|v| v.trim().is_empty()) {
            *field = None;
        }
    }
    q
}

fn value<'a>(q: &'a EventsQuery, name: &str) -> Option<&'a str> {
    match name {
        "system" => q.system.as_deref(),
        "owner" => q.owner.as_deref(),
        "workload" => q.workload.as_deref(),
        "kind" => q.kind.as_deref(),
        "outcome" => q.outcome.as_deref(),
        "jti" => q.jti.as_deref(),
        "actor" => q.actor.as_deref(),
        "since" => q.since.as_deref(),
        "until" => q.until.as_deref(),
        "subject" => q.subject.as_deref(),
        "issuer" => q.issuer.as_deref(),
        _ => None,
    }
}

/// The search's query string, without cursor and format.
fn query_string(q: &EventsQuery) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for name in
        ["system", "owner", "workload", "kind", "outcome", "jti", "actor", "since", "until", "subject", "issuer"]
    {
        if let Some(v) = value(q, name) {
            out.append_pair(name, v);
        }
    }
    out.finish()
}

fn filter(state: &AppState, q: &EventsQuery) -> Result<AuditFilter, ApiError> {
    let mut filter = filter_of(q, state.broker.clock.now())?;
    filter.issuer = filter.issuer.map(|issuer| state.broker.issuer_filter(&issuer));
    Ok(filter)
}

/// `GET /console/audit`
pub async fn search(
    State(state): State<AppState>,
    ViewerAs { viewer, .. }: ViewerAs<Readers>,
    Params(q): Params<EventsQuery>,
) -> Result<Response, ApiError> {
    let q = cleaned(q);
    let mut filter = filter(&state, &q)?;
    filter.newest_first = true;
    let mut events = state.broker.audit.audit_events(&filter, q.cursor, PAGE).await.map_err(Unavailable)?;
    state.broker.name_issuers(&mut events);
    let older = (events.len() == PAGE as usize).then(|| events.last().map(|e| e.seq)).flatten();
    let search = query_string(&q);
    let joined = |extra: String| if search.is_empty() { extra } else { format!("{search}&{extra}") };
    let body = html! {
        h1 { "Audit" }
        form.filters #search method="get" action="/console/audit" {
            @for (name, label, hint) in FIELDS {
                label { (label) " " input type="text" name=(name) value=[value(&q, name)] placeholder=(hint); }
            }
            button type="submit" { "Search" }
            a href="/console/audit" { "Clear" }
        }
        p.exports {
            "Export this search: "
            a #export-csv href={ "/console/audit/export?" (joined("format=csv".into())) } { "CSV" } " · "
            a #export-jsonl href={ "/console/audit/export?" (joined("format=jsonl".into())) } { "JSON lines" }
            " (oldest first, every matching event)"
        }
        (events_table(&events, "No event matches."))
        nav.pages {
            @if q.cursor.is_some() { a href={ "/console/audit?" (search) } { "Newest" } }
            @if let Some(seq) = older { a #older href={ "/console/audit?" (joined(format!("cursor={seq}"))) } { "Older events" } }
        }
    };
    Ok(render(&viewer, "Audit", Section::Audit, body))
}

/// A table of events, newest first, each linking to its detail.
pub fn events_table(events: &[AuditRecord], empty: &str) -> Markup {
    html! {
        @if events.is_empty() { p { (empty) } } @else {
            table.events {
                thead { tr { th.num { "#" } th { "Time" } th { "Kind" } th { "Outcome" } th { "System" } th { "Who" } th { "Credential" } } }
                tbody {
                    @for e in events {
                        @let ev = &e.event;
                        tr {
                            td.num { a href={ "/console/audit/events/" (e.seq) } { (e.seq) } }
                            td { (e.time()) }
                            td { (ev.kind) }
                            td.(ev.outcome.as_str()) { (ev.outcome.as_str()) }
                            td { @if let Some(s) = &ev.system_id { a href={ "/console/systems/" (encode(s)) } { (s) } } }
                            td { (ev.actor.as_deref().or(ev.subject.as_deref()).unwrap_or("")) }
                            td { @if let Some(jti) = &ev.jti { a href={ "/console/credentials/" (encode(jti)) } { (jti) } } }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/audit/export?format=csv|jsonl&…`
pub async fn export(
    State(state): State<AppState>,
    ViewerAs { .. }: ViewerAs<Readers>,
    Params(q): Params<EventsQuery>,
) -> Result<Response, ApiError> {
    let q = cleaned(q);
    let csv = match q.format.as_deref() {
        Some("csv") => true,
        Some("jsonl") => false,
        _ => return Err(ApiError::Invalid { field: "format".into(), message: "must be csv or jsonl".into() }),
    };
    let filter = filter(&state, &q)?;
    let mut response = export_events(&state, filter, None, csv);
    let name = if csv { "attachment; filename=\"audit.csv\"" } else { "attachment; filename=\"audit.jsonl\"" };
    response.headers_mut().insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(name));
    Ok(response)
}

/// `GET /console/audit/events/{seq}`
pub async fn event(
    State(state): State<AppState>,
    ViewerAs { viewer, .. }: ViewerAs<Readers>,
    Path(seq): Path<i64>,
) -> Result<Response, ApiError> {
    let filter = AuditFilter { from_seq: Some(seq), to_seq: Some(seq), ..AuditFilter::default() };
    let mut found = state.broker.audit.audit_events(&filter, None, 1).await.map_err(Unavailable)?;
    state.broker.name_issuers(&mut found);
    let e = found.pop().ok_or_else(|| ApiError::NotFound(format!("no event {seq}")))?;
    let fields = serde_json::to_value(&e).unwrap_or_default();
    let body = html! {
        h1 { "Event " (e.seq) }
        (fields_list(&fields))
        p {
            @if let Some(jti) = &e.event.jti { a href={ "/console/credentials/" (encode(jti)) } { "The credential's attribution" } " · " }
            a href="/console/audit" { "Back to the search" }
        }
    };
    Ok(render(&viewer, &format!("Event {seq}"), Section::Audit, body))
}

/// Every field of a JSON object, in a definition list.
fn fields_list(fields: &Value) -> Markup {
    html! {
        dl.fields {
            @if let Value::Object(map) = fields {
                @for (name, v) in map {
                    @if !v.is_null() {
                        dt { (name) }
                        dd { @match v { Value::String(s) => { (s) } other => { code { (other.to_string()) } } } }
                    }
                }
            }
        }
    }
}

/// `GET /console/credentials/{jti}`: who got this credential, through
/// what, for whom, and what became of it.
pub async fn credential(
    State(state): State<AppState>,
    ViewerAs { viewer, .. }: ViewerAs<Readers>,
    Path(jti): Path<String>,
) -> Result<Response, ApiError> {
    let story = state
        .broker
        .credential_story(&jti)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no credential with jti {jti}")))?;
    let events: Vec<AuditRecord> = serde_json::from_value(story["events"].clone()).unwrap_or_default();
    let related: Vec<AuditRecord> = serde_json::from_value(story["related"].clone()).unwrap_or_default();
    let c = &story["credential"];
    let issued = events.iter().find(|e| e.event.kind == "credential.issued");
    let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_default();
    let detail = issued.and_then(|e| e.event.detail.clone()).unwrap_or(Value::Null);
    let body = html! {
        h1 { "Credential " small { (jti) } }
        ol.chain #attribution {
            li {
                strong { "Attestation" }
                @if let Some(e) = issued {
                    " from " (e.issuer_url.as_deref().or(e.event.attestation_issuer.as_deref()).unwrap_or(""))
                    @if let Some(id) = &e.event.attestation_id { ", token " code { (id) } }
                } @else { " (no issuance event)" }
            }
            li { strong { "Workload" } " " (text(&c["issuer"])) ": " (text(&c["subject"])) }
            @if let Some(obo) = c["on_behalf_of"].as_object() {
                li { strong { "On behalf of" } " "
                    (obo.get("issuer").and_then(Value::as_str).unwrap_or("")) ": "
                    (obo.get("subject").and_then(Value::as_str).unwrap_or("")) }
            }
            li { strong { "System" } " " a href={ "/console/systems/" (encode(&text(&c["system"]))) } { (text(&c["system"])) }
                ", grant " (text(&c["grant"])) }
            li { strong { "Owners" } " " (issued.and_then(|e| e.event.owners.as_deref()).unwrap_or("not recorded")) }
            @if !detail["approval"].is_null() {
                li { strong { "Approval" } " " code { (detail["approval"].to_string()) } }
            }
            @if let Some(actor) = issued.and_then(|e| e.event.actor.as_deref()) {
                li { strong { "Actor" } " " (actor) }
            }
            @if let Some(role) = detail["db_role"].as_str() {
                li { strong { "Database role" } " " code { (role) } " on " (detail["db_backend"].as_str().unwrap_or("")) }
            }
        }
        h2 { "The credential" }
        dl {
            dt { "Kind" } dd { (text(&c["kind"])) }
            dt { "Audience" } dd { (text(&c["audience"])) }
            dt { "Scopes" } dd { (text(&c["scopes"])) }
            dt { "Issued" } dd { (text(&c["iat"])) }
            dt { "Expires" } dd { (text(&c["exp"])) }
            dt { "Status" } dd #status {
                @if c["revoked"].as_bool() == Some(true) {
                    span.fail { "revoked (by " (text(&c["revoked_by"])) ")" }
                    @if let Some(reason) = c["revoked_reason"].as_str() { ": " (reason) }
                } @else { "not revoked" }
            }
        }
        h2 { "Its events" }
        (events_table(&events, "None."))
        h2 { "Later events that covered it" }
        (events_table(&related, "None."))
    };
    Ok(render(&viewer, &format!("Credential {jti}"), Section::Audit, body))
}

/// `GET /console/audit/verify`: the whole chain and every checkpoint.
pub async fn verify(
    State(state): State<AppState>,
    ViewerAs { viewer, .. }: ViewerAs<Readers>,
) -> Result<Response, ApiError> {
    let report = state.broker.verify_audit(None, None).await?;
    let checkpoints = state.broker.audit.checkpoints().await.map_err(Unavailable)?;
    let body = html! {
        h1 { "Audit chain" }
        @if report.ok {
            p.ok #verdict { "The chain verifies: " (report.events_checked) " events and "
                (report.checkpoints_checked) " signed checkpoints checked." }
        } @else {
            p.fail #verdict role="alert" { "The chain does not verify. "
                @if let Some(problem) = &report.first_problem { "First problem at event " (problem.seq) ": " (problem.what) } }
        }
        @if let Some(last) = checkpoints.last() {
            p { "Last signed checkpoint: event " (last.seq) " at " (last.time) "." }
        } @else { p { "No signed checkpoint yet." } }
    };
    Ok(render(&viewer, "Audit chain", Section::Audit, body))
}

/// `GET /console/keys`
pub async fn keys(
    State(state): State<AppState>,
    ViewerAs { viewer, .. }: ViewerAs<Readers>,
) -> Result<Response, ApiError> {
    let now = state.broker.clock.now();
    let keys = state.broker.key_list(now);
    let body = html! {
        h1 { "Signing keys" }
        p { "Published at " a href="/.well-known/jwks.json" { "/.well-known/jwks.json" } "." }
        table #keys {
            thead { tr { th { "Key id" } th { "Algorithm" } th { "State" } th { "Active from" } th { "Stopped signing" } th { "Withdrawn" } } }
            tbody {
                @for k in &keys {
                    @let state_text = serde_json::to_value(k.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                    tr.(state_text) {
                        td { code { (k.kid) } }
                        td { (k.alg) }
                        td { (state_text) }
                        td { (when(k.activates_at)) " (" (relative(k.activates_at, now)) ")" }
                        td { @if let Some(t) = k.superseded_at { (when(t)) } }
                        td { @if let Some(t) = k.retire_at { (when(t)) " (" (relative(t, now)) ")" } }
                    }
                }
            }
        }
    };
    Ok(render(&viewer, "Keys", Section::Keys, body))
}
