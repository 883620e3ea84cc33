//! X.509-SVID attestation over mTLS (RFC 8705) and sender-constrained
//! tokens: certificate-bound (`cnf.x5t#S256`) and DPoP-bound (`cnf.jkt`,
//! RFC 9449). Certificates and CAs are created per test with rcgen.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use halflife::attest::spiffe::SvidError;
use halflife::attest::x509::{PeerCertificates, X509Rejection};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};

use crate::helpers::*;

pub const SVID: &str = "spiffe://prod.example/ns/ai/sa/indexer";

#[path = "../fixtures/pki.rs"]
pub mod pki;
pub use pki::{Ca, Leaf, ServerPki};

impl Ca {
    /// An intermediate CA signed by this one, adjusted by `tweak`.
    pub fn intermediate(&self, name: &str, tweak: impl FnOnce(&mut CertificateParams)) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        tweak(&mut params);
        Self { issuer: CertifiedIssuer::signed_by(params, KeyPair::generate().unwrap(), &self.issuer).unwrap() }
    }
}

impl Leaf {
    pub fn thumbprint(&self) -> String {
        URL_SAFE_NO_PAD.encode(halflife::crypto::sha256(&self.der))
    }
}

impl ServerPki {
    /// An HTTPS client presenting `leaf` (or no certificate).
    pub fn client(&self, leaf: Option<&Leaf>) -> reqwest::Client {
        reqwest::Client::builder().tls_backend_preconfigured(self.tls_config(leaf)).build().unwrap()
    }
}

/// A server with an mTLS listener trusting `prod.example` (bundle:
/// `prod.pem`, SVIDs mapped to the `spire` issuer, so the JWT-SVID grant
/// `indexer-spire` covers them too) and `staging.example` (`staging.pem`).
pub struct MtlsApp {
    pub app: TestApp,
    pub pki: ServerPki,
    pub prod: Ca,
    pub staging: Ca,
    /// Holds the listener's certificate and the trust bundles.
    pub dir: tempfile::TempDir,
}

impl MtlsApp {
    pub async fn start(catalog_extra: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let pki = ServerPki::write(dir.path());
        let (prod, staging) = (Ca::new("prod.example"), Ca::new("staging.example"));
        write_bundle(&dir.path().join("prod.pem"), &[&prod]);
        write_bundle(&dir.path().join("staging.pem"), &[&staging]);
        let d = dir.path().display();
        let extra_config = format!(
            r#"
[mtls]
listen = "127.0.0.1:0"
cert_file = "{d}/mtls-cert.pem"
key_file = "{d}/mtls-key.pem"
bundle_refresh_interval = "20ms"

[[mtls.trust_domains]]
name = "prod.example"
bundle_file = "{d}/prod.pem"
issuer = "spire"

[[mtls.trust_domains]]
name = "staging.example"
bundle_file = "{d}/staging.pem"
"#
        );
        let catalog = format!("{}{catalog_extra}", default_catalog());
        let app = spawn_with(Options { extra_config, catalog, ..Options::default() }).await?;
        Some(Self { app, pki, prod, staging, dir })
    }

    pub fn mtls_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.app.mtls.unwrap())
    }

    /// `client_credentials` over mTLS with `leaf`.
    pub async fn client_credentials(
        &self,
        leaf: &Leaf,
        extra: &[(&str, &str)],
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend_from_slice(extra);
        self.pki.client(Some(leaf)).post(self.mtls_url("/oauth2/token")).form(&form).send().await
    }
}

pub fn write_bundle(path: &Path, cas: &[&Ca]) {
    let pem: String = cas.iter().map(|ca| ca.pem()).collect();
    // Write-then-rename, as a bundle distributor would: the broker never
    // reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pem).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Decodes a token response, asserting 200.
async fn ok_json(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Asserts a 4xx OAuth error with `code`; returns the description.
async fn oauth_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    body["error_description"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_x509_svid_gets_a_certificate_bound_token_from_the_grant_its_jwt_svid_uses() {
    let Some(m) = MtlsApp::start("").await else { return };
    let leaf = m.prod.svid(SVID);
    let body = ok_json(m.client_credentials(&leaf, &[("audience", "search-api")]).await.unwrap()).await;
    assert_eq!(body["token_type"], "Bearer");
    let token = body["access_token"].as_str().unwrap();
    let claims = verify_with_jwks(&m.app, token).await;
    assert_eq!(claims["sub"], SVID);
    assert_eq!(claims["system"], "indexer");
    assert_eq!(claims["cnf"], json!({"x5t#S256": leaf.thumbprint()}));

    // Introspection returns the confirmation, so a resource server can
    // check the presenting certificate.
    let admin = m.app.admin_token(halflife::domain::model::Role::Introspector).await;
    let info = m.app.introspect(&admin, token).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["cnf"]["x5t#S256"], leaf.thumbprint());

    // The issuance names the certificate by its SHA-256 fingerprint.
    let issued = m.app.events("credential.issued").await;
    let event = issued.iter().find(|e| e.jti.as_deref() == claims["jti"].as_str()).unwrap();
    let fingerprint = spiffe_fingerprint(&leaf.der);
    assert_eq!(event.attestation_id.as_deref(), Some(fingerprint.as_str()));
    assert_eq!(event.subject.as_deref(), Some(SVID));

    // The JWT-SVID for the same SPIFFE ID matches the same grant, as a
    // bearer token when exchanged on the plain listener…
    let jwt_svid = m.app.ec.token(SVID, m.app.now());
    let body = m.app.exchange_ok(&jwt_svid, &[("audience", "search-api")]).await;
    let (_, claims) = parts(body["access_token"].as_str().unwrap());
    assert_eq!((claims["sub"].as_str(), claims["system"].as_str()), (Some(SVID), Some("indexer")));
    assert!(claims.get("cnf").is_none());
    // …and bound to the client certificate when exchanged over mTLS.
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token_type", JWT_TYPE),
        ("subject_token", &m.app.ec.token(SVID, m.app.now())),
        ("audience", "search-api"),
    ];
    let response = m.pki.client(Some(&leaf)).post(m.mtls_url("/oauth2/token")).form(&form).send().await.unwrap();
    let (_, claims) = parts(ok_json(response).await["access_token"].as_str().unwrap());
    assert_eq!(claims["cnf"]["x5t#S256"], leaf.thumbprint());

    // A client_id other than the certificate's SPIFFE ID is refused.
    let response = m.client_credentials(&leaf, &[("client_id", "spiffe://prod.example/ns/ai/sa/other")]).await;
    oauth_error(response.unwrap(), 401, "invalid_client").await;
    // client_credentials on the plain listener: no certificate can come
    // there, and the answer says where it is served.
    let response = m.app.client.post(m.app.url("/oauth2/token")).form(&[("grant_type", "client_credentials")]).send();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type", "{body}");
    let mtls_token = format!("https://{}/oauth2/token", m.app.mtls.unwrap());
    assert!(body["error_description"].as_str().unwrap().contains(&mtls_token), "{body}");
    let denied = m.app.events("credential.denied").await;
    let reasons: Vec<_> = denied.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert!(reasons.iter().any(|r| r.contains("is not the certificate's SPIFFE ID")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("served on the mTLS listener")), "{reasons:?}");
}

#[tokio::test]
async fn the_metadata_advertises_mtls_and_dpop() {
    let Some(m) = MtlsApp::start("").await else { return };
    let meta: Value = m
        .app
        .client
        .get(m.app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["tls_client_certificate_bound_access_tokens"], true);
    let algs = meta["dpop_signing_alg_values_supported"].as_array().unwrap();
    assert!(algs.contains(&json!("ES256")) && algs.contains(&json!("EdDSA")));
    assert!(meta["token_endpoint_auth_methods_supported"].as_array().unwrap().contains(&json!("tls_client_auth")));
    assert!(meta["grant_types_supported"].as_array().unwrap().contains(&json!("client_credentials")));
    assert_eq!(meta["mtls_endpoint_aliases"]["token_endpoint"], m.mtls_url("/oauth2/token"));
}

/// Each invalid certificate is refused: in the handshake when its chain
/// cannot be checked against the bundle of the trust domain it claims, or
/// with 401 and a denial record when the handshake completed but the leaf
/// is not a valid X.509-SVID.
#[tokio::test]
async fn invalid_certificates_are_refused() {
    let Some(m) = MtlsApp::start("").await else { return };
    let stranger = Ca::new("stranger");
    let now = halflife::clock::Clock::now(&m.app.clock);

    // Refused in the handshake.
    let handshake_failures: Vec<(&str, Leaf)> = vec![
        ("signed by an untrusted CA", stranger.svid(SVID)),
        ("trust domain not configured", m.prod.svid("spiffe://other.example/ns/ai/sa/x")),
        ("claims prod.example, signed by staging's CA", m.staging.svid(SVID)),
        ("two URI SANs", m.prod.leaf_with(&[SVID, "spiffe://prod.example/ns/ai/sa/two"], |_| {})),
        ("no URI SAN", m.prod.leaf_with(&[], |_| {})),
        ("https URI SAN", m.prod.leaf_with(&["https://prod.example/ns/ai"], |_| {})),
        (
            "expired",
            m.prod.leaf_with(&[SVID], |p| {
                p.not_before = now - time::Duration::days(2);
                p.not_after = now - time::Duration::days(1);
            }),
        ),
        (
            "not yet valid",
            m.prod.leaf_with(&[SVID], |p| {
                p.not_before = now + time::Duration::days(1);
                p.not_after = now + time::Duration::days(2);
            }),
        ),
        ("a CA as the leaf", m.prod.leaf_with(&[SVID], |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained))),
    ];
    for (case, leaf) in &handshake_failures {
        let result = m.client_credentials(leaf, &[]).await;
        assert!(result.is_err(), "{case}: the handshake should fail, got {:?}", result.map(|r| r.status()));
    }
    // No client certificate at all.
    let result = m.pki.client(None).post(m.mtls_url("/oauth2/token")).form(&[("grant_type", "client_credentials")]);
    assert!(result.send().await.is_err(), "a connection without a client certificate must fail");

    // The handshake completes; the leaf is not a valid SVID: 401 and a
    // denial naming the certificate.
    let refused: Vec<(&str, Leaf, &str)> = vec![
        ("a '..' path segment", m.prod.svid("spiffe://prod.example/ns/../sa/x"), "path has an empty"),
        ("percent-encoding", m.prod.svid("spiffe://prod.example/ns/ai%2Fsa"), "path may hold only"),
        ("a query", m.prod.svid("spiffe://prod.example/ns/ai?x=1"), "path may hold only"),
        ("no path", m.prod.svid("spiffe://prod.example"), "names no workload path"),
        (
            "keyCertSign usage",
            m.prod.leaf_with(&[SVID], |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
            "keyCertSign or cRLSign",
        ),
        (
            "cRLSign usage",
            m.prod.leaf_with(&[SVID], |p| p.key_usages.push(KeyUsagePurpose::CrlSign)),
            "keyCertSign or cRLSign",
        ),
    ];
    for (case, leaf, reason) in &refused {
        let response = m.client_credentials(leaf, &[]).await.unwrap_or_else(|e| panic!("{case}: {e}"));
        let description = oauth_error(response, 401, "invalid_client").await;
        // One message for every case: no oracle.
        assert_eq!(description, halflife::broker::exchange::INVALID_CLIENT_CERTIFICATE, "{case}");
        let fingerprint = spiffe_fingerprint(&leaf.der);
        let denied = m.app.events("credential.denied").await;
        let event = denied.iter().find(|e| e.attestation_id.as_deref() == Some(fingerprint.as_str()));
        let event = event.unwrap_or_else(|| panic!("{case}: no denial record"));
        assert!(event.reason.as_deref().unwrap_or_default().contains(reason), "{case}: {:?}", event.reason);
    }
    assert_eq!(m.app.credential_count().await, 0);
}

#[tokio::test]
async fn bundle_rotation_takes_effect_without_dropping_connections() {
    let Some(m) = MtlsApp::start("").await else { return };
    let prod_path = m.dir.path().join("prod.pem");
    let next = Ca::new("prod.example next");
    let (old_leaf, new_leaf) = (m.prod.svid(SVID), next.svid(SVID));
    let old_client = m.pki.client(Some(&old_leaf));
    let new_client = m.pki.client(Some(&new_leaf));
    let exchange = |client: &reqwest::Client| {
        client
            .post(m.mtls_url("/oauth2/token"))
            .form(&[("grant_type", "client_credentials"), ("audience", "search-api")])
            .send()
    };
    assert_eq!(exchange(&old_client).await.unwrap().status(), 200);
    assert!(exchange(&new_client).await.is_err(), "the next CA is not trusted yet");

    // Publish the next CA next to the current one.
    write_bundle(&prod_path, &[&m.prod, &next]);
    assert!(
        eventually(Duration::from_secs(10), || async { exchange(&new_client).await.is_ok_and(|r| r.status() == 200) })
            .await,
        "the added CA was not accepted"
    );
    // The old CA's live connection kept working through the reload (twice:
    // the second answer is the remembered verification).
    for _ in 0..2 {
        assert_eq!(exchange(&old_client).await.unwrap().status(), 200);
    }

    // Retire the old CA: new connections fail the handshake, and the live
    // connection's certificate is refused at once (checked per request;
    // what was remembered was verified by the bundle now replaced).
    write_bundle(&prod_path, &[&next]);
    assert!(
        eventually(Duration::from_secs(10), || async { m.client_credentials(&old_leaf, &[]).await.is_err() }).await,
        "the removed CA still verifies new connections"
    );
    oauth_error(exchange(&old_client).await.unwrap(), 401, "invalid_client").await;
    // The connection opened under the rotation is unaffected.
    assert_eq!(exchange(&new_client).await.unwrap().status(), 200);

    // A broken bundle file keeps the last good bundle.
    std::fs::write(&prod_path, "not a certificate").unwrap();
    let bundles = m.app.broker.bundles.as_ref().unwrap();
    assert!(bundles.reload().is_empty(), "a broken bundle must not replace the last good one");
    let fresh = m.pki.client(Some(&new_leaf));
    assert_eq!(exchange(&fresh).await.unwrap().status(), 200);
}

/// A chain verified once is remembered, and answers as its verification
/// did, but only while what that verification checked still holds: every
/// certificate's validity, to the second, and the trust domain's bundle.
#[tokio::test]
async fn a_remembered_chain_answers_only_while_its_verification_would() {
    let Some(m) = MtlsApp::start("").await else { return };
    let bundles = m.app.broker.bundles.as_ref().unwrap();
    let now = halflife::clock::Clock::now(&m.app.clock);
    let (hour, second) = (time::Duration::hours(1), time::Duration::seconds(1));
    let attest = |chain: &[&CertificateDer<'static>], at| {
        let peer = PeerCertificates(chain.iter().map(|c| (*c).clone()).collect());
        bundles.attest(Some(&peer), at)
    };

    // The leaf's validity, inclusive at both ends as the uncached checks
    // (the SVID's and webpki's) read it.
    let leaf = m.prod.leaf_with(&[SVID], |p| {
        p.not_before = now - hour;
        p.not_after = now + hour;
    });
    let first = attest(&[&leaf.der], now).unwrap();
    assert_eq!((first.issuer_name.as_str(), first.subject.as_str()), ("spire", SVID));
    assert_eq!(attest(&[&leaf.der], now).unwrap(), first);
    assert_eq!(attest(&[&leaf.der], now + hour).unwrap(), first, "its last second");
    assert_eq!(attest(&[&leaf.der], now - hour).unwrap(), first, "its first second");
    let outside = (X509Rejection::Svid(SvidError::OutsideValidity), Some(spiffe_fingerprint(&leaf.der)));
    assert_eq!(attest(&[&leaf.der], now + hour + second).unwrap_err(), outside, "expired");
    assert_eq!(attest(&[&leaf.der], now - hour - second).unwrap_err(), outside, "not yet valid");

    // An intermediate that expires before the leaf ends the chain's window.
    let intermediate = m.prod.intermediate("prod.example intermediate", |p| p.not_after = now + hour);
    let leaf = intermediate.leaf_with(&[SVID], |p| p.not_after = now + 2 * hour);
    let chain = [&leaf.der, &intermediate.der()];
    let first = attest(&chain, now).unwrap();
    assert_eq!(attest(&chain, now + hour).unwrap(), first);
    let expired = attest(&chain, now + hour + second).unwrap_err();
    assert!(matches!(expired.0, X509Rejection::Chain(_)), "{expired:?}");

    // A bundle that changes sends the chain through verification again:
    // accepted while the bundle still holds its CA, refused once it does not.
    let prod_path = m.dir.path().join("prod.pem");
    let other = Ca::new("prod.example other");
    let leaf = m.prod.svid(SVID);
    let first = attest(&[&leaf.der], now).unwrap();
    write_bundle(&prod_path, &[&m.prod, &other]);
    bundles.reload();
    assert_eq!(attest(&[&leaf.der], now).unwrap(), first);
    write_bundle(&prod_path, &[&other]);
    bundles.reload();
    let refused = attest(&[&leaf.der], now).unwrap_err();
    assert!(matches!(refused.0, X509Rejection::Chain(_)), "{refused:?}");
}

/// The broker's clock, not the handshake's, decides whether the
/// certificate of a live connection is still valid, remembered or not.
#[tokio::test]
async fn a_live_connections_certificate_is_refused_once_it_expires() {
    let Some(m) = MtlsApp::start("").await else { return };
    let now = halflife::clock::Clock::now(&m.app.clock);
    let leaf = m.prod.leaf_with(&[SVID], |p| {
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::hours(1);
    });
    let client = m.pki.client(Some(&leaf));
    let exchange = || {
        client
            .post(m.mtls_url("/oauth2/token"))
            .form(&[("grant_type", "client_credentials"), ("audience", "search-api")])
            .send()
    };
    for _ in 0..2 {
        assert_eq!(exchange().await.unwrap().status(), 200);
    }
    // One second past its notAfter.
    m.app.clock.advance(Duration::from_secs(3600 + 1));
    oauth_error(exchange().await.unwrap(), 401, "invalid_client").await;
    let denied = m.app.events("credential.denied").await;
    let fingerprint = spiffe_fingerprint(&leaf.der);
    let event = denied.iter().find(|e| e.attestation_id.as_deref() == Some(fingerprint.as_str())).unwrap();
    assert!(event.reason.as_deref().unwrap_or_default().contains("not within its validity period"), "{event:?}");
}

/// How the audit log names a certificate.
fn spiffe_fingerprint(der: &[u8]) -> String {
    format!("x509-sha256:{}", halflife::crypto::hex(&halflife::crypto::sha256(der)))
}

/// A client's DPoP key (ES256) and the proofs it signs.
pub struct DpopKey {
    pair: ring::signature::EcdsaKeyPair,
}

impl DpopKey {
    pub fn new() -> Self {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Self { pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap() }
    }

    pub fn jwk(&self) -> Value {
        use ring::signature::KeyPair;
        let point = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
               "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
    }

    /// The RFC 7638 thumbprint, computed independently of the broker.
    pub fn thumbprint(&self) -> String {
        let jwk = self.jwk();
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#, jwk["x"], jwk["y"]);
        URL_SAFE_NO_PAD.encode(halflife::crypto::sha256(canonical.as_bytes()))
    }

    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = self.pair.sign(&ring::rand::SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// A proof for `htm htu` at `iat`, with a fresh `jti`.
    pub fn proof(&self, htm: &str, htu: &str, iat: i64) -> String {
        self.sign(
            &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()}),
            &json!({"jti": uuid_like(), "htm": htm, "htu": htu, "iat": iat}),
        )
    }
}

/// Grants that require sender-constrained tokens.
pub const BINDING_GRANTS: &str = r#"
[[grants]]
id = "summarizer-dpop"
system = "summarizer"
issuer = "k8s"
subject = "system:serviceaccount:ai:dpop-agent"
audiences = ["reports-api"]
scopes = ["reports:read"]
max_ttl = "10m"
binding = "dpop"

[[grants]]
id = "summarizer-bound"
system = "summarizer"
issuer = "k8s"
subject = "system:serviceaccount:ai:bound-agent"
audiences = ["reports-api"]
scopes = ["reports:read"]
max_ttl = "10m"
binding = "required"

[[grants]]
id = "indexer-mtls"
system = "indexer"
issuer = "spire"
subject = "spiffe://prod.example/ns/secure/*"
audiences = ["search-api"]
max_ttl = "10m"
binding = "mtls"
"#;

async fn exchange_with_dpop(app: &TestApp, subject: &str, proofs: &[&str]) -> reqwest::Response {
    let token = app.rsa.token(subject, app.now());
    let mut request = app.client.post(app.url("/oauth2/token")).form(&[
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token_type", JWT_TYPE),
        ("subject_token", &token),
    ]);
    for proof in proofs {
        request = request.header("DPoP", *proof);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_dpop_proof_binds_the_token_to_its_key() {
    let catalog = format!("{}{BINDING_GRANTS}", default_catalog());
    let Some(app) = spawn_with(Options { catalog, ..Options::default() }).await else { return };
    let key = DpopKey::new();
    let htu = app.url("/oauth2/token");
    let now = app.now();

    let proof = key.proof("POST", &htu, now);
    let body = ok_json(exchange_with_dpop(&app, RSA_SUBJECT, &[&proof]).await).await;
    assert_eq!(body["token_type"], "DPoP");
    let token = body["access_token"].as_str().unwrap();
    let claims = verify_with_jwks(&app, token).await;
    assert_eq!(claims["cnf"], json!({"jkt": key.thumbprint()}));
    let admin = app.admin_token(halflife::domain::model::Role::Introspector).await;
    let info = app.introspect(&admin, token).await;
    assert_eq!((info["active"].as_bool(), info["token_type"].as_str()), (Some(true), Some("DPoP")));
    assert_eq!(info["cnf"]["jkt"], key.thumbprint());

    // Each bad proof: 400 invalid_dpop_proof, a denial record, no token.
    let issued = app.credential_count().await;
    let other = DpopKey::new();
    let foreign_jwk = key.sign(
        &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": other.jwk()}),
        &json!({"jti": uuid_like(), "htm": "POST", "htu": htu, "iat": now}),
    );
    let bad: Vec<(&str, Vec<String>)> = vec![
        ("replayed", vec![proof.clone()]),
        ("wrong htu", vec![key.proof("POST", "https://evil.example/oauth2/token", now)]),
        ("wrong htm", vec![key.proof("GET", &htu, now)]),
        ("stale iat", vec![key.proof("POST", &htu, now - 120)]),
        ("future iat", vec![key.proof("POST", &htu, now + 120)]),
        ("signed by another key", vec![foreign_jwk]),
        ("two DPoP headers", vec![key.proof("POST", &htu, now), key.proof("POST", &htu, now)]),
        ("not a JWT", vec!["garbage".into()]),
    ];
    for (case, proofs) in &bad {
        let proofs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let response = exchange_with_dpop(&app, RSA_SUBJECT, &proofs).await;
        assert_eq!(response.status(), 400, "{case}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_dpop_proof", "{case}: {body}");
    }
    assert_eq!(app.credential_count().await, issued, "a bad proof issued a credential");
    let denied = app.events("credential.denied").await;
    let reasons: Vec<&str> = denied.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert!(reasons.contains(&"DPoP proof was already used (replay)"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("htu does not match")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("iat is outside")), "{reasons:?}");

    // A grant that requires DPoP refuses a bearer request and binds with a proof.
    let response = exchange_with_dpop(&app, "system:serviceaccount:ai:dpop-agent", &[]).await;
    assert!(oauth_error(response, 400, "invalid_dpop_proof").await.contains("DPoP-bound"));
    let proof = key.proof("POST", &htu, now);
    let body = ok_json(exchange_with_dpop(&app, "system:serviceaccount:ai:dpop-agent", &[&proof]).await).await;
    assert_eq!(body["token_type"], "DPoP");

    // binding = "required" takes either binding, never none.
    let response = exchange_with_dpop(&app, "system:serviceaccount:ai:bound-agent", &[]).await;
    assert!(oauth_error(response, 400, "invalid_request").await.contains("sender-constrained"));
    let proof = key.proof("POST", &htu, now);
    ok_json(exchange_with_dpop(&app, "system:serviceaccount:ai:bound-agent", &[&proof]).await).await;
}

#[tokio::test]
async fn an_mtls_binding_grant_issues_only_over_mtls() {
    let Some(m) = MtlsApp::start(BINDING_GRANTS).await else { return };
    let secure = "spiffe://prod.example/ns/secure/agent";
    let jwt_svid = m.app.ec.token(secure, m.app.now());
    let response = m.app.exchange(&jwt_svid, &[]).await;
    assert!(oauth_error(response, 400, "invalid_request").await.contains("certificate-bound"));
    let leaf = m.prod.svid(secure);
    let body = ok_json(m.client_credentials(&leaf, &[]).await.unwrap()).await;
    let (_, claims) = parts(body["access_token"].as_str().unwrap());
    assert_eq!(claims["cnf"]["x5t#S256"], leaf.thumbprint());
    // DPoP and mTLS together: both confirmations, presented as DPoP.
    let key = DpopKey::new();
    let proof = key.proof("POST", &m.mtls_url("/oauth2/token"), m.app.now());
    let response = m
        .pki
        .client(Some(&leaf))
        .post(m.mtls_url("/oauth2/token"))
        .header("DPoP", proof)
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let body = ok_json(response).await;
    assert_eq!(body["token_type"], "DPoP");
    let (_, claims) = parts(body["access_token"].as_str().unwrap());
    assert_eq!(claims["cnf"], json!({"x5t#S256": leaf.thumbprint(), "jkt": key.thumbprint()}));
}

/// docs/protocol.md's resource-server pattern, run with an independent library
/// (PyJWT): `examples/dpop_resource_server.py` accepts the holder's proof
/// and refuses a thief's.
#[tokio::test]
async fn a_resource_server_verifies_a_dpop_bound_token_with_pyjwt() {
    if !crate::independent::pyjwt_available() {
        return;
    }
    let Some(app) = spawn_app().await else { return };
    let key = DpopKey::new();
    let proof = key.proof("POST", &app.url("/oauth2/token"), app.now());
    let body = ok_json(exchange_with_dpop(&app, RSA_SUBJECT, &[&proof]).await).await;
    let token = body["access_token"].as_str().unwrap();
    let jwks = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap();
    let url = "https://reports.example/v1/reports?month=11";
    let ath = URL_SAFE_NO_PAD.encode(halflife::crypto::sha256(token.as_bytes()));
    let resource_proof = |k: &DpopKey, ath: &str| {
        k.sign(
            &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": k.jwk()}),
            &json!({"jti": uuid_like(), "htm": "GET", "htu": "https://reports.example/v1/reports",
                    "iat": app.now(), "ath": ath}),
        )
    };
    let script = repo_root().join("examples/dpop_resource_server.py");
    let run = |authorization: String, proof: String| {
        std::process::Command::new("python3")
            .arg(&script)
            .args([jwks.as_str(), app.base.as_str(), "reports-api", "GET", url, &authorization, &proof])
            .output()
            .unwrap()
    };

    let out = run(format!("DPoP {token}"), resource_proof(&key, &ath));
    assert!(out.status.success(), "the holder was refused: {}", String::from_utf8_lossy(&out.stderr));
    let claims: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["sub"], RSA_SUBJECT);

    let refusals = [
        ("a thief's key", run(format!("DPoP {token}"), resource_proof(&DpopKey::new(), &ath)), "cnf.jkt"),
        ("another token's proof", run(format!("DPoP {token}"), resource_proof(&key, "x")), "ath"),
        ("bearer scheme", run(format!("Bearer {token}"), resource_proof(&key, &ath)), "DPoP scheme"),
    ];
    for (case, out, reason) in refusals {
        assert_eq!(out.status.code(), Some(1), "{case} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(reason),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
