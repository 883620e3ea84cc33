//! The web console under `/console/`: server-rendered pages for operators,
//! approvers and auditors, over the same broker calls and role rules as
//! the operator API.
//!
//! Every page is HTML rendered by [`maud`] (escaped by construction) with
//! one embedded stylesheet and no script. The answers carry a strict
//! Content-Security-Policy (nothing inline, no framing), `no-referrer`,
//! `nosniff` and `no-store`; every state-changing form carries a CSRF token
//! bound to the session ([`session`]); destructive actions are confirmed by
//! typing the system's id. An API error (the JSON of [`ApiError`]) leaving
//! a console route is turned into an error page here, once.

mod audit;
mod catalog;
mod overview;
mod requests;
mod session;
mod sign_in;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use time::OffsetDateTime;

use super::AppState;
use super::error::ApiError;
use super::extract::Roles;
use crate::domain::model::Role;
pub use session::Viewer;

/// How the console runs on this listener.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The public URL is `https`: cookies are `Secure` and `__Host-`.
    pub tls: bool,
    /// The public URL's host is a loopback address.
    pub loopback: bool,
    /// Dev mode: a form also signs in with an automation or session token.
    pub dev_sign_in: bool,
}

/// The console's Content-Security-Policy: the stylesheet from this origin,
/// nothing else; no script at all, no framing, forms only to this origin.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("console.css");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(overview::page))
        .route("/console/console.css", get(stylesheet))
        .route("/console/sign-in", get(sign_in::page).post(sign_in::with_token))
        .route("/console/sign-in/start", get(sign_in::start))
        .route("/console/callback", get(sign_in::callback))
        .route("/console/sign-out", post(sign_in::sign_out))
        .route("/console/systems", get(catalog::systems))
        .route("/console/systems/{id}", get(catalog::system))
        .route("/console/systems/{id}/{action}", post(catalog::act_on_system))
        .route("/console/owners", get(catalog::owners))
        .route("/console/owners/{id}", get(catalog::owner))
        .route("/console/owners/{id}/{action}", post(catalog::act_on_owner))
        .route("/console/requests", get(requests::page))
        .route("/console/requests/{id}/{action}", post(requests::decide))
        .route("/console/reviews/{id}/done", post(requests::review_done))
        .route("/console/audit", get(audit::search))
        .route("/console/audit/export", get(audit::export))
        .route("/console/audit/verify", get(audit::verify))
        .route("/console/audit/events/{seq}", get(audit::event))
        .route("/console/credentials/{jti}", get(audit::credential))
        .route("/console/keys", get(audit::keys))
        .route("/console/{*rest}", get(not_found).post(not_found))
        .layer(axum::middleware::map_response(as_console_answer))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such page".into())
}

async fn stylesheet() -> Response {
    let mut response = STYLESHEET.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}

/// Security headers on every console answer, and an API error's JSON
/// turned into an error page.
async fn as_console_answer(response: Response) -> Response {
    let json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let failed = response.status().is_client_error() || response.status().is_server_error();
    let mut response = if json && failed { error_page(response).await } else { response };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// An error answer as a page: its status, and the description the API
/// would have given (never more).
async fn error_page(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let description = value
        .get("error_description")
        .and_then(serde_json::Value::as_str)
        .map_or_else(|| parts.status.canonical_reason().unwrap_or("error").to_owned(), str::to_owned);
    let failed: Vec<String> = value
        .get("failed_checks")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let title = match parts.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::UNAUTHORIZED => "Sign-in needed",
        StatusCode::CONFLICT => "Refused",
        StatusCode::SERVICE_UNAVAILABLE => "Unavailable",
        s if s.is_server_error() => "Something went wrong",
        _ => "That did not work",
    };
    let body = html! {
        h1 { (title) }
        p.error role="alert" { (description) }
        @if !failed.is_empty() {
            ul.checks { @for f in &failed { li.fail { (f) } } }
        }
        p { a href="/console/" { "Back to the overview" } }
    };
    let mut page = Html(document(title, None, None, body)).into_response();
    *page.status_mut() = parts.status;
    for name in [header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            page.headers_mut().insert(name, v.clone());
        }
    }
    page
}

/// Which part of the console a page belongs to, for the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Systems,
    Owners,
    Requests,
    Audit,
    Keys,
}

/// Readers of the catalog and the audit log: admins, operators, auditors.
pub enum Readers {}

impl Roles for Readers {
    fn allows(role: Role) -> bool {
        matches!(role, Role::Admin | Role::Operator | Role::Auditor)
    }
    const REFUSAL: &'static str = "open this page";
}

/// Who changes systems and owners: admins and operators.
pub enum Actors {}

impl Roles for Actors {
    fn allows(role: Role) -> bool {
        matches!(role, Role::Admin | Role::Operator)
    }
    const REFUSAL: &'static str = "do this";
}

/// A whole page for a signed-in viewer.
pub fn render(viewer: &Viewer, title: &str, section: Section, body: Markup) -> Response {
    Html(document(title, Some(viewer), Some(section), body)).into_response()
}

fn document(title: &str, viewer: Option<&Viewer>, section: Option<Section>, body: Markup) -> String {
    let link = |to: Section, href: &str, label: &str| {
        html! { a href=(href) aria-current=[(section == Some(to)).then_some("page")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · halflife" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                header.top {
                    a.brand href="/console/" { "halflife" }
                    @if let Some(v) = viewer {
                        nav {
                            @if v.reads() {
                                (link(Section::Overview, "/console/", "Overview"))
                                (link(Section::Systems, "/console/systems", "Systems"))
                                (link(Section::Owners, "/console/owners", "Owners"))
                            }
                            @if v.sees_requests() {
                                (link(Section::Requests, "/console/requests", "Access requests"))
                            }
                            @if v.reads() {
                                (link(Section::Audit, "/console/audit", "Audit"))
                                (link(Section::Keys, "/console/keys", "Keys"))
                            }
                        }
                        form.who method="post" action="/console/sign-out" {
                            span { (v.caller.name) " · " (v.caller.roles_text()) }
                            (v.csrf_field())
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

/// A time as people read it: `2026-12-07 05:46:49 UTC`.
pub fn when(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// How far `t` is from `now`, roughly: `in 3 d`, `2 h ago`.
pub fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (t - now).whole_seconds();
    let span = secs.unsigned_abs();
    let amount = match span {
        0..60 => format!("{span} s"),
        60..3600 => format!("{} min", span / 60),
        3600..86_400 => format!("{} h", span / 3600),
        _ => format!("{} d", span / 86_400),
    };
    if secs >= 0 { format!("in {amount}") } else { format!("{amount} ago") }
}

/// A path segment or query value, percent-encoded.
pub fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The query of a page that may show a notice after an action.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DoneQuery {
    #[serde(default)]
    pub done: Option<String>,
}

/// A notice after an action (`?done=…`), shown once at the top of a page.
pub fn notice(done: Option<&str>) -> Markup {
    html! {
        @if let Some(done) = done {
            p.notice role="status" { (done) }
        }
    }
}

/// A redirect after a successful action, carrying what was done.
pub fn after(path: &str, done: &str) -> Response {
    Redirect::to(&format!("{path}?done={}", encode(done))).into_response()
}
