//! Prometheus metrics at `GET /metrics` (OpenMetrics text). Every name is
//! prefixed `halflife_`; labels are bounded: outcomes, error codes, kinds,
//! configured issuers and catalog systems, never a jti, subject or token.

use std::sync::Mutex;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AppState;
use super::error::ApiError;
use crate::attest::jwt::IssuerKeys;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SystemLabel {
    system: String,
}

/// The registry and the metrics the handler refreshes on each scrape.
pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Gauge>,
    active: Family<SystemLabel, Gauge>,
    /// Responses answered 503 because storage could not be reached.
    unavailable: Counter,
    /// One scrape at a time refreshes and encodes.
    scrape: Mutex<()>,
}

impl Metrics {
    /// The registry, with the counters the broker and its parts keep.
    pub fn new(broker: &crate::broker::Broker, refused_connections: &super::serve::RefusedConnections) -> Self {
        let mut registry = Registry::with_prefix("halflife");
        broker.stats.register(&mut registry);
        registry.register(
            "connections_refused",
            "Connections closed as soon as they were accepted: reason=per_source (the source address held \
             server.max_connections_per_source) or reason=total (the listener held server.max_connections)",
            refused_connections.family(),
        );
        if let Some(commits) = broker.log.commit_durations() {
            registry.register_with_unit(
                "commit_duration",
                "Time of each committed group-commit batch, from its first statement to its commit on disk",
                prometheus_client::registry::Unit::Seconds,
                commits,
            );
        }
        registry.register(
            "rate_limited",
            "Token requests refused by a rate limit: limit=workload (exchanges per workload) or limit=source \
             (failed attestations per source address)",
            broker.throttle.refused_counter(),
        );
        for issuer in broker.verifier.issuers() {
            if let IssuerKeys::Remote(remote) = &issuer.keys {
                let (fetches, failures) = remote.counters();
                let sub = registry.sub_registry_with_label(("issuer".into(), issuer.name.clone().into()));
                sub.register("jwks_fetches", "JWKS fetches of a remote attestation issuer", fetches);
                sub.register("jwks_fetch_failures", "JWKS fetches that failed (the last good keys stay)", failures);
            }
        }
        let jobs = Family::<JobLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Queued background jobs (mark_revoked, drop_login, webhook) by kind and status: pending, or failing \
             after repeated attempts",
            jobs.clone(),
        );
        let active = Family::<SystemLabel, Gauge>::default();
        registry.register(
            "active_credentials",
            "Credentials each system holds that are neither expired nor revoked (counted at scrape time)",
            active.clone(),
        );
        let unavailable = Counter::default();
        registry.register(
            "storage_unavailable",
            "Requests answered 503 because the database could not record or read what they needed",
            unavailable.clone(),
        );
        Self { registry, jobs, active, unavailable, scrape: Mutex::new(()) }
    }

    /// Counts a 503 answer (called by the response middleware).
    pub fn count_response(&self, status: StatusCode) {
        if status == StatusCode::SERVICE_UNAVAILABLE {
            self.unavailable.inc();
        }
    }
}

/// `GET /metrics`
#[utoipa::path(get, path = "/metrics", tag = "discovery",
    responses((status = 200, description = "Prometheus metrics (OpenMetrics text)", body = String, content_type = "application/openmetrics-text"),
        (status = 503, description = "Storage unavailable", body = super::openapi::ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stats = state.broker.job_stats().await?;
    let now = state.broker.clock.now();
    let active = state.broker.lifecycle.active_credentials_by_system(now).await.map_err(crate::broker::Unavailable)?;
    let text = {
        let _scrape = state.metrics.scrape.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.metrics.jobs.clear();
        for stat in stats {
            let status = if stat.failing { "failing" } else { "pending" };
            state.metrics.jobs.get_or_create(&JobLabels { kind: stat.kind, status: status.into() }).set(stat.count);
        }
        state.metrics.active.clear();
        for (system, count) in active {
            state.metrics.active.get_or_create(&SystemLabel { system }).set(count);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        text
    };
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}
