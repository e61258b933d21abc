//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: &'static str,
    pub what: &'static str,
}

/// The operator's metrics, registered in one registry served on `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Family<KindLabel, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<KindLabel, Histogram>,
    /// Writes to the API server (status patches, applies), to watch steady-state churn.
    pub api_writes: Family<WriteLabels, Counter>,
    pub drift_reverted: Family<KindLabel, Counter>,
    pub leader: Gauge,
    /// Agents desired and ready per site of each swarm.
    pub sites: crate::site_metrics::SiteMetrics,
    pub registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("qis_operator");
        let reconciles = Family::<KindLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let api_writes = Family::<WriteLabels, Counter>::default();
        let drift_reverted = Family::<KindLabel, Counter>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        registry.register(
            "api_writes",
            "Writes to the Kubernetes API",
            api_writes.clone(),
        );
        registry.register(
            "drift_reverted",
            "JetStream objects put back after drift",
            drift_reverted.clone(),
        );
        registry.register(
            "nats_requests",
            "JetStream API requests sent",
            crate::jetstream::REQUESTS.clone(),
        );
        registry.register(
            "leader",
            "1 when this replica holds the leader lease",
            leader.clone(),
        );
        let sites = crate::site_metrics::SiteMetrics::default();
        sites.register(&mut registry);
        Metrics {
            reconciles,
            errors,
            duration,
            api_writes,
            drift_reverted,
            leader,
            sites,
            registry,
        }
    }
}

impl Metrics {
    pub fn observe(&self, kind: &'static str, took: Duration) {
        self.duration
            .get_or_create(&KindLabel { kind })
            .observe(took.as_secs_f64());
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
