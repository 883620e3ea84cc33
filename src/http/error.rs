//! The one HTTP error type, and the one place that chooses status codes.
//!
//! Every error body has the RFC 6749 §5.2 shape, `{"error", "error_description"}`,
//! on OAuth and admin routes alike. A 500 logs its cause and returns a
//! generic body; a 503 says the broker cannot take the request now and that
//! nothing was issued, and is answered only when storage could not be
//! reached or could not commit; a 401 sets `WWW-Authenticate`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::broker::exchange::ExchangeError;
use crate::broker::{Failure, Internal, Unavailable};
use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    /// An OAuth error with its RFC code, answered with 400.
    OAuth {
        code: &'static str,
        description: String,
    },
    /// No or invalid credentials (401).
    Unauthorized(String),
    /// Client authentication at an OAuth endpoint failed (401
    /// `invalid_client`, RFC 6749 §5.2, with a `Basic` challenge).
    InvalidClient(String),
    /// Authenticated but not allowed (403).
    Forbidden(String),
    /// A request value is invalid; the body names the field (400).
    Invalid {
        field: String,
        message: String,
    },
    /// The request conflicts with the current state (409).
    Conflict(String),
    /// The promotion gate refused (409), listing every failed check.
    Gate(Vec<String>),
    /// The change would leave a production system without what production
    /// requires (409), listing every failed check.
    Invariant(Vec<String>),
    /// A catalog is invalid (400), listing every problem with its entry and
    /// field.
    Problems(Vec<String>),
    NotFound(String),
    MethodNotAllowed,
    UnsupportedMediaType(String),
    PayloadTooLarge(usize),
    /// Over a rate limit (429, with `Retry-After`).
    TooManyRequests(crate::broker::throttle::Throttled),
    /// Storage or another dependency is down: 503, nothing issued.
    Unavailable,
    /// A bug: logged, generic body.
    Internal(String),
    /// The exchange awaits a person's approval (400
    /// `authorization_pending`, with the access request's id, the polling
    /// interval and how long it waits).
    Pending(crate::broker::approvals::Pending),
}

impl ApiError {
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::OAuth { code: "invalid_request", description: description.into() }
    }
}

/// A storage call that failed. Only an outage (the database could not be
/// reached or could not commit) is 503, logged as an error and counted in
/// `halflife_storage_unavailable_total`: an error a request's own query
/// caused must not look like one, or any caller could raise the alarm.
impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> Self {
        match e.0 {
            StoreError::Unavailable(cause) => {
                tracing::error!(error = %cause, "storage unavailable");
                Self::Unavailable
            }
            StoreError::InvalidValue(cause) => {
                // The edge refuses what it knows the database cannot hold;
                // this says it missed something.
                tracing::warn!(error = %cause, "the database refused a value of the request");
                Self::invalid_request("a value in the request cannot be stored or searched for")
            }
            StoreError::Conflict(message) => Self::Conflict(message),
            StoreError::NotFound(message) => Self::NotFound(message),
            other @ (StoreError::Corrupt(_) | StoreError::Refused(_)) => Self::Internal(other.to_string()),
        }
    }
}

/// The broker's own machinery failed (signing, randomness, key
/// generation): 500 with a generic description; the log says what failed.
impl From<Internal> for ApiError {
    fn from(e: Internal) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<Failure> for ApiError {
    fn from(e: Failure) -> Self {
        match e {
            Failure::Unavailable(u) => u.into(),
            Failure::Internal(i) => i.into(),
        }
    }
}

impl From<crate::broker::operator::OpError> for ApiError {
    fn from(e: crate::broker::operator::OpError) -> Self {
        use crate::broker::operator::OpError;
        match e {
            OpError::NotFound(m) => Self::NotFound(m),
            OpError::Invalid { field, message } => Self::Invalid { field, message },
            OpError::Conflict(m) => Self::Conflict(m),
            OpError::Gate(failed) => Self::Gate(failed),
            OpError::Invariant(failed) => Self::Invariant(failed),
            OpError::Problems(problems) => Self::Problems(problems),
            OpError::Unavailable(u) => u.into(),
            OpError::Internal(i) => i.into(),
        }
    }
}

impl From<ExchangeError> for ApiError {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::Denied(denial) => {
                Self::OAuth { code: denial.code.as_str(), description: denial.description }
            }
            ExchangeError::Unavailable(u) => u.into(),
            ExchangeError::Throttled(t) => Self::TooManyRequests(t),
            ExchangeError::Internal(i) => i.into(),
            ExchangeError::Pending(pending) => Self::Pending(pending),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut extra = serde_json::Map::new();
        let mut retry_after = None;
        let mut basic_challenge = false;
        let (status, code, description) = match self {
            // A client certificate that authenticates nothing (RFC 6749 §5.2).
            Self::OAuth { code: "invalid_client", description } => {
                (StatusCode::UNAUTHORIZED, "invalid_client", description)
            }
            Self::OAuth { code, description } => (StatusCode::BAD_REQUEST, code, description),
            Self::Unauthorized(d) => (StatusCode::UNAUTHORIZED, "invalid_token", d),
            Self::InvalidClient(d) => {
                basic_challenge = true;
                (StatusCode::UNAUTHORIZED, "invalid_client", d)
            }
            Self::Forbidden(d) => (StatusCode::FORBIDDEN, "insufficient_scope", d),
            Self::Invalid { field, message } => {
                let description = format!("{field}: {message}");
                extra.insert("field".into(), serde_json::Value::String(field));
                (StatusCode::BAD_REQUEST, "invalid_request", description)
            }
            Self::Conflict(d) => (StatusCode::CONFLICT, "conflict", d),
            Self::Gate(failed) => {
                let description = format!("promotion refused: {}", failed.join("; "));
                extra.insert("failed_checks".into(), json!(failed));
                (StatusCode::CONFLICT, "promotion_refused", description)
            }
            Self::Invariant(failed) => {
                let description = format!("production requires: {}", failed.join("; "));
                extra.insert("failed_checks".into(), json!(failed));
                (StatusCode::CONFLICT, "production_invariant", description)
            }
            Self::Problems(problems) => {
                let description = format!("the catalog is invalid: {}", problems.join("; "));
                extra.insert("problems".into(), json!(problems));
                (StatusCode::BAD_REQUEST, "invalid_request", description)
            }
            Self::NotFound(d) => (StatusCode::NOT_FOUND, "not_found", d),
            Self::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "method not allowed on this endpoint".to_owned())
            }
            Self::UnsupportedMediaType(d) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request", d),
            Self::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                format!("request body exceeds the limit of {limit} bytes"),
            ),
            Self::TooManyRequests(throttled) => {
                retry_after = Some(throttled.retry_after.as_secs());
                extra.insert("retry_after".into(), json!(throttled.retry_after.as_secs()));
                let whose = match throttled.limit {
                    crate::broker::throttle::Limit::Workload => "this workload",
                    crate::broker::throttle::Limit::Source => "this address after too many failed attestations",
                };
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "too many requests from {whose}; nothing was issued. Retry after {} s",
                        throttled.retry_after.as_secs()
                    ),
                )
            }
            Self::Pending(pending) => {
                extra.insert("access_request".into(), json!(pending.access_request));
                extra.insert("interval".into(), json!(pending.interval));
                extra.insert("expires_in".into(), json!(pending.expires_in));
                (StatusCode::BAD_REQUEST, "authorization_pending", pending.description)
            }
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the broker cannot record decisions right now; nothing was issued. Retry with backoff".to_owned(),
            ),
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal error; the request id identifies it in the server log".to_owned(),
                )
            }
        };
        let mut body = serde_json::Map::new();
        body.insert("error".into(), json!(code));
        body.insert("error_description".into(), json!(description));
        body.extend(extra);
        let mut response = (status, Json(serde_json::Value::Object(body))).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match status {
            StatusCode::UNAUTHORIZED if basic_challenge => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"halflife\""));
            }
            StatusCode::UNAUTHORIZED if code == "invalid_client" => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"halflife\""));
            }
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"halflife\", error=\"invalid_token\""),
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                if let Ok(value) = HeaderValue::from_str(&retry_after.unwrap_or(1).to_string()) {
                    headers.insert(header::RETRY_AFTER, value);
                }
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(error: StoreError) -> StatusCode {
        ApiError::from(Unavailable(error)).into_response().status()
    }

    #[test]
    fn only_an_outage_is_503() {
        assert_eq!(status_of(StoreError::Unavailable("connection refused".into())), StatusCode::SERVICE_UNAVAILABLE);
        let nul = "invalid byte sequence for encoding \"UTF8\": 0x00";
        assert_eq!(status_of(StoreError::InvalidValue(nul.into())), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(StoreError::Refused("syntax error".into())), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(status_of(StoreError::Corrupt("timestamp".into())), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(status_of(StoreError::Conflict("taken".into())), StatusCode::CONFLICT);
        assert_eq!(status_of(StoreError::NotFound("none".into())), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_failure_of_the_broker_itself_is_500_and_not_an_outage() {
        let response = ApiError::from(Internal::new("signing", "the key refused")).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 4096).await.expect("a small body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
        assert_eq!(body["error"], "server_error");
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(!description.contains("signing") && !description.contains("refused"), "{description}");
    }
}
