//! X.509-SVID attestation over mTLS (RFC 8705 `tls_client_auth`).
//!
//! Each configured SPIFFE trust domain has a CA bundle file. The TLS
//! handshake verifies a client's chain against the bundle of the trust
//! domain its certificate claims — never against another domain's — and
//! each request re-verifies the chain against the bundles as they are now,
//! so a CA removed from a bundle stops working at once, even on a
//! connection opened before the removal (a chain verified recently is
//! remembered only for the bundle that verified it). Bundles are re-read
//! when their files change (polled) or on SIGHUP; a bundle that fails to
//! load keeps its last good version and the failure is logged.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use time::OffsetDateTime;

use super::jwt::Attestation;
use super::spiffe::{self, SvidError};
use super::verified::{Entry, Verified};
use crate::crypto;

/// One trust domain as configured.
#[derive(Debug, Clone)]
pub struct TrustDomainSource {
    /// The SPIFFE trust domain, e.g. `prod.example`.
    pub trust_domain: String,
    /// The issuer name grants use for this domain's SVIDs.
    pub issuer: String,
    pub bundle_file: PathBuf,
}

struct Domain {
    trust_domain: String,
    issuer: String,
    digest: [u8; 32],
    cas: usize,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// The client certificates a connection presented (leaf first), as seen
/// by request handlers.
#[derive(Clone)]
pub struct PeerCertificates(pub Arc<[CertificateDer<'static>]>);

impl fmt::Debug for PeerCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerCertificates({} certificates)", self.0.len())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("trust bundle for {trust_domain} ({path}): {message}")]
pub struct BundleError {
    pub trust_domain: String,
    pub path: String,
    pub message: String,
}

/// Why a presented certificate does not attest a workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Rejection {
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error(transparent)]
    Svid(#[from] SvidError),
    #[error("trust domain {0:?} is not trusted")]
    UnknownTrustDomain(String),
    #[error("certificate chain does not verify against the current bundle: {0}")]
    Chain(String),
    #[error("client_id {0:?} is not the certificate's SPIFFE ID")]
    ClientIdMismatch(String),
}

/// The trust bundles of every configured trust domain, reloadable in place.
pub struct TrustBundles {
    sources: Vec<TrustDomainSource>,
    domains: RwLock<Arc<HashMap<String, Arc<Domain>>>>,
    provider: Arc<CryptoProvider>,
    /// Chains verified recently, by the SHA-256 of the whole chain
    /// presented (leaf and intermediates): a workload presents the same
    /// SVID on every request of its connections until it rotates it, and
    /// re-verifying the chain (a signature per certificate) was more than
    /// half of the instructions of an mTLS exchange (docs/performance.md).
    /// An entry answers only while every certificate presented is within
    /// its validity, as the two checks of `attest` test it (`not_before <=
    /// now <= not_after`, in seconds), and while its trust domain's bundle is the
    /// very one (`Arc`) that verified it: a reload that changes the bundle
    /// sends the chain through full verification again.
    verified: Verified<Arc<Domain>>,
}

impl fmt::Debug for TrustBundles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundles").field("sources", &self.sources).finish_non_exhaustive()
    }
}

impl TrustBundles {
    /// `(iss, issuer name)` of each trust domain, as attestations from it
    /// are recorded (`spiffe://<trust domain>`) and as grants name it.
    pub fn issuer_names(&self) -> Vec<(String, String)> {
        self.sources.iter().map(|s| (format!("spiffe://{}", s.trust_domain), s.issuer.clone())).collect()
    }

    /// Loads every bundle; any that fails to load is an error.
    pub fn load(sources: Vec<TrustDomainSource>) -> Result<Self, BundleError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut domains = HashMap::new();
        for source in &sources {
            domains.insert(source.trust_domain.clone(), Arc::new(load_domain(source, &provider)?));
        }
        Ok(Self { sources, domains: RwLock::new(Arc::new(domains)), provider, verified: Verified::default() })
    }

    fn current(&self) -> Arc<HashMap<String, Arc<Domain>>> {
        match self.domains.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads every bundle file and swaps in those whose content changed.
    /// A bundle that fails to load keeps its last good version. Returns the
    /// trust domains that changed.
    pub fn reload(&self) -> Vec<String> {
        let current = self.current();
        let mut next = (*current).clone();
        let mut changed = Vec::new();
        for source in &self.sources {
            let digest = match std::fs::read(&source.bundle_file) {
                Ok(bytes) => crypto::sha256(&bytes),
                Err(e) => {
                    tracing::error!(trust_domain = %source.trust_domain, path = %source.bundle_file.display(), error = %e,
                        "cannot read trust bundle; keeping the last good one");
                    continue;
                }
            };
            if current.get(&source.trust_domain).is_some_and(|d| d.digest == digest) {
                continue;
            }
            match load_domain(source, &self.provider) {
                Ok(domain) => {
                    tracing::info!(trust_domain = %source.trust_domain, cas = domain.cas, "trust bundle reloaded");
                    next.insert(source.trust_domain.clone(), Arc::new(domain));
                    changed.push(source.trust_domain.clone());
                }
                Err(e) => tracing::error!(error = %e, "trust bundle not reloaded; keeping the last good one"),
            }
        }
        if !changed.is_empty() {
            match self.domains.write() {
                Ok(mut guard) => *guard = Arc::new(next),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(next),
            }
        }
        changed
    }

    /// Turns the certificates a connection presented into an attestation:
    /// re-verifies the chain against the current bundle of the trust domain
    /// the leaf claims, then checks the leaf as an X.509-SVID.
    pub fn attest(
        &self,
        peer: Option<&PeerCertificates>,
        now: OffsetDateTime,
    ) -> Result<Attestation, (X509Rejection, Option<String>)> {
        let chain = peer.map(|p| &p.0[..]).unwrap_or_default();
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err((X509Rejection::NoCertificate, None));
        };
        let domains = self.current();
        // DER is self-delimiting, so the concatenation names one chain.
        let digest = crypto::sha256_all(chain.iter().map(|c| c.as_ref()));
        let in_use = |d: &Arc<Domain>| domains.get(&d.trust_domain).is_some_and(|current| Arc::ptr_eq(current, d));
        if let Some(attestation) = self.verified.get(&digest, now, in_use) {
            return Ok(attestation);
        }
        // The leaf's SHA-256, signature included (its `x5t#S256`), unlike a
        // JWT's fingerprint: X.509-SVIDs are never single-use, and a
        // certificate-bound token names exactly the certificate the
        // connection presented, so a re-encoded CA signature is rightly
        // another certificate here.
        let fingerprint = spiffe::fingerprint(leaf);
        let fail = |r: X509Rejection| (r, Some(fingerprint.clone()));
        let svid = spiffe::validate_svid(leaf, now).map_err(|e| fail(e.into()))?;
        let td = svid.id.trust_domain();
        let domain = domains.get(td).ok_or_else(|| fail(X509Rejection::UnknownTrustDomain(td.to_owned())))?;
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now.unix_timestamp()).unwrap_or_default(),
        ));
        domain
            .verifier
            .verify_client_cert(leaf, intermediates, at)
            .map_err(|e| fail(X509Rejection::Chain(e.to_string())))?;
        let attestation = Attestation {
            issuer_name: domain.issuer.clone(),
            iss: format!("spiffe://{td}"),
            subject: svid.id.to_string(),
            token_id: fingerprint,
            expires_at: svid.not_after,
            single_use: false,
            replay_until: svid.not_after,
        };
        // Every certificate presented must be within its validity for the
        // entry to answer (webpki checked those of the path it built, a
        // subset): a narrower window than the checks', never a wider one.
        let validity = intermediates
            .iter()
            .map(|c| spiffe::validity(c))
            .try_fold((svid.not_before.unix_timestamp(), svid.not_after.unix_timestamp()), |(from, to), v| {
                v.map(|(f, t)| (from.max(f), to.min(t)))
            });
        if let Some((valid_from, not_after)) = validity {
            let entry = Entry {
                attestation: attestation.clone(),
                basis: Arc::clone(domain),
                valid_from,
                valid_until: not_after.saturating_add(1),
            };
            self.verified.put(digest, entry, now);
        }
        Ok(attestation)
    }

    /// The rustls verifier for the mTLS listener, backed by these bundles.
    pub fn client_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(SvidClientVerifier { bundles: Arc::clone(self) })
    }
}

fn load_domain(source: &TrustDomainSource, provider: &Arc<CryptoProvider>) -> Result<Domain, BundleError> {
    let err = |message: String| BundleError {
        trust_domain: source.trust_domain.clone(),
        path: source.bundle_file.display().to_string(),
        message,
    };
    let bytes = std::fs::read(&source.bundle_file).map_err(|e| err(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(err("holds no certificates".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in &certs {
        roots.add(cert.clone()).map_err(|e| err(format!("unusable CA certificate: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| err(e.to_string()))?;
    Ok(Domain {
        trust_domain: source.trust_domain.clone(),
        issuer: source.issuer.clone(),
        digest: crypto::sha256(&bytes),
        cas: certs.len(),
        verifier,
    })
}

/// Requires a client certificate and verifies its chain against the bundle
/// of the trust domain it claims.
#[derive(Debug)]
struct SvidClientVerifier {
    bundles: Arc<TrustBundles>,
}

impl ClientCertVerifier for SvidClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to borrow from a bundle that may be swapped; an
        // empty list lets the client send the certificate it has.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let td = spiffe::claimed_trust_domain(end_entity)
            .ok_or(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))?;
        let domains = self.bundles.current();
        let domain = domains.get(&td).ok_or(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))?;
        domain.verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.bundles.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.bundles.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.bundles.provider.signature_verification_algorithms.supported_schemes()
    }
}
