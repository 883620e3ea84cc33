//! Systems and owners: lists, one system's or owner's page, and the
//! operator's actions on them (the broker's, with its rules).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::session::{PostedAs, ViewerAs};
use super::{Actors, DoneQuery, Readers, Section, Viewer, after, encode, notice, relative, render, when};
use crate::broker::Unavailable;
use crate::domain::lifecycle::{SystemView, production_checks};
use crate::domain::model::{SystemState, Tier};
use crate::http::AppState;
use crate::http::admin::{owner_id, system_id};
use crate::http::error::ApiError;
use crate::http::extract::{Params, Path};
use crate::store::AuditFilter;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SystemsQuery {
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    state: Option<String>,
    /// Words in the id, name or purpose.
    #[serde(default)]
    q: Option<String>,
}

/// `GET /console/systems`
pub async fn systems(
    State(state): State<AppState>,
    ViewerAs { viewer, .. }: ViewerAs<Readers>,
    Params(query): Params<SystemsQuery>,
) -> Result<Response, ApiError> {
    let now = state.broker.clock.now();
    let all = state.broker.systems().await?;
    let counts: BTreeMap<String, i64> =
        state.broker.lifecycle.active_credentials_by_system(now).await.map_err(Unavailable)?.into_iter().collect();
    fn wanted(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|t| !t.is_empty())
    }
    let words = wanted(&query.q).map(str::to_lowercase);
    let shown: Vec<&SystemView> = all
        .iter()
        .filter(|v| wanted(&query.tier).is_none_or(|t| v.system.tier.as_str() == t))
        .filter(|v| wanted(&query.state).is_none_or(|s| v.system.state.as_str() == s))
        .filter(|v| {
            words.as_deref().is_none_or(|w| {
                let s = &v.system;
                [s.id.as_str(), s.name.as_str(), s.purpose.as_str()].iter().any(|f| f.to_lowercase().contains(w))
            })
        })
        .collect();
    let option = |value: &str, current: &Option<String>| {
        html! { option value=(value) selected[current.as_deref() == Some(value)] { (value) } }
    };
    let body = html! {
        h1 { "Systems" }
        form.filters method="get" action="/console/systems" {
            label { "Tier " select name="tier" {
                option value="" { "any" }
                @for t in ["sandbox", "pilot", "production"] { (option(t, &query.tier)) }
            } }
            label { "State " select name="state" {
                option value="" { "any" }
                @for s in ["active", "suspended", "retired"] { (option(s, &query.state)) }
            } }
            label { "Search " input type="search" name="q" value=[query.q.as_deref()]; }
            button type="submit" { "Filter" }
        }
        table #systems {
            thead { tr { th { "System" } th { "Tier" } th { "State" } th { "Owners" } th { "Pilot ends" } th.num { "Active credentials" } } }
            tbody {
                @for v in &shown {
                    @let s = &v.system;
                    tr {
                        td { a href={ "/console/systems/" (encode(s.id.as_str())) } { (s.name) } br; small { (s.id) } }
                        td { (s.tier.as_str()) }
                        td.(s.state.as_str()) { (s.state.as_str()) }
                        td { (s.business_owner) ", " (s.technical_owner) }
                        td { @if let Some(end) = s.pilot_ends_at { (when(end)) } }
                        td.num { (counts.get(s.id.as_str()).copied().unwrap_or(0)) }
                    }
                }
                @if shown.is_empty() { tr { td colspan="6" { "No system matches." } } }
            }
        }
        p { (shown.len()) " of " (all.len()) " systems." }
    };
    Ok(render(&viewer, "Systems", Section::Systems, body))
}

/// `GET /console/systems/{id}`
pub async fn system(
    State(state): State<AppState>,
    ViewerAs { viewer, .. }: ViewerAs<Readers>,
    Path(id): Path<String>,
    Params(query): Params<DoneQuery>,
) -> Result<Response, ApiError> {
    let broker = &state.broker;
    let id = system_id(&id)?;
    let view = broker.system_view(&id).await?;
    let now = broker.clock.now();
    let grants = broker.grants_of(&id).await?;
    let credentials = broker.credentials_of(&id).await?;
    let capped = credentials.len() >= 10_000;
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &credentials {
        *by_kind.entry(c.kind.as_str()).or_default() += 1;
    }
    let events = |kind: &str, limit: u32| {
        let filter = AuditFilter {
            system: Some(id.to_string()),
            kind: Some(kind.to_owned()),
            newest_first: true,
            ..AuditFilter::default()
        };
        let audit = broker.audit.clone();
        async move { audit.audit_events(&filter, None, limit).await.map_err(Unavailable) }
    };
    let history = events("system.*", 20).await?;
    let issued = events("credential.issued", 10).await?;
    let checks = production_checks(&view, now);
    let s = &view.system;
    let sid = s.id.as_str();
    let body = html! {
        (notice(query.done.as_deref()))
        h1 { (s.name) " " small { (sid) } }
        p.badges {
            span.badge { (s.tier.as_str()) }
            span.badge.(s.state.as_str()) { (s.state.as_str()) }
            @if let Some(end) = s.pilot_ends_at { span.badge { "ends " (when(end)) " (" (relative(end, now)) ")" } }
        }
        @if let Some(reason) = &s.suspended_reason { p.fail { "Stopped: " (reason) } }
        dl {
            dt { "Purpose" } dd #purpose { (s.purpose) }
            dt { "Data classification" } dd { (s.data_classification.as_deref().unwrap_or("none")) }
            dt { "In this tier since" } dd { (when(s.tier_started_at)) }
        }
        h2 { "Owners" }
        table #owners {
            thead { tr { th { "Role" } th { "Owner" } th { "Status" } th { "Attested until" } } }
            tbody {
                @for (role, o) in [("business", &view.business_owner), ("technical", &view.technical_owner)] {
                    tr {
                        td { (role) }
                        td { a href={ "/console/owners/" (encode(o.id.as_str())) } { (o.display_name) } " " small { (o.email) } }
                        td { @match o.lapse_reason(now) { None => { "active" } Some(why) => { span.fail { (why) } } } }
                        td { (when(o.attested_until)) " (" (relative(o.attested_until, now)) ")" }
                    }
                }
            }
        }
        h2 { @if s.tier == Tier::Production { "Production requirements" } @else { "Promotion gate" } }
        ul.checks #gate {
            @for c in &checks {
                li.(if c.passed { "pass" } else { "fail" }) {
                    (if c.passed { "✓ " } else { "✗ " }) strong { (c.check) } ": " (c.detail)
                }
            }
            @if s.tier == Tier::Pilot {
                li { "and the person who promotes it owns neither side (checked at promotion)" }
            }
        }
        h2 { "Grants" }
        (grants_table(&grants))
        h2 { "Outstanding credentials" }
        @if by_kind.is_empty() { p { "None." } } @else {
            table #credentials {
                thead { tr { th { "Kind" } th.num { "Count" } } }
                tbody { @for (kind, n) in &by_kind { tr { td { (kind) } td.num { (n) @if capped { "+" } } } } }
            }
        }
        h2 { "Recent issuance" }
        (super::audit::events_table(&issued, "No credential issued yet."))
        p { a href={ "/console/audit?system=" (encode(sid)) } { "All of this system's events" } }
        h2 { "Tier history" }
        (super::audit::events_table(&history, "No change recorded."))
        @if viewer.acts() { (system_actions(&viewer, &view)) }
    };
    Ok(render(&viewer, &s.name, Section::Systems, body))
}

fn grants_table(grants: &[crate::domain::model::Grant]) -> Markup {
    let text = |v: &Value| match v {
        Value::Array(items) => {
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect::<Vec<_>>().join(", ")
        }
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    html! {
        @if grants.is_empty() { p { "No grants." } } @else {
            table #grants {
                thead { tr { th { "Grant" } th { "Workload" } th { "Audiences" } th { "Scopes" } th { "Kinds" } th { "Max TTL" } th { "Approval" } } }
                tbody {
                    @for g in grants {
                        @let json = serde_json::to_value(g).unwrap_or_default();
                        tr {
                            td { (g.id) }
                            td { (g.issuer) ": " (g.subject) }
                            td { (text(&json["audiences"])) }
                            td { (text(&json["scopes"])) }
                            td { (text(&json["kinds"])) }
                            td { (humantime::format_duration(g.max_ttl)) }
                            td { @if g.approval.is_some() { "required" } @else { "no" } }
                        }
                    }
                }
            }
        }
    }
}

/// The operator's actions on a system, each a form; the destructive ones
/// ask for the system's id to be typed.
fn system_actions(viewer: &Viewer, view: &SystemView) -> Markup {
    let s = &view.system;
    let sid = s.id.as_str();
    let action = |name: &str| format!("/console/systems/{}/{name}", encode(sid));
    let confirm = html! {
        label { "Type " code { (sid) } " to confirm " input type="text" name="confirm" autocomplete="off" required; }
    };
    let reason = html! { label { "Reason " input type="text" name="reason" maxlength="500" required; } };
    let active = s.state == SystemState::Active;
    html! {
        section.actions #actions {
            h2 { "Actions" }
            @if active && s.tier != Tier::Production {
                form method="post" action=(action("promote")) #promote {
                    h3 { @if s.tier == Tier::Sandbox { "Promote to pilot" } @else { "Promote to production" } }
                    (viewer.csrf_field())
                    @if s.tier == Tier::Sandbox {
                        label { "Pilot ends on " input type="date" name="pilot_ends_at" required; }
                    }
                    button type="submit" { "Promote" }
                }
            }
            @if !active {
                form method="post" action=(action("reinstate")) #reinstate {
                    h3 { "Reinstate" }
                    (viewer.csrf_field())
                    @if s.tier != Tier::Production {
                        label { "New pilot end " input type="date" name="pilot_ends_at"; }
                    }
                    label { "Reason " input type="text" name="reason" maxlength="500"; }
                    button type="submit" { "Reinstate" }
                }
            }
            @if active {
                form.danger method="post" action=(action("revoke")) #revoke {
                    h3 { "Revoke everything it holds" }
                    p { "Every credential of this system stops at once; the system stays active." }
                    (viewer.csrf_field()) (reason) (confirm)
                    button type="submit" { "Revoke all" }
                }
                form.danger method="post" action=(action("suspend")) #suspend {
                    h3 { "Suspend" }
                    p { "Revokes everything and refuses new credentials until reinstated." }
                    (viewer.csrf_field()) (reason) (confirm)
                    button type="submit" { "Suspend" }
                }
            }
            @if s.state != SystemState::Retired {
                form.danger method="post" action=(action("retire")) #retire {
                    h3 { "Retire" }
                    p { "Revokes everything; the system is done." }
                    (viewer.csrf_field()) (reason) (confirm)
                    button type="submit" { "Retire" }
                }
            }
        }
    }
}

/// A date from a form (`2027-01-31`: its start, UTC) or an RFC 3339 time.
fn form_time(field: &str, raw: Option<String>) -> Result<Option<OffsetDateTime>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else { return Ok(None) };
    let raw = raw.trim();
    let invalid = || ApiError::Invalid {
        field: field.to_owned(),
        message: format!("{raw:?} is not a date (2027-01-31) or an RFC 3339 time"),
    };
    if let Ok(t) = OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339) {
        return Ok(Some(t));
    }
    let date =
        time::Date::parse(raw, time::macros::format_description!("[year]-[month]-[day]")).map_err(|_| invalid())?;
    Ok(Some(date.midnight().assume_utc()))
}

/// Checks that the typed confirmation names `id` exactly.
fn confirmed(form: &mut crate::http::extract::Form, id: &str) -> Result<(), ApiError> {
    match form.take("confirm") {
        Some(typed) if typed.trim() == id => Ok(()),
        _ => Err(ApiError::Invalid {
            field: "confirm".into(),
            message: format!("type {id} to confirm; nothing was changed"),
        }),
    }
}

/// `POST /console/systems/{id}/{action}`
pub async fn act_on_system(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    PostedAs { viewer, mut form, .. }: PostedAs<Actors>,
) -> Result<Response, ApiError> {
    let broker = &state.broker;
    let id = system_id(&id)?;
    let (caller, meta) = (&viewer.caller, &viewer.meta);
    let reason = form.take("reason").unwrap_or_default();
    let done = match action.as_str() {
        "promote" => {
            let end = form_time("pilot_ends_at", form.take("pilot_ends_at"))?;
            let (system, _) = broker.promote_system(&id, end, caller, meta).await?;
            format!("{id} is now in {}.", system.tier.as_str())
        }
        "reinstate" => {
            let end = form_time("pilot_ends_at", form.take("pilot_ends_at"))?;
            let reason = Some(reason).filter(|r| !r.trim().is_empty());
            broker.reinstate_system(&id, end, reason, caller, meta).await?;
            format!("{id} is reinstated.")
        }
        "revoke" => {
            confirmed(&mut form, id.as_str())?;
            let revocation = broker.revoke_system(&id, &reason, caller, meta).await?;
            format!("{} credentials of {id} revoked.", revocation.revoked)
        }
        "suspend" => {
            confirmed(&mut form, id.as_str())?;
            let (_, outcome) = broker.suspend_system(&id, &reason, caller, meta).await?;
            format!("{id} is suspended; {} credentials revoked.", outcome.revoked)
        }
        "retire" => {
            confirmed(&mut form, id.as_str())?;
            let (_, outcome) = broker.retire_system(&id, &reason, caller, meta).await?;
            format!("{id} is retired; {} credentials revoked.", outcome.revoked)
        }
        _ => return Err(ApiError::NotFound(format!("no action {action:?} on systems"))),
    };
    Ok(after(&format!("/console/systems/{}", encode(id.as_str())), &done))
}

/// `GET /console/owners`
pub async fn owners(
    State(state): State<AppState>,
    ViewerAs { viewer, .. }: ViewerAs<Readers>,
) -> Result<Response, ApiError> {
    let now = state.broker.clock.now();
    let owners = state.broker.owners().await?;
    let systems = state.broker.systems().await?;
    let body = html! {
        h1 { "Owners" }
        table #owners {
            thead { tr { th { "Owner" } th { "Email" } th { "Status" } th { "Attested until" } th.num { "Systems" } } }
            tbody {
                @for o in &owners {
                    @let owned = systems.iter().filter(|v| v.system.business_owner == o.id || v.system.technical_owner == o.id).count();
                    tr {
                        td { a href={ "/console/owners/" (encode(o.id.as_str())) } { (o.display_name) } br; small { (o.id) } }
                        td { (o.email) }
                        td { @match o.lapse_reason(now) { None => { "active" } Some(why) => { span.fail { (why) } } } }
                        td { (when(o.attested_until)) " (" (relative(o.attested_until, now)) ")" }
                        td.num { (owned) }
                    }
                }
                @if owners.is_empty() { tr { td colspan="5" { "No owners yet." } } }
            }
        }
    };
    Ok(render(&viewer, "Owners", Section::Owners, body))
}

/// `GET /console/owners/{id}`
pub async fn owner(
    State(state): State<AppState>,
    ViewerAs { viewer, .. }: ViewerAs<Readers>,
    Path(id): Path<String>,
    Params(query): Params<DoneQuery>,
) -> Result<Response, ApiError> {
    let broker = &state.broker;
    let id = owner_id(&id)?;
    let owner = broker.owner(&id).await?;
    let now = broker.clock.now();
    let people = broker.sessions.people_of_owner(id.as_str()).await.map_err(Unavailable)?;
    let systems = broker.systems().await?;
    let owned: Vec<&SystemView> =
        systems.iter().filter(|v| v.system.business_owner == id || v.system.technical_owner == id).collect();
    let suspending: Vec<&&SystemView> = owned.iter().filter(|v| v.system.state == SystemState::Active).collect();
    let oid = id.as_str();
    let action = |name: &str| format!("/console/owners/{}/{name}", encode(oid));
    let body = html! {
        (notice(query.done.as_deref()))
        h1 { (owner.display_name) " " small { (oid) } }
        dl {
            dt { "Email" } dd { (owner.email) }
            dt { "Status" } dd { @match owner.lapse_reason(now) { None => { "active" } Some(why) => { span.fail { (why) } } } }
            dt { "Attested until" } dd { (when(owner.attested_until)) " (" (relative(owner.attested_until, now)) ")" }
        }
        h2 { "Signed-in identities" }
        @if people.is_empty() { p { "No person has signed in as this owner yet." } } @else {
            ul { @for p in &people { li { (p.subject) " at " (p.issuer) ", last seen " (when(p.last_seen_at)) } } }
        }
        h2 { "Systems" }
        table #owned {
            thead { tr { th { "System" } th { "Role" } th { "Tier" } th { "State" } } }
            tbody {
                @for v in &owned {
                    tr {
                        td { a href={ "/console/systems/" (encode(v.system.id.as_str())) } { (v.system.name) } }
                        td { @if v.system.business_owner == id { "business" } @if v.system.business_owner == id && v.system.technical_owner == id { ", " } @if v.system.technical_owner == id { "technical" } }
                        td { (v.system.tier.as_str()) }
                        td { (v.system.state.as_str()) }
                    }
                }
                @if owned.is_empty() { tr { td colspan="4" { "None." } } }
            }
        }
        @if viewer.acts() {
            section.actions #actions {
                h2 { "Actions" }
                form method="post" action=(action("recertify")) #recertify {
                    h3 { "Recertify" }
                    p { "The owner confirms they still own their systems, for another attestation period." }
                    (viewer.csrf_field())
                    button type="submit" { "Recertify" }
                }
                form.danger method="post" action=(action("depart")) #depart {
                    h3 { "Mark departed" }
                    @if suspending.is_empty() {
                        p { "No active system will be suspended." }
                    } @else {
                        p { "These systems will be suspended, and everything they hold revoked:" }
                        ul #suspending { @for v in &suspending { li { (v.system.name) " (" (v.system.id) ")" } } }
                    }
                    (viewer.csrf_field())
                    label { "Reason " input type="text" name="reason" maxlength="500"; }
                    label { "Type " code { (oid) } " to confirm " input type="text" name="confirm" autocomplete="off" required; }
                    button type="submit" { "Mark departed" }
                }
            }
        }
    };
    Ok(render(&viewer, &owner.display_name, Section::Owners, body))
}

/// `POST /console/owners/{id}/{action}`
pub async fn act_on_owner(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    PostedAs { viewer, mut form, .. }: PostedAs<Actors>,
) -> Result<Response, ApiError> {
    let id = owner_id(&id)?;
    let (caller, meta) = (&viewer.caller, &viewer.meta);
    let done = match action.as_str() {
        "recertify" => {
            let owner = state.broker.recertify_owner(&id, caller, meta).await?;
            format!("{id} is attested until {}.", when(owner.attested_until))
        }
        "depart" => {
            confirmed(&mut form, id.as_str())?;
            let reason = form.take("reason").filter(|r| !r.trim().is_empty());
            state.broker.depart_owner(&id, reason.as_deref(), caller, meta).await?;
            format!("{id} is marked departed; their systems are suspended.")
        }
        _ => return Err(ApiError::NotFound(format!("no action {action:?} on owners"))),
    };
    Ok(after(&format!("/console/owners/{}", encode(id.as_str())), &done))
}
