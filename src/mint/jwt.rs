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
    /// One audience as a string, several as an array (RFC 7519 §4.1.3).
    pub aud: Audiences,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    /// Space-separated scopes; absent when none were granted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The workload that requested the token: the same identity as `sub`
    /// when a workload acts for itself, the actor when it acts for someone.
    pub client_id: String,
    /// The system the credential belongs to.
    pub system: String,
    /// What the token is bound to (RFC 8705 §3, RFC 9449 §6); absent for a
    /// bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// For a delegated token (RFC 8693 §4.1): the actor (`sub`, `iss`),
    /// with the previous actors of a chain nested in its own `act`. `sub`
    /// is then on whose behalf the token acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
}

/// The `aud` claim: the targets a token is for. One is written as a string
/// (what most resource servers expect), several as an array; both are read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Audiences(pub Vec<String>);

impl Audiences {
    pub fn one(audience: impl Into<String>) -> Self {
        Self(vec![audience.into()])
    }

    /// The targets separated by spaces, as the audit trail and the stored
    /// credential record them (targets hold no spaces).
    pub fn joined(&self) -> String {
        self.0.join(" ")
    }

    /// The targets of a space-separated list.
    pub fn from_joined(text: &str) -> Self {
        Self(text.split(' ').filter(|a| !a.is_empty()).map(str::to_owned).collect())
    }

    pub fn contains(&self, audience: &str) -> bool {
        self.0.iter().any(|a| a == audience)
    }
}

impl Serialize for Audiences {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            all => all.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Audiences {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Either::deserialize(d)? {
            Either::One(one) => Self(vec![one]),
            Either::Many(all) => Self(all),
        })
    }
}

/// The `cnf` claim: the key or certificate a token is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// base64url SHA-256 of the client certificate (RFC 8705 §3.1).
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
    /// base64url SHA-256 JWK thumbprint of the DPoP key (RFC 9449 §6.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
}

impl Confirmation {
    pub fn is_empty(&self) -> bool {
        self.x5t_s256.is_none() && self.jkt.is_none()
    }
}
