//! Prometheus metrics at `GET /metrics` (OpenMetrics text). Labels are
//! bounded: never a jti, subject or token.

use std::sync::Mutex;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AppState;
use super::error::ApiError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    status: String,
}

/// The registry and the metrics the handler refreshes on each scrape.
pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Gauge>,
    /// One scrape at a time refreshes and encodes.
    scrape: Mutex<()>,
}

impl Metrics {
    /// The registry, with the counters the broker keeps itself.
    pub fn new(broker: &crate::broker::Broker) -> Self {
        let mut registry = Registry::with_prefix("halflife");
        registry.register(
            "rate_limited",
            "Token requests refused by a rate limit: limit=workload (exchanges per workload) or limit=source \
             (failed attestations per source address)",
            broker.throttle.refused_counter(),
        );
        let jobs = Family::<JobLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Queued background jobs (mark_revoked, drop_login, webhook) by kind and status: pending, or failing \
             after repeated attempts",
            jobs.clone(),
        );
        Self { registry, jobs, scrape: Mutex::new(()) }
    }
}

/// `GET /metrics`
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stats = state.broker.job_stats().await?;
    let text = {
        let _scrape = state.metrics.scrape.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.metrics.jobs.clear();
        for stat in stats {
            let status = if stat.failing { "failing" } else { "pending" };
            state.metrics.jobs.get_or_create(&JobLabels { kind: stat.kind, status: status.into() }).set(stat.count);
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
