//! Extractors: strict form parsing, request attribution, admin bearer auth.
//! Their rejections come back as [`ApiError`], in the same shape as every
//! other error.

use std::borrow::Cow;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::AppState;
use super::error::ApiError;
use crate::broker::admin::AdminCaller;
use crate::domain::model::Role;
use crate::store::RequestMeta;

/// `application/x-www-form-urlencoded` parameters. A repeated parameter is
/// an error (RFC 6749 §3.2 forbids repeats); unknown ones are kept and
/// ignored by handlers, as RFC 6749 §3.1 requires. A form may carry a
/// bearer token (`subject_token`, `token`), so the values it still holds
/// are zeroized when it is dropped, and a secret leaves it only as a
/// [`SecretString`] ([`Form::require_secret`], [`Form::secret`]).
pub struct Form(HashMap<String, Zeroizing<String>>, HashMap<String, Vec<String>>);

/// Parameters that may be repeated: the targets of a token request (RFC
/// 8693 §2.1, RFC 8707 §2).
const REPEATABLE: &[&str] = &["audience", "resource"];

impl Form {
    /// Every value of a repeatable parameter, in order.
    pub fn take_all(&mut self, name: &str) -> Vec<String> {
        self.1.remove(name).unwrap_or_default()
    }

    /// A parameter that is no secret, if present.
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name).map(|mut value| std::mem::take(&mut *value))
    }

    /// A parameter that is no secret, present and non-empty.
    pub fn require(&mut self, name: &str) -> Result<String, ApiError> {
        match self.take(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(missing(name)),
        }
    }

    /// A secret parameter, present and non-empty, moved out of the form.
    pub fn require_secret(&mut self, name: &str) -> Result<SecretString, ApiError> {
        match self.0.remove(name) {
            // Moved, not copied: the secret's one buffer is zeroized when
            // the `SecretString` drops.
            Some(mut v) if !v.is_empty() => Ok(SecretString::from(std::mem::take(&mut *v))),
            _ => Err(missing(name)),
        }
    }

    /// A copy of a secret parameter, if present; the form keeps its own.
    pub fn secret(&self, name: &str) -> Option<SecretString> {
        self.0.get(name).map(|v| SecretString::from(v.as_str()))
    }

    /// A parameter that is no secret, left in the form.
    pub fn peek(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.as_str())
    }

    /// Whether the form holds the parameter.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name) || self.1.contains_key(name)
    }
}

fn missing(name: &str) -> ApiError {
    ApiError::invalid_request(format!("missing required parameter {name}"))
}

/// The request body, if its media type is `expected` (else 415) and it fits
/// the body limit (else 413).
async fn body_of_type<S: Send + Sync>(req: Request, state: &S, expected: &str) -> Result<Bytes, ApiError>
where
    AppState: FromRef<S>,
{
    let limit = AppState::from_ref(state).max_body_bytes;
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case(expected) {
        return Err(ApiError::UnsupportedMediaType(format!("Content-Type must be {expected}")));
    }
    Bytes::from_request(req, state).await.map_err(|_| ApiError::PayloadTooLarge(limit))
}

impl<S: Send + Sync> FromRequest<S> for Form
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = body_of_type(req, state, "application/x-www-form-urlencoded").await?;
        Self::parse(&body)
    }
}

impl Form {
    /// Parses a form body; a repeated parameter is an error.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let mut params = HashMap::new();
        let mut repeatable: HashMap<String, Vec<String>> = HashMap::new();
        for (key, value) in pairs(body) {
            if REPEATABLE.contains(&key.as_ref()) {
                repeatable.entry(key.into_owned()).or_default().push(value.into_owned());
                continue;
            }
            if params.insert(key.clone().into_owned(), Zeroizing::new(value.into_owned())).is_some() {
                return Err(ApiError::invalid_request(format!("parameter {key} is repeated")));
            }
        }
        Ok(Self(params, repeatable))
    }
}

/// The name-value pairs of a form body, decoded as the WHATWG
/// `application/x-www-form-urlencoded` parser decodes them
/// (`form_urlencoded::parse`). A pair with no `%` or `+` that is valid
/// UTF-8, as a JWT or an id is, is used as it stands instead of going
/// through percent-decoding byte by byte and a lossy UTF-8 pass: a token
/// exchange's body is mostly its `subject_token`.
fn pairs(body: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    let mut start = 0;
    let ends = memchr::memchr_iter(b'&', body).chain(std::iter::once(body.len()));
    let pairs = ends.map(move |end| {
        let pair = &body[start..end];
        start = end + 1;
        pair
    });
    pairs.filter(|pair| !pair.is_empty()).filter_map(|pair| {
        if memchr::memchr2(b'%', b'+', pair).is_none()
            && let Ok(text) = std::str::from_utf8(pair)
        {
            let (key, value) = text.split_once('=').unwrap_or((text, ""));
            return Some((Cow::Borrowed(key), Cow::Borrowed(value)));
        }
        form_urlencoded::parse(pair).next()
    })
}

/// Who sent the request, for attribution in audit events.
pub struct Meta(pub RequestMeta);

impl<S: Send + Sync> FromRequestParts<S> for Meta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let request_id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let source = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string());
        Ok(Self(RequestMeta { request_id, source }))
    }
}

/// The request's `Authorization` header, if it has one. More than one is a
/// malformed request (400): which of them the caller meant is anyone's guess,
/// and two components reading "the" header could each read another.
pub fn authorization(headers: &HeaderMap) -> Result<Option<&HeaderValue>, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (first, None) => Ok(first),
        (_, Some(_)) => Err(ApiError::invalid_request("send at most one Authorization header")),
    }
}

/// An administrative caller authenticated by `Authorization: Bearer hla_…`.
/// A workload's own access token, sent as `Bearer` or `DPoP`, is refused
/// with 403 and recorded as `access.denied`; anything else is 401.
pub struct Admin(pub AdminCaller);

impl<S: Send + Sync> FromRequestParts<S> for Admin
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let Meta(meta) = Meta::from_request_parts(parts, &()).await?;
        let header = authorization(&parts.headers)?.and_then(|v| v.to_str().ok()).ok_or_else(|| {
            ApiError::Unauthorized(
                "this endpoint requires a session (halflife login) or an automation token as a bearer token".into(),
            )
        })?;
        admin_from_header(&state, header, parts.uri.path(), &meta).await.map(Self)
    }
}

/// The admin caller an `Authorization` header value names: `Bearer
/// <admin token>`. A workload's own access token, sent as `Bearer` or
/// `DPoP`, is refused with 403 and recorded as `access.denied` on `route`;
/// anything else is 401.
async fn admin_from_header(
    state: &AppState,
    header: &str,
    route: &str,
    meta: &RequestMeta,
) -> Result<AdminCaller, ApiError> {
    let use_bearer = || ApiError::Unauthorized("use Authorization: Bearer <session token or automation token>".into());
    let (scheme, token) = header.split_once(' ').ok_or_else(use_bearer)?;
    let token = token.trim();
    // Schemes are case-insensitive (RFC 9110 §11.1). Admin tokens are
    // bearer tokens; a workload's access token may come as either.
    let bearer = scheme.eq_ignore_ascii_case("bearer");
    if !bearer && !scheme.eq_ignore_ascii_case("dpop") {
        return Err(use_bearer());
    }
    if bearer && let Some(caller) = state.broker.authenticate_admin(token).await? {
        return Ok(caller);
    }
    // A workload's own access token (RFC 6750 Bearer or RFC 9449 DPoP)
    // is a valid credential, just not for this: refuse with 403 and
    // record the attempt.
    if let Some(subject) = state.broker.workload_of(token).await? {
        state
            .broker
            .record_access_denied(
                &format!("workload {subject}"),
                route,
                "a workload access token was presented on an admin route",
                meta,
            )
            .await?;
        return Err(ApiError::Forbidden("workload access tokens cannot call admin routes; use an admin token".into()));
    }
    if !bearer {
        return Err(use_bearer());
    }
    Err(ApiError::Unauthorized(
        "the bearer token is not a valid session or automation token (it may have expired or been revoked)".into(),
    ))
}

/// Client authentication at the introspection and revocation endpoints
/// (RFC 7662 §2.1, RFC 7009 §2.1), by one of:
/// - `Authorization: Bearer <admin token>`;
/// - `client_secret_basic` (RFC 6749 §2.3.1): `Authorization: Basic`
///   base64 of `client_id:client_secret`, each form-urlencoded first;
/// - `client_secret_post`: `client_id` and `client_secret` in the form.
///
/// The client secret is an admin token and the `client_id` its name or id,
/// so standard OAuth clients (openid-client, Authlib) authenticate
/// unmodified. Returns `None` when the request carries no client
/// authentication; using two methods at once is 400, and credentials that
/// do not authenticate are 401 `invalid_client`.
pub async fn client_auth(
    state: &AppState,
    headers: &HeaderMap,
    form: &mut Form,
    route: &str,
    meta: &RequestMeta,
) -> Result<Option<AdminCaller>, ApiError> {
    let posted = form.contains("client_secret");
    let header = authorization(headers)?.map(|v| v.to_str().unwrap_or_default().to_owned());
    let (client_id, secret) = match header {
        Some(_) if posted => {
            return Err(ApiError::invalid_request(
                "use one client authentication method: the Authorization header or client_secret, not both",
            ));
        }
        Some(value) => match value.split_once(' ') {
            Some((scheme, credentials)) if scheme.eq_ignore_ascii_case("basic") => {
                let (id, secret) = basic_credentials(credentials.trim()).ok_or_else(invalid_client)?;
                (id, secret)
            }
            _ => return admin_from_header(state, &value, route, meta).await.map(Some),
        },
        None if posted => {
            let secret = form.require_secret("client_secret").map_err(|_| invalid_client())?;
            let id = form.take("client_id").filter(|id| !id.is_empty()).ok_or_else(invalid_client)?;
            (id, secret)
        }
        None => return Ok(None),
    };
    use secrecy::ExposeSecret;
    match state.broker.authenticate_admin(secret.expose_secret()).await? {
        Some(caller) if caller.name == client_id || caller.id == client_id => Ok(Some(caller)),
        _ => Err(invalid_client()),
    }
}

fn invalid_client() -> ApiError {
    ApiError::InvalidClient(
        "client authentication failed: the client_id is an admin token's name or id, and \
         the client secret that token"
            .into(),
    )
}

/// `client_id` and `client_secret` from the credentials of `Authorization:
/// Basic` (RFC 6749 §2.3.1: each form-urlencoded, then joined by `:` and
/// base64-encoded).
fn basic_credentials(encoded: &str) -> Option<(String, SecretString)> {
    use base64::Engine;
    let decoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(encoded).ok()?);
    let text = std::str::from_utf8(&decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let component = |part: &str| -> Option<Zeroizing<String>> {
        if part.contains(['&', '=']) {
            return None;
        }
        let mut pairs = form_urlencoded::parse(part.as_bytes());
        let (value, rest) = pairs.next()?;
        (rest.is_empty() && pairs.next().is_none()).then(|| Zeroizing::new(value.into_owned()))
    };
    let id = component(id)?;
    let secret = component(secret)?;
    (!id.is_empty() && !secret.is_empty()).then(|| (id.to_string(), SecretString::from(secret.as_str())))
}

/// Authorizes an authenticated admin caller for a route by its role (see
/// [`Authorized`]).
pub async fn authorize<R: Roles>(
    state: &AppState,
    caller: &AdminCaller,
    route: &str,
    meta: &RequestMeta,
) -> Result<(), ApiError> {
    if caller.may(R::allows) {
        return Ok(());
    }
    let why = match caller.roles.as_slice() {
        [one] => format!("role {one} may not {}", R::REFUSAL),
        _ => format!("roles {} may not {}", caller.roles_text(), R::REFUSAL),
    };
    state.broker.record_access_denied(&caller.actor(), route, &why, meta).await?;
    Err(ApiError::Forbidden(why))
}

/// Which admin roles may call a route.
pub trait Roles: Send + Sync + 'static {
    fn allows(role: Role) -> bool;
    /// What the role may not do, completing "role X may not …".
    const REFUSAL: &'static str;
}

/// An admin caller authenticated ([`Admin`]) and then authorized for the
/// route by its role: any other role gets 403, and the refusal is recorded
/// as `access.denied` naming the route.
///
/// A handler takes it before every extractor that parses the request (path,
/// query, body), and axum runs extractors in order: authenticate, then
/// authorize, then parse, so a caller without the right role learns nothing
/// about the route's input rules.
pub struct Authorized<R: Roles> {
    pub caller: AdminCaller,
    pub meta: RequestMeta,
    roles: PhantomData<R>,
}

impl<S: Send + Sync, R: Roles> FromRequestParts<S> for Authorized<R>
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Admin(caller) = Admin::from_request_parts(parts, state).await?;
        let Meta(meta) = Meta::from_request_parts(parts, state).await?;
        let route = parts.extensions.get::<MatchedPath>().map_or_else(|| parts.uri.path(), MatchedPath::as_str);
        authorize::<R>(&AppState::from_ref(state), &caller, route, &meta).await?;
        Ok(Self { caller, meta, roles: PhantomData })
    }
}

/// A JSON request body: `Content-Type: application/json` (else 415), within
/// the body limit (else 413), and parsed strictly (see [`JsonBody::parse`]);
/// errors name the offending field.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T>
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = body_of_type(req, state, "application/json").await?;
        Self::parse(&body)
    }
}

impl<T: serde::de::DeserializeOwned> JsonBody<T> {
    /// Parses a request body that must be one JSON object. serde fills a
    /// struct from an array by position too, which would sidestep the
    /// documented object shape and the refusal of unknown fields, so any
    /// other JSON value is refused, naming the shape expected. A NUL
    /// character in any string is refused as well, naming its field: one
    /// backend could not store it and the other would, so both refuse it
    /// here. Then the body is parsed again into `T`, strictly (unknown and
    /// duplicate fields are errors).
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let invalid = |e: serde_json::Error| ApiError::invalid_request(format!("invalid JSON body: {e}"));
        let value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
        let serde_json::Value::Object(fields) = &value else {
            return Err(ApiError::invalid_request(format!(
                "the JSON body must be an object ({{\"field\": value, ...}}), not {}",
                json_shape(&value)
            )));
        };
        for (name, field) in fields {
            if name.contains('\0') || holds_nul(field) {
                return Err(ApiError::Invalid {
                    field: name.escape_debug().to_string(),
                    message: "must not contain a NUL character (\\u0000)".into(),
                });
            }
        }
        serde_json::from_slice(body).map(Self).map_err(invalid)
    }
}

/// What kind of JSON value `value` is, for an error message.
fn json_shape(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Whether a string anywhere in `value` (or a member name) holds U+0000.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(fields) => fields.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Query-string parameters, parsed strictly: unknown or malformed
/// parameters are a 400 in the usual error shape, and so is a parameter
/// holding a control character (see [`no_control_characters`]).
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            no_control_characters(&name, &name)?;
            no_control_characters(&name, &value)?;
        }
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(v)| Self(v))
            .map_err(|e| ApiError::invalid_request(e.body_text()))
    }
}

/// Path parameters (axum's `Path`), refused in the usual error shape when
/// malformed, and with 400 naming the parameter when one holds a control
/// character (see [`no_control_characters`]).
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid_request(e.body_text()))?;
        for (name, value) in &raw {
            no_control_characters(name, value)?;
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Self(v))
            .map_err(|e| ApiError::invalid_request(e.body_text()))
    }
}

/// Refuses a path or query parameter holding a control character (C0,
/// including NUL, DEL and C1) with 400 `invalid_request` naming it. No id,
/// name or filter the API knows has one, and a value that reached the
/// database with a NUL was refused by PostgreSQL as a data error (and kept
/// by SQLite): refused here, both backends answer alike, before any query.
fn no_control_characters(name: &str, value: &str) -> Result<(), ApiError> {
    if value.chars().any(char::is_control) {
        return Err(ApiError::Invalid {
            field: name.escape_debug().to_string(),
            message: "must not contain control characters".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn description(error: ApiError) -> String {
        match error {
            ApiError::OAuth { code: "invalid_request", description } => description,
            other => panic!("expected invalid_request, got {other:?}"),
        }
    }

    #[test]
    fn a_secret_leaves_the_form_only_as_a_secret_and_only_once() {
        let mut form = Form::parse(b"subject_token=eyJ.a%2Bb.c&token=&scope=read+write").unwrap();
        let copy = form.secret("subject_token").unwrap();
        assert!(form.contains("subject_token"), "a copy leaves the form's own in place");
        let token = form.require_secret("subject_token").unwrap();
        assert_eq!((token.expose_secret(), copy.expose_secret()), ("eyJ.a+b.c", "eyJ.a+b.c"));
        assert!(!form.contains("subject_token"));
        let again = description(form.require_secret("subject_token").unwrap_err());
        assert_eq!(again, "missing required parameter subject_token");
        let empty = description(form.require_secret("token").unwrap_err());
        assert_eq!(empty, "missing required parameter token");
        assert_eq!(form.require("scope").unwrap(), "read write");
        assert!(form.secret("absent").is_none());
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Named {
        name: String,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[test]
    fn a_json_body_must_be_an_object() {
        let JsonBody(named) = JsonBody::<Named>::parse(br#" {"name": "x", "tags": ["a"]} "#).unwrap();
        assert_eq!((named.name.as_str(), named.tags.as_slice()), ("x", &["a".to_owned()][..]));
        // serde would fill `Named` from `["x"]` by position.
        for (body, shape) in [
            (&br#"["Renamed"]"#[..], "an array"),
            (br#" [] "#, "an array"),
            (br#""x""#, "a string"),
            (b"1", "a number"),
            (b"true", "a boolean"),
            (b"null", "null"),
        ] {
            let Err(error) = JsonBody::<Named>::parse(body) else { panic!("{body:?} was accepted") };
            let text = description(error);
            assert!(text.contains("must be an object") && text.ends_with(shape), "{text}");
        }
        let Err(error) = JsonBody::<Named>::parse(br#"{"name": "x", "name": "y"}"#) else { panic!("duplicate") };
        assert!(description(error).contains("duplicate field"));
    }

    #[test]
    fn a_nul_in_any_string_is_refused_naming_its_field() {
        for (body, field) in [
            (&br#"{"name": "a\u0000b"}"#[..], "name"),
            (br#"{"name": "x", "tags": ["ok", "\u0000"]}"#, "tags"),
            (br#"{"name": "x", "n\u0000": 1}"#, "n\\0"),
        ] {
            match JsonBody::<Named>::parse(body) {
                Err(ApiError::Invalid { field: named, .. }) => assert_eq!(named, field),
                other => panic!("{body:?}: {:?}", other.map(|JsonBody(v)| v)),
            }
        }
        // An escaped backslash before u0000 is no NUL.
        assert_eq!(JsonBody::<Named>::parse(br#"{"name": "\\u0000"}"#).unwrap().0.name, "\\u0000");
    }

    #[test]
    fn pairs_decode_as_the_urlencoded_parser_does() {
        let bodies: &[&[u8]] = &[
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=eyJ.eyJ.sig",
            b"a=1&&b=&=c&d&e==f&scope=read+write&x=%zz&y=%41%e2%82%ac",
            b"name=caf\xc3\xa9&bad=\xff\xfe&bad%2B=\xc3&plus+key=v",
            b"&&&",
            b"",
            b"k=v=w&k2",
        ];
        for body in bodies {
            let ours: Vec<(String, String)> = pairs(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            let theirs: Vec<(String, String)> =
                form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(body));
        }
        let (key, value) = pairs(b"subject_token=eyJ.eyJ.sig").next().unwrap();
        assert!(matches!((key, value), (Cow::Borrowed("subject_token"), Cow::Borrowed("eyJ.eyJ.sig"))));
    }

    #[test]
    fn a_repeated_parameter_is_refused() {
        let Err(error) = Form::parse(b"token=a&token=b") else { panic!("a repeated token was accepted") };
        assert_eq!(description(error), "parameter token is repeated");
    }
}
