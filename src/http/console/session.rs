//! Who is looking at the console: the session cookie, the signed-in caller
//! behind it, and the CSRF token bound to it.
//!
//! The cookie holds the bearer token a sign-in produced (a person's session,
//! or in dev mode an automation token), `HttpOnly`, `SameSite=Strict`,
//! `Secure` and `__Host-` prefixed when the console is served over TLS, and
//! expiring with the session. Every request authenticates it afresh, as the
//! API does its bearer token, so a revoked session stops at once everywhere.
//!
//! The CSRF token is an HMAC of the session token's hash under the
//! broker's secret-hashing key: the same on every replica, different for
//! every session, and unknowable without the cookie.

use std::marker::PhantomData;

use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use super::{Readers, Settings};
use crate::broker::admin::AdminCaller;
use crate::crypto;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{Form, Meta, Roles, authorize};
use crate::store::RequestMeta;

/// The session cookie's name: `__Host-` prefixed over TLS (RFC 6265bis
/// §4.1.3.2: `Secure`, `Path=/`, no `Domain`, so no other host can set it).
pub fn session_cookie(settings: &Settings) -> &'static str {
    if settings.tls { "__Host-halflife-console" } else { "halflife-console" }
}

/// The cookie that carries a sign-in in progress through the provider.
pub fn flow_cookie(settings: &Settings) -> &'static str {
    if settings.tls { "__Host-halflife-sign-in" } else { "halflife-sign-in" }
}

/// A `Set-Cookie` value. `same_site` is `Strict` for the session; the
/// sign-in flow's cookie is `Lax`, since it must come back with the
/// provider's cross-site redirect to the callback.
pub fn set_cookie(settings: &Settings, name: &str, value: &str, max_age: i64, same_site: &str) -> HeaderValue {
    // `Secure` everywhere but plain HTTP on a loopback address, where a
    // browser would refuse to store it.
    let secure = if settings.tls || !settings.loopback { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path=/; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// A cookie's value from the request, if it was sent once.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The console's settings on this listener (present on every console route).
pub fn settings(state: &AppState) -> Settings {
    state.console.as_deref().cloned().unwrap_or(Settings { tls: true, loopback: false, dev_sign_in: false })
}

/// The signed-in caller of a console page, with the CSRF token of their
/// session. Without a valid session a page redirects to the sign-in page.
pub struct Viewer {
    pub caller: AdminCaller,
    pub meta: RequestMeta,
    csrf: String,
}

impl Viewer {
    /// Whether the viewer reads the catalog and the audit log.
    pub fn reads(&self) -> bool {
        self.caller.may(Readers::allows)
    }

    /// Whether the viewer changes systems and owners.
    pub fn acts(&self) -> bool {
        self.caller.may(super::Actors::allows)
    }

    /// Whether the viewer sees access requests.
    pub fn sees_requests(&self) -> bool {
        self.caller.may(crate::http::approvals::Deciders::allows)
    }

    /// Whether the viewer decides access requests (the broker's finer
    /// rules, such as separation of duties, still apply).
    pub fn decides(&self) -> bool {
        self.caller.may(crate::http::approvals::Approvers::allows)
    }

    /// The hidden field every state-changing form carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }

    /// Refuses (403, recorded as `access.denied`) unless the viewer holds
    /// a role `R` allows.
    pub async fn require<R: Roles>(&self, state: &AppState, route: &str) -> Result<(), ApiError> {
        authorize::<R>(state, &self.caller, route, &self.meta).await
    }
}

/// The CSRF token of a session token.
fn csrf_of(state: &AppState, token: &str) -> String {
    let mut message = b"halflife console csrf\0".to_vec();
    message.extend_from_slice(&crypto::sha256(token.as_bytes()));
    crypto::b64url(ring::hmac::sign(&state.broker.secret_key, &message))
}

fn to_sign_in() -> Response {
    Redirect::to("/console/sign-in").into_response()
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer
where
    AppState: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let settings = settings(&state);
        let Some(token) = cookie(&parts.headers, session_cookie(&settings)) else {
            return Err(to_sign_in());
        };
        let token = SecretString::from(token);
        let Meta(meta) = Meta::from_request_parts(parts, &()).await.map_err(IntoResponse::into_response)?;
        match state.broker.authenticate_admin(token.expose_secret()).await {
            Ok(Some(caller)) => Ok(Self { csrf: csrf_of(&state, token.expose_secret()), caller, meta }),
            Ok(None) => {
                // Expired or revoked: forget it and sign in again.
                let mut response = to_sign_in();
                let clear = set_cookie(&settings, session_cookie(&settings), "", 0, "Strict");
                response.headers_mut().append(header::SET_COOKIE, clear);
                Err(response)
            }
            Err(e) => Err(ApiError::from(e).into_response()),
        }
    }
}

/// A console form, posted by the signed-in viewer with the CSRF token of
/// their session; anything else is refused (403) before it is read.
pub struct Posted {
    pub viewer: Viewer,
    pub form: Form,
}

impl<S: Send + Sync> FromRequest<S> for Posted
where
    AppState: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        // A browser says where a request comes from; a cross-site one is
        // refused whatever it carries.
        if parts.headers.get("sec-fetch-site").is_some_and(|v| v == "cross-site") {
            return Err(ApiError::Forbidden("a console form must be sent from the console".into()).into_response());
        }
        let req = Request::from_parts(parts, body);
        let mut form = Form::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        let sent = form.take("csrf").unwrap_or_default();
        let token = checked_csrf(&viewer, &sent);
        if !token {
            return Err(ApiError::Forbidden(
                "the form's CSRF token is missing or not this session's; reload the page and try again".into(),
            )
            .into_response());
        }
        Ok(Self { viewer, form })
    }
}

fn checked_csrf(viewer: &Viewer, sent: &str) -> bool {
    use subtle::ConstantTimeEq;
    !sent.is_empty() && bool::from(sent.as_bytes().ct_eq(viewer.csrf.as_bytes()))
}

/// A console form whose viewer must also hold a role `R` allows (403 and
/// `access.denied` otherwise, before the form is looked at).
pub struct PostedAs<R: Roles> {
    pub viewer: Viewer,
    pub form: Form,
    roles: PhantomData<R>,
}

impl<S: Send + Sync, R: Roles> FromRequest<S> for PostedAs<R>
where
    AppState: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let route = req.uri().path().to_owned();
        let Posted { viewer, form } = Posted::from_request(req, state).await?;
        viewer.require::<R>(&AppState::from_ref(state), &route).await.map_err(IntoResponse::into_response)?;
        Ok(Self { viewer, form, roles: PhantomData })
    }
}

/// A viewer who must hold a role `R` allows to see a page.
pub struct ViewerAs<R: Roles> {
    pub viewer: Viewer,
    roles: PhantomData<R>,
}

impl<S: Send + Sync, R: Roles> FromRequestParts<S> for ViewerAs<R>
where
    AppState: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let viewer = Viewer::from_request_parts(parts, state).await?;
        let route = parts.uri.path().to_owned();
        viewer.require::<R>(&AppState::from_ref(state), &route).await.map_err(IntoResponse::into_response)?;
        Ok(Self { viewer, roles: PhantomData })
    }
}

/// The `Set-Cookie` of a new console session for `token`, lasting until
/// `expires_at` (at most `cap`).
pub fn session_started(
    state: &AppState,
    token: &SecretString,
    expires_at: Option<OffsetDateTime>,
    cap: time::Duration,
) -> HeaderValue {
    let settings = settings(state);
    let now = state.broker.clock.now();
    let lasts = expires_at.map_or(cap, |at| (at - now).min(cap)).whole_seconds().max(0);
    set_cookie(&settings, session_cookie(&settings), token.expose_secret(), lasts, "Strict")
}
