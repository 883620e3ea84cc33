//! Extractors: strict form parsing, request attribution, admin bearer auth.
//! Their rejections come back as [`ApiError`], in the same shape as every
//! other error.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::broker::admin::AdminCaller;
use crate::store::RequestMeta;

/// Longest request id accepted from a client; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// `application/x-www-form-urlencoded` parameters. A repeated parameter is
/// an error (RFC 6749 §3.2 forbids repeats); unknown ones are kept and
/// ignored by handlers, as RFC 6749 §3.1 requires.
pub struct Form(pub HashMap<String, String>);

impl Form {
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    /// A parameter that must be present and non-empty.
    pub fn require(&mut self, name: &str) -> Result<String, ApiError> {
        match self.take(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::invalid_request(format!(
                "missing required parameter {name}"
            ))),
        }
    }
}

impl<S: Send + Sync> FromRequest<S> for Form
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = AppState::from_ref(state).max_body_bytes;
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(ApiError::UnsupportedMediaType(
                "Content-Type must be application/x-www-form-urlencoded".into(),
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(limit))?;
        let mut params = HashMap::new();
        for (key, value) in form_urlencoded::parse(&body) {
            if params
                .insert(key.clone().into_owned(), value.into_owned())
                .is_some()
            {
                return Err(ApiError::invalid_request(format!(
                    "parameter {key} is repeated"
                )));
            }
        }
        Ok(Self(params))
    }
}

/// Who sent the request, for attribution in audit events.
pub struct Meta(pub RequestMeta);

impl<S: Send + Sync> FromRequestParts<S> for Meta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID)
            .map(str::to_owned);
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        Ok(Self(RequestMeta { request_id, source }))
    }
}

/// An administrative caller authenticated by `Authorization: Bearer hla_…`.
pub struct Admin(pub AdminCaller);

impl<S: Send + Sync> FromRequestParts<S> for Admin
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::Unauthorized("this endpoint requires an admin bearer token".into())
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthorized("use Authorization: Bearer <admin token>".into())
            })?;
        match state.broker.authenticate_admin(token).await? {
            Some(caller) => Ok(Self(caller)),
            None => Err(ApiError::Unauthorized(
                "the bearer token is not a valid admin token".into(),
            )),
        }
    }
}
