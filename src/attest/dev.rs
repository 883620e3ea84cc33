//! The built-in development issuer behind `halflife dev token`.
//!
//! It exists so the quickstart works on a laptop with no platform issuer.
//! Anyone who can read its key can mint attestations, so it only runs while
//! `dev.enabled = true`, only on a loopback listener, and its tokens are
//! single-use.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Serialize;
use time::OffsetDateTime;

use super::jwks::{KeyEntry, KeySet};
use super::jwt::{IssuerKeys, TrustedIssuer};
use crate::config::{Config, DevConfig, MAX_DEV_TOKEN_TTL};
use crate::keys::{Kek, KeyError, SigningAlgorithm, SigningKey};

/// File name of the dev issuer's sealed key inside `keys.dir`.
pub const DEV_KEY_FILE: &str = "dev-issuer.json";

pub struct DevIssuer {
    key: SigningKey,
    iss: String,
    audience: String,
    ttl: Duration,
}

#[derive(Serialize)]
struct DevClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
}

impl DevIssuer {
    pub fn load_or_create(config: &Config, kek: &Kek, now: OffsetDateTime) -> Result<Self, KeyError> {
        let path = config.keys.dir.join(DEV_KEY_FILE);
        Self::from_key(SigningKey::load_or_create(&path, SigningAlgorithm::EdDSA, kek, now)?, config)
    }

    fn from_key(key: SigningKey, config: &Config) -> Result<Self, KeyError> {
        Ok(Self {
            key,
            iss: DevConfig::issuer_url(&config.server),
            audience: config.dev.audience.clone(),
            ttl: config.dev.token_ttl.get(),
        })
    }

    /// Mints a single-use attestation for `subject`.
    pub fn mint(
        &self,
        subject: &str,
        audience: Option<&str>,
        ttl: Option<Duration>,
        now: OffsetDateTime,
    ) -> Result<String, KeyError> {
        let iat = now.unix_timestamp();
        let ttl = ttl.unwrap_or(self.ttl);
        let claims = DevClaims {
            iss: &self.iss,
            sub: subject,
            aud: audience.unwrap_or(&self.audience),
            exp: iat.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            iat,
            nbf: iat,
            jti: crate::crypto::b64url(crate::crypto::random_bytes::<16>().map_err(|_| KeyError::Random)?),
        };
        self.key.sign_jwt("JWT", &claims)
    }

    /// The dev issuer as a trusted issuer the verifier can use.
    pub fn trusted(&self) -> TrustedIssuer {
        let entry = KeyEntry {
            kid: Some(self.key.kid().to_owned()),
            family: AlgorithmFamily::Ed,
            alg: Some(Algorithm::EdDSA),
            key: self.key.decoding_key().clone(),
        };
        TrustedIssuer {
            name: DevConfig::ISSUER_NAME.to_owned(),
            iss: self.iss.clone(),
            algorithms: vec![Algorithm::EdDSA],
            audience: self.audience.clone(),
            leeway: crate::config::DEFAULT_LEEWAY,
            max_token_age: MAX_DEV_TOKEN_TTL,
            single_use: true,
            single_audience: true,
            keys: IssuerKeys::Static(Arc::new(KeySet::from_entries(vec![entry]))),
        }
    }
}
