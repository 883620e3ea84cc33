//! Criterion micro-benchmarks of the pieces of one exchange: attestation
//! verification (JWT and X.509-SVID), DPoP proof verification, grant
//! evaluation, token and opaque secret minting, and audit event hashing.
//!
//! Run: `cargo bench --bench exchange_pieces` (add `-- --quick` for a
//! shorter run). `benches/load.rs` measures them together, over HTTP.
#![expect(clippy::unwrap_used, reason = "a benchmark aborts on setup failure")]
#![expect(clippy::expect_used, reason = "a benchmark aborts on setup failure")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use halflife::attest::jwks::KeySet;
use halflife::attest::jwt::{IssuerKeys, TrustedIssuer, Verifier};
use halflife::attest::x509::{PeerCertificates, TrustBundles, TrustDomainSource};
use halflife::audit::{AuditEvent, AuditRecord, Outcome, RequestMeta, chain_hash};
use halflife::domain::model::{Grant, GrantContext, Owner, OwnerStatus, System, SystemState, Tier};
use halflife::domain::policy::{Ask, TtlPolicy, decide};
use halflife::domain::values::{Audience, CredentialKind, GrantId, OwnerId, ScopeSet, SubjectMatch, SystemId};
use halflife::keys::{SigningAlgorithm, SigningKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use time::OffsetDateTime;

mod support;

const ISS: &str = "https://bench.halflife.test";
const SUBJECT: &str = "spiffe://bench.example/ns/ai/sa/agent-1";

/// An RS256 issuer (as Kubernetes signs service-account tokens), and one of
/// its tokens valid at `now`.
fn rs256_issuer(now: OffsetDateTime) -> (Verifier, String) {
    let rsa = support::RsaKey::generate();
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(&rsa.n), "e": URL_SAFE_NO_PAD.encode(&rsa.e)}]});
    let keys = KeySet::parse(jwks.to_string().as_bytes(), "bench").unwrap();
    let issuer = TrustedIssuer {
        name: "bench".into(),
        iss: ISS.into(),
        algorithms: vec![Algorithm::RS256],
        audience: "halflife".into(),
        leeway: Duration::from_secs(30),
        max_token_age: Duration::from_secs(86_400),
        single_use: false,
        single_audience: false,
        keys: IssuerKeys::Static(Arc::new(keys)),
    };
    let t = now.unix_timestamp();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let claims = json!({"iss": ISS, "sub": SUBJECT, "aud": ["halflife"], "iat": t, "nbf": t, "exp": t + 3600,
        "jti": "5f0c4f4e-2b7a-4e43-9d6f-2b0c2f7d9a11"});
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_der(&rsa.pkcs8)).unwrap();
    (Verifier::new(vec![issuer]), token)
}

/// A trust bundle for `bench.example` and an X.509-SVID it signed.
fn x509_svid(now: OffsetDateTime) -> (TrustBundles, PeerCertificates) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::URI(SUBJECT.try_into().unwrap())];
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::hours(1);
    let leaf = leaf.signed_by(&KeyPair::generate().unwrap(), &ca).unwrap();
    let dir = std::env::temp_dir().join(format!("halflife-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle_file = dir.join("bench.example.pem");
    std::fs::write(&bundle_file, ca.pem()).unwrap();
    let bundles = TrustBundles::load(vec![TrustDomainSource {
        trust_domain: "bench.example".into(),
        issuer: "bench".into(),
        bundle_file,
    }])
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (bundles, PeerCertificates(Arc::from(vec![leaf.der().clone()])))
}

/// A DPoP proof (ES256) for the token endpoint at `now`.
fn dpop_proof(now: OffsetDateTime) -> (String, url::Url) {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": {"kty": "EC", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}});
    let claims = json!({"jti": "p-1", "htm": "POST", "htu": "https://halflife.example/oauth2/token",
        "iat": now.unix_timestamp()});
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = pair.sign(&rng, input.as_bytes()).unwrap();
    let proof = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
    (proof, url::Url::parse("https://halflife.example/oauth2/token").unwrap())
}

fn grant_context(now: OffsetDateTime) -> GrantContext {
    let owner = |id: &str| Owner {
        id: OwnerId::parse(id).unwrap(),
        display_name: id.into(),
        email: format!("{id}@example.com"),
        status: OwnerStatus::Active,
        attested_until: now + time::Duration::days(90),
    };
    let scopes =
        |items: &[&str]| ScopeSet::from_list(&items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    GrantContext {
        grant: Grant {
            id: GrantId::parse("bench-agents").unwrap(),
            system: SystemId::parse("bench").unwrap(),
            issuer: "bench".into(),
            subject: SubjectMatch::parse("spiffe://bench.example/ns/ai/sa/*").unwrap(),
            audiences: vec![Audience::parse("reports-api").unwrap()],
            scopes: scopes(&["reports:read", "reports:write"]),
            default_scopes: scopes(&["reports:read"]),
            kinds: vec![CredentialKind::Jwt],
            max_ttl: Duration::from_secs(900),
            binding: halflife::domain::model::Binding::Optional,
            max_audiences: 1,
            on_behalf_of: Vec::new(),
            approval: None,
        },
        system: System {
            id: SystemId::parse("bench").unwrap(),
            name: "Bench".into(),
            purpose: "Load generation".into(),
            business_owner: OwnerId::parse("biz").unwrap(),
            technical_owner: OwnerId::parse("tech").unwrap(),
            tier: Tier::Production,
            state: SystemState::Active,
            pilot_ends_at: None,
            data_classification: None,
            suspended_reason: None,
            tier_started_at: now,
        },
        business_owner: owner("biz"),
        technical_owner: owner("tech"),
        grant_version: 0,
    }
}

fn audit_record() -> AuditRecord {
    let time = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let mut e = AuditEvent::new("credential.issued", Outcome::Success, time, &RequestMeta::default());
    e.system_id = Some("bench".into());
    e.owners = Some("biz tech".into());
    e.grant_id = Some("bench-agents".into());
    e.jti = Some("0193b8f0-7c1e-7a6b-9d55-0e1f2a3b4c5d".into());
    e.request_id = Some("7b0b4bb2-2f7e-4d55-a1f4-6b1bd1d5e0c3".into());
    e.source = Some("127.0.0.1".into());
    e.attestation_issuer = Some("bench".into());
    e.subject = Some(SUBJECT.into());
    e.attestation_id = Some("5f0c4f4e-2b7a-4e43-9d6f-2b0c2f7d9a11".into());
    e.audience = Some("reports-api".into());
    e.scopes = Some("reports:read".into());
    e.iat = Some(1_800_000_000);
    e.exp = Some(1_800_000_300);
    e.detail = Some(json!({"kind": "jwt", "business_owner": "biz", "technical_owner": "tech", "key_id": "k1"}));
    let prev = "9f2b5c0e8f7a4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4";
    AuditRecord::seal(1_000_001, e, prev.into()).0
}

fn pieces(c: &mut Criterion) {
    halflife::crypto::install();
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();

    let (verifier, token) = rs256_issuer(now);
    c.bench_function("attestation verify (RS256, static JWKS)", |b| {
        b.iter(|| runtime.block_on(verifier.verify(black_box(&token), now)).unwrap());
    });

    let ctx = grant_context(now);
    let ask = Ask {
        targets: vec![Audience::parse("reports-api").unwrap()],
        scopes: Some(ScopeSet::parse_space_separated("reports:read").unwrap()),
        requested_ttl: Some(Duration::from_secs(300)),
        kind: None,
    };
    let limits = TtlPolicy { default_ttl: Duration::from_secs(300), ceiling: Duration::from_secs(3600) };
    c.bench_function("grant evaluation (decide)", |b| {
        b.iter(|| decide(black_box(&ctx), black_box(&ask), now, limits).unwrap());
    });

    let claims = json!({"iss": "https://halflife.example", "sub": SUBJECT, "aud": "reports-api",
        "exp": 1_800_000_300i64, "iat": 1_800_000_000i64, "nbf": 1_800_000_000i64,
        "jti": "0193b8f0-7c1e-7a6b-9d55-0e1f2a3b4c5d", "scope": "reports:read", "client_id": SUBJECT, "system": "bench"});
    for algorithm in [SigningAlgorithm::ES256, SigningAlgorithm::EdDSA] {
        let (key, _) = SigningKey::generate(algorithm, now).unwrap();
        c.bench_function(&format!("token mint ({algorithm:?})"), |b| {
            b.iter(|| key.sign_jwt("at+jwt", black_box(&claims)).unwrap());
        });
    }

    let secret_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7; 32]);
    c.bench_function("opaque secret mint (256 random bits + checksum + HMAC)", |b| {
        b.iter(|| {
            use secrecy::ExposeSecret as _;
            let secret = halflife::mint::secret::generate().unwrap();
            halflife::mint::secret::stored_hash(&secret_key, black_box(secret.expose_secret()))
        });
    });

    let (bundles, peer) = x509_svid(now);
    c.bench_function("attestation verify (X.509-SVID: leaf rules + chain)", |b| {
        b.iter(|| bundles.attest(Some(black_box(&peer)), now).unwrap());
    });

    let (proof, endpoint) = dpop_proof(now);
    c.bench_function("DPoP proof verify (ES256)", |b| {
        b.iter(|| {
            halflife::attest::dpop::verify_proof(black_box(&proof), "POST", &endpoint, now, Duration::from_secs(60))
                .unwrap()
        });
    });

    let record = audit_record();
    c.bench_function("audit event hash (canonical JSON + SHA-256)", |b| {
        b.iter(|| chain_hash(black_box(&record.prev_hash), &black_box(&record).canonical()));
    });
}

criterion_group!(benches, pieces);
criterion_main!(benches);
