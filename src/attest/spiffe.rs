//! SPIFFE IDs and X.509-SVIDs, checked the way the SPIFFE specifications
//! write them.
//!
//! A SPIFFE ID is `spiffe://<trust domain>/<path>`: the trust domain is
//! lower-case letters, digits, `.`, `-` and `_`; the path is non-empty
//! segments of letters, digits, `.`, `-` and `_`, none of them `.` or `..`;
//! no port, user info, query, fragment or percent-encoding; at most 2048
//! bytes. An X.509-SVID's leaf carries exactly one URI SAN holding the
//! workload's SPIFFE ID, is not a CA and may not sign certificates or CRLs.
//! Chain validation against the trust domain's bundle happens in the TLS
//! handshake (`attest::x509`); this module checks everything about the leaf
//! itself.

use std::fmt;

use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::crypto;

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

/// A leaf certificate that is a valid X.509-SVID.
#[derive(Debug, Clone)]
pub struct X509Svid {
    pub id: SpiffeId,
    pub not_after: OffsetDateTime,
}

/// How the audit trail names a certificate: SHA-256 of its DER.
pub fn fingerprint(der: &[u8]) -> String {
    format!("x509-sha256:{}", crypto::hex(&crypto::sha256(der)))
}

/// Why a leaf is not a valid X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("certificate is not valid DER X.509")]
    Malformed,
    #[error("certificate has duplicate or malformed extensions")]
    Extensions,
    #[error("certificate must carry exactly one URI SAN (found {0})")]
    UriSanCount(usize),
    #[error("URI SAN {0}")]
    BadId(SpiffeIdError),
    #[error("leaf certificate is a CA")]
    IsCa,
    #[error("leaf certificate may not have keyCertSign or cRLSign key usage")]
    SigningKeyUsage,
    #[error("certificate is not within its validity period")]
    OutsideValidity,
}

/// The trust domain a presented leaf claims, read before its chain is
/// verified so the chain can be checked against that domain's bundle
/// alone. `None` unless the leaf has exactly one `spiffe://` URI SAN with a
/// well-formed trust domain.
pub fn claimed_trust_domain(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut uris = uri_sans(&cert).ok()?.into_iter();
    let (Some(uri), None) = (uris.next(), uris.next()) else { return None };
    let rest = uri.strip_prefix("spiffe://")?;
    let td = rest.split('/').next()?;
    validate_trust_domain(td).ok()?;
    Some(td.to_owned())
}

/// Validates a leaf (already chain-verified) as an X.509-SVID at `now`.
pub fn validate_svid(der: &[u8], now: OffsetDateTime) -> Result<X509Svid, SvidError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|_| SvidError::Malformed)?;
    if !rest.is_empty() {
        return Err(SvidError::Malformed);
    }
    let uris = uri_sans(&cert)?;
    let [uri] = uris.as_slice() else { return Err(SvidError::UriSanCount(uris.len())) };
    let id = SpiffeId::parse(uri).map_err(SvidError::BadId)?;
    if cert.basic_constraints().map_err(|_| SvidError::Extensions)?.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::IsCa);
    }
    if let Some(ku) = cert.key_usage().map_err(|_| SvidError::Extensions)?
        && (ku.value.key_cert_sign() || ku.value.crl_sign())
    {
        return Err(SvidError::SigningKeyUsage);
    }
    let validity = cert.validity();
    let t = now.unix_timestamp();
    if t < validity.not_before.timestamp() || t > validity.not_after.timestamp() {
        return Err(SvidError::OutsideValidity);
    }
    let not_after =
        OffsetDateTime::from_unix_timestamp(validity.not_after.timestamp()).map_err(|_| SvidError::Malformed)?;
    Ok(X509Svid { id, not_after })
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, SvidError> {
    let san = cert.subject_alternative_name().map_err(|_| SvidError::Extensions)?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
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
