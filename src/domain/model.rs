//! Owners, systems and grants: the governed units.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::values::{Audience, CredentialKind, GrantId, OwnerId, ScopeSet, SubjectMatch, SystemId};

/// A system's stage, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Sandbox,
    Pilot,
    Production,
}

/// Whether a system may operate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemState {
    Active,
    Suspended,
    Retired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerStatus {
    Active,
    Departed,
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)* _ => None }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(Tier { Sandbox => "sandbox", Pilot => "pilot", Production => "production" });
text_enum!(SystemState { Active => "active", Suspended => "suspended", Retired => "retired" });
text_enum!(OwnerStatus { Active => "active", Departed => "departed" });

/// Whether a grant's credentials must be sender-constrained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// Bound when the exchange offers a binding (an mTLS client
    /// certificate or a DPoP proof), bearer otherwise.
    #[default]
    Optional,
    /// Refused unless the token can be bound (mTLS or DPoP).
    Required,
    /// Refused without a DPoP proof (RFC 9449).
    Dpop,
    /// Refused unless the exchange came over mTLS (RFC 8705).
    Mtls,
}

text_enum!(Binding { Optional => "optional", Required => "required", Dpop => "dpop", Mtls => "mtls" });

/// A person accountable for systems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub id: OwnerId,
    pub display_name: String,
    pub email: String,
    pub status: OwnerStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub attested_until: OffsetDateTime,
}

impl Owner {
    /// Why this owner no longer vouches for anything, if they have lapsed.
    pub fn lapse_reason(&self, now: OffsetDateTime) -> Option<String> {
        if self.status == OwnerStatus::Departed {
            Some(format!("owner {} has departed", self.id))
        } else if self.attested_until <= now {
            Some(format!("owner {}'s ownership attestation lapsed at {}", self.id, super::rfc3339(self.attested_until)))
        } else {
            None
        }
    }
}

/// An AI use case: the unit that owns grants and credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct System {
    pub id: SystemId,
    pub name: String,
    pub purpose: String,
    pub business_owner: OwnerId,
    pub technical_owner: OwnerId,
    pub tier: Tier,
    pub state: SystemState,
    #[serde(with = "time::serde::rfc3339::option")]
    pub pilot_ends_at: Option<OffsetDateTime>,
    pub data_classification: Option<String>,
    pub suspended_reason: Option<String>,
    /// When the system entered its tier: a sandbox or pilot lasts at most
    /// `lifecycle.max_pilot` from here.
    #[serde(with = "time::serde::rfc3339")]
    pub tier_started_at: OffsetDateTime,
}

/// A rule binding workload identities to a system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub id: GrantId,
    pub system: SystemId,
    /// Name of the trusted issuer (from config) whose tokens this grant accepts.
    pub issuer: String,
    pub subject: SubjectMatch,
    pub audiences: Vec<Audience>,
    pub scopes: ScopeSet,
    pub default_scopes: ScopeSet,
    pub kinds: Vec<CredentialKind>,
    /// Longest lifetime a credential from this grant may have.
    #[serde(serialize_with = "serialize_secs")]
    pub max_ttl: Duration,
    /// Whether issued tokens must be sender-constrained.
    pub binding: Binding,
    /// Most targets (audiences and resources) one token may name; 1 by
    /// default, so least privilege stays the default.
    pub max_audiences: u32,
    /// Whom the workload may act for (delegation, RFC 8693); empty: no one.
    pub on_behalf_of: Vec<super::delegation::OnBehalfOf>,
    /// Present: every exchange under the grant needs a person's approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<super::approval::ApprovalRule>,
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

impl System {
    /// The owners as audit events record them: "business technical".
    pub fn owners_label(&self) -> String {
        format!("{} {}", self.business_owner, self.technical_owner)
    }
}

impl Grant {
    pub fn covers(&self, issuer: &str, subject: &str) -> bool {
        self.issuer == issuer && self.subject.matches(subject)
    }
}

/// A grant together with everything the exchange needs to decide on it: the
/// system it belongs to and the system's two owners as they are now.
#[derive(Debug, Clone)]
pub struct GrantContext {
    pub grant: Grant,
    pub system: System,
    pub business_owner: Owner,
    pub technical_owner: Owner,
    /// The grant row's version when it was read: an issuance decided on an
    /// older version of its grant is refused at commit.
    pub grant_version: i64,
}

/// What an administrative caller (a person or an automation token) may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including creating admin tokens.
    Admin,
    /// Systems, owners, grants, promotion, suspension, revocation.
    Operator,
    /// Read-only: systems, owners, credentials, audit.
    Auditor,
    /// Introspection only.
    Introspector,
    /// A person who decides access requests, and nothing else.
    Approver,
}

text_enum!(Role {
    Admin => "admin",
    Operator => "operator",
    Auditor => "auditor",
    Introspector => "introspector",
    Approver => "approver"
});

impl Role {
    /// Roles allowed to call the RFC 7662 introspection endpoint.
    pub fn may_introspect(self) -> bool {
        matches!(self, Self::Admin | Self::Operator | Self::Introspector)
    }
}
