//! Attestation verifiers: who is this workload, proven by what.

pub mod dev;
pub mod dpop;
pub mod jwks;
pub mod jwt;
pub mod spiffe;
mod verified;
pub mod x509;

use std::sync::Arc;

use crate::config::IssuerConfig;
use jwks::{KeySet, RemoteJwks};
use jwt::{IssuerKeys, TrustedIssuer};

/// Builds a trusted issuer from its configuration. File-based key sets are
/// read now; remote ones start empty and are filled by the refresher.
pub fn issuer_from_config(
    config: &IssuerConfig,
    client: &reqwest::Client,
    clock: &crate::clock::SharedClock,
) -> Result<TrustedIssuer, jwks::JwksError> {
    let keys = match (&config.jwks_file, &config.jwks_uri) {
        (Some(path), _) => IssuerKeys::Static(Arc::new(KeySet::from_file(path)?)),
        (None, Some(uri)) => IssuerKeys::Remote(Arc::new(RemoteJwks::new(
            uri.clone(),
            client.clone(),
            config.jwks_refresh_cooldown.get(),
            config.jwks_max_stale.get(),
            Arc::clone(clock),
        ))),
        (None, None) => {
            return Err(jwks::JwksError::Invalid(config.name.clone(), "no jwks_file or jwks_uri".into()));
        }
    };
    Ok(TrustedIssuer {
        name: config.name.clone(),
        iss: config.issuer.clone(),
        algorithms: config.algorithms.iter().map(|a| a.to_jwt()).collect(),
        audience: config.audience.clone(),
        leeway: config.leeway.get(),
        max_token_age: config.max_token_age.get(),
        single_use: config.single_use,
        single_audience: config.single_audience,
        keys,
    })
}
