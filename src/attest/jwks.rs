//! Attestation issuers' public keys: from a file, or fetched from a JWKS URI.
//!
//! A fetched key set is cached; an unknown `kid` triggers at most one refetch
//! per cooldown (so a flood of random `kid`s cannot turn the broker into a
//! request amplifier); fetches are size- and time-bounded; and the last good
//! set survives upstream errors until it is older than the issuer's
//! `jwks_max_stale`, after which verification fails closed.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;

use crate::clock::SharedClock;

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;
use url::Url;

/// Largest JWKS document accepted from a file or an upstream.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys kept from one JWKS document.
const MAX_KEYS: usize = 64;
/// Upper bound on one fetch, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read {0}: {1}")]
    File(String, String),
    #[error("fetching {0} failed: {1}")]
    Fetch(String, String),
    #[error("JWKS from {0} is invalid: {1}")]
    Invalid(String, String),
}

#[derive(Clone)]
pub struct KeyEntry {
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

/// A parsed key set.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<KeyEntry>,
}

impl KeySet {
    /// Parses an RFC 7517 document, keeping the usable signature keys.
    /// Symmetric keys, encryption keys and keys of unknown types are
    /// skipped, never trusted.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self, JwksError> {
        let invalid = |why: &str| JwksError::Invalid(origin.to_owned(), why.to_owned());
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(invalid("document too large"));
        }
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| invalid(&e.to_string()))?;
        let list = doc.get("keys").and_then(Value::as_array).ok_or_else(|| invalid("no \"keys\" array"))?;
        let mut keys = Vec::new();
        for raw in list.iter().take(MAX_KEYS) {
            let mut raw = raw.clone();
            // Ed25519's fully specified name (RFC 9864), which the JWK
            // parser does not know yet.
            if raw.get("alg").and_then(Value::as_str) == Some("Ed25519") {
                raw["alg"] = Value::String("EdDSA".into());
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            let alg = jwk.common.key_algorithm.and_then(|a| match a {
                KeyAlgorithm::RS256 => Some(Algorithm::RS256),
                KeyAlgorithm::ES256 => Some(Algorithm::ES256),
                KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
                KeyAlgorithm::RS384 => Some(Algorithm::RS384),
                KeyAlgorithm::RS512 => Some(Algorithm::RS512),
                KeyAlgorithm::ES384 => Some(Algorithm::ES384),
                KeyAlgorithm::PS256 => Some(Algorithm::PS256),
                _ => None,
            });
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let family = key.family();
            if family == AlgorithmFamily::Hmac {
                continue;
            }
            keys.push(KeyEntry { kid: jwk.common.key_id.clone(), family, alg, key });
        }
        if keys.is_empty() {
            return Err(invalid("no usable signature keys"));
        }
        Ok(Self { keys })
    }

    pub fn from_file(path: &Path) -> Result<Self, JwksError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| JwksError::File(origin.clone(), e.to_string()))?;
        Self::parse(&bytes, &origin)
    }

    pub fn from_entries(keys: Vec<KeyEntry>) -> Self {
        Self { keys }
    }

    /// Keys that could have signed a token with this `kid` and `alg`. A
    /// token with a `kid` only ever meets the key of that id.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| match kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => true,
            })
            .filter(move |k| k.family == alg.family() && k.alg.is_none_or(|a| a == alg))
            .map(|k| &k.key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

struct Cached {
    set: Arc<KeySet>,
    fetched_at: OffsetDateTime,
}

/// A JWKS fetched from an issuer's URI, cached and refreshed.
pub struct RemoteJwks {
    uri: Url,
    client: reqwest::Client,
    cooldown: Duration,
    max_stale: Duration,
    clock: SharedClock,
    cached: RwLock<Option<Cached>>,
    /// When the last fetch triggered by an unknown `kid` was attempted.
    /// Scheduled refreshes do not count against this budget. The lock also
    /// makes concurrent unknown-`kid` requests wait for one fetch.
    last_on_demand: tokio::sync::Mutex<Option<OffsetDateTime>>,
    /// Fetch attempts and failed fetches, exported at `/metrics`.
    fetches: prometheus_client::metrics::counter::Counter,
    failures: prometheus_client::metrics::counter::Counter,
}

impl RemoteJwks {
    pub fn new(uri: Url, client: reqwest::Client, cooldown: Duration, max_stale: Duration, clock: SharedClock) -> Self {
        Self {
            uri,
            client,
            cooldown,
            max_stale,
            clock,
            cached: RwLock::new(None),
            last_on_demand: tokio::sync::Mutex::new(None),
            fetches: prometheus_client::metrics::counter::Counter::default(),
            failures: prometheus_client::metrics::counter::Counter::default(),
        }
    }

    pub fn uri(&self) -> &Url {
        &self.uri
    }

    /// The current key set, unless none was ever fetched or it is too stale
    /// to trust.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        let guard = self.cached.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.clock.now();
        guard.as_ref().filter(|c| now - c.fetched_at <= self.max_stale).map(|c| Arc::clone(&c.set))
    }

    pub fn has_keys(&self) -> bool {
        self.current().is_some()
    }

    /// Refetches because a token named a key we do not have, at most once
    /// per cooldown. Returns whether a fetch happened and succeeded.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let mut last = self.last_on_demand.lock().await;
        let now = self.clock.now();
        if last.is_some_and(|t| now - t < self.cooldown) {
            return false;
        }
        *last = Some(now);
        self.fetch_now().await.is_ok()
    }

    /// Scheduled refresh: fetches regardless of the cooldown.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        self.fetch_now().await
    }

    /// The fetch counters: attempts, and attempts that failed.
    pub fn counters(
        &self,
    ) -> (prometheus_client::metrics::counter::Counter, prometheus_client::metrics::counter::Counter) {
        (self.fetches.clone(), self.failures.clone())
    }

    async fn fetch_now(&self) -> Result<usize, JwksError> {
        self.fetches.inc();
        let result = self.fetch().await;
        if result.is_err() {
            self.failures.inc();
        }
        match &result {
            Ok(set) => {
                let n = set.len();
                let mut guard = self.cached.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                *guard = Some(Cached { set: Arc::new(set.clone()), fetched_at: self.clock.now() });
                tracing::debug!(jwks.uri = %self.uri, jwks.keys = n, "fetched JWKS");
            }
            Err(e) => {
                tracing::warn!(jwks.uri = %self.uri, error = %e, "JWKS fetch failed; keeping the last good keys")
            }
        }
        result.map(|s| s.len())
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let origin = self.uri.to_string();
        let fail = |e: String| JwksError::Fetch(origin.clone(), e);
        let mut response = self
            .client
            .get(self.uri.clone())
            .header(reqwest::header::ACCEPT, "application/json, application/jwk-set+json")
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}", response.status())));
        }
        if response.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
            return Err(fail("response too large".into()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(fail("response too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::parse(&body, &origin)
    }
}

/// The HTTP client used for JWKS fetches: rustls on ring with the
/// platform's trust store, no redirects (a redirect could point a fetch at
/// an internal address), no proxies from the environment.
pub fn http_client() -> Result<reqwest::Client, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_platform_verifier()
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(FETCH_TIMEOUT)
        .timeout(FETCH_TIMEOUT)
        .user_agent(concat!("halflife/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}
