//! X.509-SVIDs, checked the way the SPIFFE specifications write them.
//!
//! An X.509-SVID's leaf carries exactly one URI SAN holding the workload's
//! SPIFFE ID (whose syntax `domain::spiffe` checks), is not a CA and may
//! not sign certificates or CRLs. Chain validation against the trust
//! domain's bundle happens in the TLS handshake (`attest::x509`); this
//! module checks everything about the leaf itself.

use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::crypto;
use crate::domain::spiffe::{SpiffeId, SpiffeIdError, validate_trust_domain};

/// A leaf certificate that is a valid X.509-SVID.
#[derive(Debug, Clone)]
pub struct X509Svid {
    pub id: SpiffeId,
    pub not_before: OffsetDateTime,
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
    let time = |t: i64| OffsetDateTime::from_unix_timestamp(t).map_err(|_| SvidError::Malformed);
    Ok(X509Svid {
        id,
        not_before: time(validity.not_before.timestamp())?,
        not_after: time(validity.not_after.timestamp())?,
    })
}

/// A certificate's `notBefore` and `notAfter` (unix seconds; both
/// inclusive), or `None` when it is not DER X.509.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let validity = cert.validity();
    Some((validity.not_before.timestamp(), validity.not_after.timestamp()))
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
