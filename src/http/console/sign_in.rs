//! Signing in to the console and out of it.
//!
//! With the organisation's provider (`[people]`): an authorization code
//! with PKCE (S256), `state` and `nonce` (RFC 9700 §2.1.1, §4.5.3), the
//! provider's `iss` checked (RFC 9207), the code redeemed by the broker as
//! the console's client, and the ID token turned into the same session
//! `halflife login` gets. In dev mode a form also takes an automation or
//! session token.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::session::{self, Posted, cookie, flow_cookie, session_cookie, set_cookie, settings};
use super::{document, encode};
use crate::broker::people::{Authorization, SignInClient, SignInError};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{Form, Meta, Params};

/// How long a sign-in through the provider may take.
const FLOW_SECONDS: i64 = 600;
/// Longest a token signed in with the dev form stays in the browser.
const TOKEN_SIGN_IN: time::Duration = time::Duration::hours(8);

/// `GET /console/sign-in`
pub async fn page(State(state): State<AppState>, Params(query): Params<super::DoneQuery>) -> Response {
    sign_in_page(&state, query.done.as_deref(), None, StatusCode::OK)
}

fn sign_in_page(state: &AppState, done: Option<&str>, error: Option<&str>, status: StatusCode) -> Response {
    let settings = settings(state);
    let provider = state.broker.people.as_ref().filter(|p| p.console_sign_in());
    let body: Markup = html! {
        h1 { "Sign in" }
        (super::notice(done))
        @if let Some(error) = error {
            p.error role="alert" { (error) }
        }
        @if let Some(people) = provider {
            p { a.button #sign-in href="/console/sign-in/start" { "Sign in with " (people.issuer()) } }
        } @else {
            p { "People sign in once this broker knows the organisation's identity provider ([people] in the configuration)." }
        }
        @if settings.dev_sign_in {
            section.dev {
                h2 { "Dev mode: sign in with a token" }
                p { "An automation token (" code { "hla_…" } ") or a session token (" code { "hls_…" } "). Only in dev mode." }
                form method="post" action="/console/sign-in" {
                    label for="token" { "Token" }
                    input #token type="password" name="token" autocomplete="off" required;
                    button type="submit" { "Sign in" }
                }
            }
        }
    };
    let mut response = Html(document("Sign in", None, None, body)).into_response();
    *response.status_mut() = status;
    response
}

/// `POST /console/sign-in`: dev mode only, a token typed in. A form
/// another site submits is refused, so no page can sign a browser in under
/// someone else's token.
pub async fn with_token(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    mut form: Form,
) -> Result<Response, ApiError> {
    if !settings(&state).dev_sign_in {
        return Err(ApiError::NotFound("signing in with a token is for dev mode only".into()));
    }
    if headers.get("sec-fetch-site").is_some_and(|v| v == "cross-site") {
        return Err(ApiError::Forbidden("sign in from the console's own page".into()));
    }
    let token = form.require_secret("token")?;
    let Some(caller) = state.broker.authenticate_admin(token.expose_secret().trim()).await? else {
        return Ok(sign_in_page(
            &state,
            None,
            Some("That token is not a valid automation or session token (it may have expired or been revoked)."),
            StatusCode::UNAUTHORIZED,
        ));
    };
    let token = SecretString::from(token.expose_secret().trim());
    let cookie = session::session_started(&state, &token, caller.expires_at, TOKEN_SIGN_IN);
    let mut response = Redirect::to("/console/").into_response();
    response.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(response)
}

/// `GET /console/sign-in/start`: off to the provider.
pub async fn start(State(state): State<AppState>) -> Response {
    let Some(people) = state.broker.people.as_ref().filter(|p| p.console_sign_in()) else {
        return sign_in_page(&state, None, Some("No identity provider is configured."), StatusCode::NOT_FOUND);
    };
    let Authorization { url, state: flow_state, nonce, code_verifier } = match people.authorize().await {
        Ok(authorization) => authorization,
        Err(e) => return refused(&state, &e),
    };
    let settings = settings(&state);
    let value = format!("{flow_state}.{nonce}.{}", code_verifier.expose_secret());
    let mut response = Redirect::to(url.as_str()).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(&settings, flow_cookie(&settings), &value, FLOW_SECONDS, "Lax"));
    response
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    // Sent by some providers alongside the code; not needed.
    #[allow(dead_code, reason = "accepted and ignored")]
    session_state: Option<String>,
}

/// `GET /console/callback`: the provider's answer.
pub async fn callback(
    State(state): State<AppState>,
    Meta(meta): Meta,
    Params(query): Params<CallbackQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let settings = settings(&state);
    let flow = cookie(&headers, flow_cookie(&settings)).map(|v| SecretString::from(v.to_owned()));
    let forget = set_cookie(&settings, flow_cookie(&settings), "", 0, "Lax");
    let mut response = finish(&state, &meta, &query, flow.as_ref()).await;
    response.headers_mut().append(header::SET_COOKIE, forget);
    response
}

async fn finish(
    state: &AppState,
    meta: &crate::store::RequestMeta,
    query: &CallbackQuery,
    flow: Option<&SecretString>,
) -> Response {
    let problem = |message: &str| sign_in_page(state, None, Some(message), StatusCode::BAD_REQUEST);
    let Some(people) = state.broker.people.as_ref().filter(|p| p.console_sign_in()) else {
        return problem("No identity provider is configured.");
    };
    let Some(flow) = flow else {
        return problem("This sign-in was not started here, or took longer than ten minutes. Start again.");
    };
    let mut parts = flow.expose_secret().splitn(3, '.');
    let (Some(expected), Some(nonce), Some(verifier)) = (parts.next(), parts.next(), parts.next()) else {
        return problem("This sign-in was not started here. Start again.");
    };
    let sent = query.state.as_deref().unwrap_or_default();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), expected.as_bytes())) || sent.is_empty() {
        return problem("The answer does not belong to the sign-in started in this browser. Start again.");
    }
    if let Some(error) = &query.error {
        let description = query.error_description.as_deref().unwrap_or_default();
        let message = format!(
            "The identity provider did not sign you in ({}{}{}).",
            crate::domain::identity::visible(error),
            if description.is_empty() { "" } else { ": " },
            crate::domain::identity::visible(description)
        );
        return sign_in_page(state, None, Some(&message), StatusCode::FORBIDDEN);
    }
    let Some(code) = query.code.as_deref().filter(|c| !c.is_empty()) else {
        return problem("The identity provider's answer carries no code.");
    };
    let verifier = SecretString::from(verifier.to_owned());
    let id_token = match people.redeem(code, query.iss.as_deref(), &verifier, nonce).await {
        Ok(token) => token,
        Err(e) => return refused(state, &e),
    };
    match state.broker.sign_in_through(SignInClient::Console, id_token.expose_secret(), meta).await {
        Ok(session) => {
            let cookie = session::session_started(
                state,
                &session.token,
                Some(session.record.expires_at),
                time::Duration::days(7),
            );
            // The session cookie is SameSite=Strict, so the browser would
            // not send it on a redirect that a cross-site navigation (the
            // provider's) started: the console is entered from a page of
            // its own instead.
            let body = html! {
                meta http-equiv="refresh" content="0; url=/console/";
                h1 { "Signed in" }
                p { a href="/console/" { "Continue to the console" } }
            };
            let mut response = Html(document("Signed in", None, None, body)).into_response();
            response.headers_mut().append(header::SET_COOKIE, cookie);
            response
        }
        Err(e) => refused(state, &e),
    }
}

/// A refused sign-in as the sign-in page with the reason.
fn refused(state: &AppState, error: &SignInError) -> Response {
    let status = match error {
        SignInError::Invalid(_) => StatusCode::BAD_REQUEST,
        SignInError::Denied(_) => StatusCode::FORBIDDEN,
        SignInError::Provider(_) => StatusCode::BAD_GATEWAY,
        SignInError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
        SignInError::Failure(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let message = match error {
        SignInError::Failure(_) => "The broker cannot sign you in right now (storage is unavailable).".to_owned(),
        other => other.to_string(),
    };
    if let SignInError::Provider(cause) = error {
        tracing::warn!(error = %cause, "console sign-in: the identity provider failed");
    }
    sign_in_page(state, None, Some(&message), status)
}

/// `POST /console/sign-out`: a person's session ends (revoked, recorded);
/// a token signed in with the dev form only leaves the browser.
pub async fn sign_out(State(state): State<AppState>, Posted { viewer, .. }: Posted) -> Result<Response, ApiError> {
    if viewer.caller.person.is_some() {
        state.broker.revoke_session(&viewer.caller.id, &viewer.caller, &viewer.meta).await?;
    }
    let settings = settings(&state);
    let mut response = Redirect::to(&format!("/console/sign-in?done={}", encode("Signed out."))).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(&settings, session_cookie(&settings), "", 0, "Strict"));
    Ok(response)
}
