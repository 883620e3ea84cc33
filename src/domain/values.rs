//! Value types parsed once at the edge. Past the edge, invalid values cannot
//! exist: a `Scope` is always a valid RFC 6749 scope token, a `SystemId`
//! always a short slug, and so on.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value was refused, phrased for the caller who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

macro_rules! string_value {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Identifier of a system, owner or grant: 1–64 characters of lower-case
/// letters, digits, `-` and `_`, starting with a letter or digit.
fn check_slug(kind: &str, s: &str) -> Result<(), InvalidValue> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "{kind} {s:?} is invalid: use 1-64 lower-case letters, digits, '-' or '_', starting with a letter or digit"
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SystemId(String);
impl SystemId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        check_slug("system id", s).map(|()| Self(s.to_owned()))
    }
}
string_value!(SystemId);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(String);
impl OwnerId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        check_slug("owner id", s).map(|()| Self(s.to_owned()))
    }
}
string_value!(OwnerId);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(String);
impl GrantId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        check_slug("grant id", s).map(|()| Self(s.to_owned()))
    }
}
string_value!(GrantId);

/// One RFC 6749 §3.3 scope token: printable ASCII except space, `"` and `\`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

/// Scopes per request or grant; more is a sign of a broken client.
pub const MAX_SCOPES: usize = 64;
const MAX_SCOPE_LEN: usize = 128;

impl Scope {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let ok = !s.is_empty()
            && s.len() <= MAX_SCOPE_LEN
            && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidValue(format!(
                "scope {:?} is invalid: scopes are 1-{MAX_SCOPE_LEN} printable ASCII characters without spaces, quotes or backslashes",
                truncate(s, 40)
            )))
        }
    }
}
string_value!(Scope);

/// A set of distinct scopes, kept sorted so the issued `scope` claim is
/// canonical.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses the space-separated form of the `scope` parameter. Repeated
    /// scopes are an error rather than silently merged: they indicate a
    /// client bug worth surfacing.
    pub fn parse_space_separated(s: &str) -> Result<Self, InvalidValue> {
        if s.split(' ').count() > MAX_SCOPES {
            return Err(InvalidValue(format!("too many scopes: at most {MAX_SCOPES}")));
        }
        let mut set = BTreeSet::new();
        for part in s.split(' ').filter(|p| !p.is_empty()) {
            let scope = Scope::parse(part)?;
            if !set.insert(scope) {
                return Err(InvalidValue(format!("scope {:?} is repeated", truncate(part, 40))));
            }
        }
        Ok(Self(set))
    }

    pub fn from_list(items: &[String]) -> Result<Self, InvalidValue> {
        if items.len() > MAX_SCOPES {
            return Err(InvalidValue(format!("too many scopes: at most {MAX_SCOPES}")));
        }
        let mut set = BTreeSet::new();
        for item in items {
            if !set.insert(Scope::parse(item)?) {
                return Err(InvalidValue(format!("scope {item:?} is repeated")));
            }
        }
        Ok(Self(set))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// Members of `self` that `allowed` does not contain.
    pub fn outside<'a>(&'a self, allowed: &'a ScopeSet) -> impl Iterator<Item = &'a Scope> + 'a {
        self.0.difference(&allowed.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().map(|s| s.0.clone()).collect()
    }

    /// The RFC 6749 space-separated form.
    pub fn joined(&self) -> String {
        self.0.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ")
    }
}

impl Serialize for ScopeSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de> Deserialize<'de> for ScopeSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        Self::from_list(&items).map_err(serde::de::Error::custom)
    }
}

/// An audience: the resource a credential is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Audience(String);

impl Audience {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let ok =
            !s.is_empty() && s.len() <= 256 && s != "*" && s.chars().all(|c| !c.is_control() && !c.is_whitespace());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidValue(format!(
                "audience {:?} is invalid: 1-256 characters, no spaces or control characters, no wildcard",
                truncate(s, 40)
            )))
        }
    }
}
string_value!(Audience);

/// Longest subject accepted (a SPIFFE ID is at most 2048 bytes).
pub const MAX_SUBJECT_LEN: usize = 2048;

/// Which workload subjects a grant covers: one exact subject, or every
/// subject under a path prefix written `spiffe://td/ns/ai/*`. A prefix only
/// matches whole path segments: `.../ns/ai/*` covers `.../ns/ai/sa/x` but not
/// `.../ns/aix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectMatch {
    Exact(String),
    /// The prefix, always ending in `/`.
    Prefix(String),
}

impl SubjectMatch {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let bad = |why: &str| InvalidValue(format!("subject {:?} is invalid: {why}", truncate(s, 60)));
        if s.is_empty() || s.len() > MAX_SUBJECT_LEN {
            return Err(bad("must be 1-2048 characters"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("no spaces or control characters"));
        }
        match s.strip_suffix("/*") {
            Some(prefix) => {
                if prefix.contains('*') {
                    return Err(bad("'*' is only allowed as a final '/*' path segment"));
                }
                if prefix.strip_prefix("spiffe://").is_some_and(str::is_empty) {
                    return Err(bad("a prefix must name at least a trust domain"));
                }
                let path = prefix.split_once("://").map_or(prefix, |(_, rest)| rest);
                if !clean_path(path) {
                    return Err(bad("a prefix may not contain empty, '.' or '..' segments, '%', '?' or '#'"));
                }
                Ok(Self::Prefix(format!("{prefix}/")))
            }
            None if s.contains('*') => Err(bad("'*' is only allowed as a final '/*' path segment")),
            None => Ok(Self::Exact(s.to_owned())),
        }
    }

    pub fn matches(&self, subject: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == subject,
            // The rest must be a clean path, so `../` or percent-encoded
            // segments cannot climb out of the prefix.
            Self::Prefix(prefix) => {
                subject.strip_prefix(prefix.as_str()).is_some_and(|rest| !rest.is_empty() && clean_path(rest))
            }
        }
    }
}

/// A path of non-empty segments, none `.` or `..`, with no percent-encoding,
/// query or fragment (the SPIFFE ID path rules).
fn clean_path(path: &str) -> bool {
    !path.contains(['%', '?', '#']) && path.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

impl fmt::Display for SubjectMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(s) => f.write_str(s),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

impl Serialize for SubjectMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SubjectMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The kinds of credential a grant can allow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CredentialKind {
    /// A signed JWT access token (RFC 9068).
    Jwt,
    /// An opaque `hlf_` secret, stored only as a keyed hash.
    Secret,
    /// A dynamic login on the named PostgreSQL backend (`postgres:<name>`).
    Postgres(String),
}

impl CredentialKind {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "jwt" => Ok(Self::Jwt),
            "secret" => Ok(Self::Secret),
            other => match other.strip_prefix("postgres:") {
                Some(backend) if is_backend_name(backend) => Ok(Self::Postgres(backend.to_owned())),
                _ => Err(InvalidValue(format!(
                    "credential kind {:?} is not supported; use \"jwt\", \"secret\" or \"postgres:<backend>\"",
                    truncate(other, 60)
                ))),
            },
        }
    }
}

/// A database backend's name: 1-32 lower-case letters, digits and `_`.
pub fn is_backend_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Jwt => f.write_str("jwt"),
            Self::Secret => f.write_str("secret"),
            Self::Postgres(backend) => write!(f, "postgres:{backend}"),
        }
    }
}

impl Serialize for CredentialKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CredentialKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Audience {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::str::FromStr for CredentialKind {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(SystemId::parse("summarizer-1").is_ok());
        for bad in ["", "Upper", "-lead", "a b", "x'; drop table", &"a".repeat(65)] {
            assert!(SystemId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_follow_rfc6749() {
        assert!(Scope::parse("reports:read").is_ok());
        for bad in ["", "a\"b", "a\\b", "é", "a b", &"s".repeat(129)] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        let set = ScopeSet::parse_space_separated("b a").unwrap();
        assert_eq!(set.joined(), "a b");
        assert!(ScopeSet::parse_space_separated("a a").is_err());
        assert!(ScopeSet::parse_space_separated(&vec!["x"; 65].join(" ")).is_err());
        assert!(ScopeSet::parse_space_separated("").unwrap().is_empty());
    }

    #[test]
    fn subject_prefix_matches_whole_segments() {
        let m = SubjectMatch::parse("spiffe://td/ns/ai/*").unwrap();
        assert!(m.matches("spiffe://td/ns/ai/sa/x"));
        assert!(!m.matches("spiffe://td/ns/aix"));
        assert!(!m.matches("spiffe://td/ns/ai/"));
        assert!(!m.matches("spiffe://td/ns/ai"));
        let exact = SubjectMatch::parse("spiffe://td/ns/ai/sa/x").unwrap();
        assert!(exact.matches("spiffe://td/ns/ai/sa/x"));
        assert!(!exact.matches("spiffe://td/ns/ai/sa/x/y"));
        for escape in [
            "spiffe://td/ns/ai/../../admin",
            "spiffe://td/ns/ai//x",
            "spiffe://td/ns/ai/./x",
            "spiffe://td/ns/ai/%2e%2e/admin",
            "spiffe://td/ns/ai/x?y",
            "spiffe://td/ns/ai/x/",
        ] {
            assert!(!m.matches(escape), "{escape}");
        }
        assert!(SubjectMatch::parse("spiffe://td/ns/../*").is_err());
        assert!(SubjectMatch::parse("spiffe://td/*/x").is_err());
        assert!(SubjectMatch::parse("spiffe:///*").is_err());
        assert!(SubjectMatch::parse("a*").is_err());
        assert_eq!(m.to_string(), "spiffe://td/ns/ai/*");
    }

    #[test]
    fn audiences() {
        assert!(Audience::parse("https://reports.internal").is_ok());
        assert!(Audience::parse("*").is_err());
        assert!(Audience::parse("a b").is_err());
        assert!(Audience::parse("").is_err());
    }
}
