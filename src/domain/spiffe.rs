//! SPIFFE ID syntax, as the SPIFFE ID specification writes it.
//!
//! A SPIFFE ID is `spiffe://<trust domain>/<path>`: the trust domain is
//! lower-case letters, digits, `.`, `-` and `_`; the path is non-empty
//! segments of letters, digits, `.`, `-` and `_`, none of them `.` or `..`;
//! no port, user info, query, fragment or percent-encoding; at most 2048
//! bytes. Certificates carrying these IDs are checked in `attest::spiffe`.

use std::fmt;

/// Longest SPIFFE ID accepted (SPIFFE ID specification §2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A workload's SPIFFE ID, parsed and normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    #[error("does not start with spiffe://")]
    Scheme,
    #[error("has an empty trust domain")]
    EmptyTrustDomain,
    #[error("trust domain may hold only a-z, 0-9, '.', '-' and '_'")]
    TrustDomainCharacters,
    #[error("names no workload path")]
    EmptyPath,
    #[error("path has an empty, '.' or '..' segment")]
    PathSegment,
    #[error("path may hold only letters, digits, '.', '-', '_' and '/' (no percent-encoding, query or fragment)")]
    PathCharacters,
}

impl SpiffeId {
    /// Parses a workload SPIFFE ID. A bare trust domain (`spiffe://td`)
    /// names no workload and is refused.
    pub fn parse(id: &str) -> Result<Self, SpiffeIdError> {
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = id.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        validate_trust_domain(trust_domain)?;
        if path.is_empty() || path == "/" {
            return Err(SpiffeIdError::EmptyPath);
        }
        for segment in path[1..].split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(SpiffeIdError::PathSegment);
            }
            if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
                return Err(SpiffeIdError::PathCharacters);
            }
        }
        Ok(Self { trust_domain: trust_domain.to_owned(), path: path.to_owned() })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// Checks a trust domain name as configured or as found in an ID.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN
        || !td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(SpiffeIdError::TrustDomainCharacters);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids() {
        let id = SpiffeId::parse("spiffe://prod.example/ns/ai/sa/summarizer").unwrap();
        assert_eq!(id.trust_domain(), "prod.example");
        assert_eq!(id.to_string(), "spiffe://prod.example/ns/ai/sa/summarizer");
    }

    #[test]
    fn refuses_what_the_spec_forbids() {
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        let cases: &[(&str, SpiffeIdError)] = &[
            ("https://td/x", SpiffeIdError::Scheme),
            ("SPIFFE://td/x", SpiffeIdError::Scheme),
            ("spiffe:///x", SpiffeIdError::EmptyTrustDomain),
            ("spiffe://TD/x", SpiffeIdError::TrustDomainCharacters),
            ("spiffe://td:443/x", SpiffeIdError::TrustDomainCharacters),
            ("spiffe://user@td/x", SpiffeIdError::TrustDomainCharacters),
            ("spiffe://td", SpiffeIdError::EmptyPath),
            ("spiffe://td/", SpiffeIdError::EmptyPath),
            ("spiffe://td/a//b", SpiffeIdError::PathSegment),
            ("spiffe://td/a/./b", SpiffeIdError::PathSegment),
            ("spiffe://td/a/../b", SpiffeIdError::PathSegment),
            ("spiffe://td/a/", SpiffeIdError::PathSegment),
            ("spiffe://td/a%2Fb", SpiffeIdError::PathCharacters),
            ("spiffe://td/a?b=c", SpiffeIdError::PathCharacters),
            ("spiffe://td/a#b", SpiffeIdError::PathCharacters),
            ("spiffe://td/a b", SpiffeIdError::PathCharacters),
            (&long, SpiffeIdError::TooLong),
        ];
        for (id, want) in cases {
            assert_eq!(SpiffeId::parse(id).as_ref().err(), Some(want), "{id}");
        }
    }
}
