//! RFC 9068 JWT access tokens.

use serde::{Deserialize, Serialize};

/// The `typ` header of issued access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Claims of an issued access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    /// The workload identity.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    /// Space-separated scopes; absent when none were granted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The workload that requested the token (the same identity as `sub`:
    /// a workload acts for itself).
    pub client_id: String,
    /// The system the credential belongs to.
    pub system: String,
}
