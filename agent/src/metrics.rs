//! Prometheus metrics of the agent.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubjectLabel {
    pub subject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictionLabel {
    pub subject: String,
    /// `voters`, `packets` or `problems`: the window limit that turned the packet away.
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    /// Packets taken in through the intake.
    pub packets_in: Counter,
    /// Packets and requests refused (intake or twins), by the rule they broke; the intake's
    /// own limits count here too (`connection_limit`, `header_timeout`, `body_timeout`,
    /// `body_too_large`, `busy`, `queue_full`, …).
    pub packets_refused: Family<RuleLabel, Counter>,
    /// Packets deposited (acked by JetStream).
    pub packets_out: Counter,
    /// Twins received from consumers.
    pub twins_in: Counter,
    /// Twins that were duplicates or redeliveries (changed nothing).
    pub twins_duplicate: Counter,
    /// Synthesis packets published.
    pub synthesis_out: Counter,
    pub outbox_depth: Gauge,
    pub outbox_dropped: Counter,
    /// Outbox writes that failed (disk full, I/O error): appends refused, delivery marks
    /// retried.
    pub outbox_write_failures: Counter,
    /// Messages pending on each subject's consumer (consumer lag).
    pub consumer_lag: Family<SubjectLabel, Gauge>,
    /// Time to take one twin into the synthesis state (decode, ingest), seconds.
    pub synthesis_latency: Histogram,
    /// Status writes of consensus.
    pub status_writes: Counter,
    /// Subjects this agent refused (a setting it cannot use); it serves the others.
    pub subjects_refused: Counter,
    /// Packets a subject's window limits turned away, by subject and limit.
    pub synthesis_evictions: Family<EvictionLabel, Counter>,
    /// Open intake connections.
    pub intake_connections: Gauge,
    /// Each subject's consensus (exported by one agent of the swarm).
    pub consensus: crate::consensus_metrics::ConsensusMetrics,
    pub registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("qis_agent");
        let m = Metrics {
            packets_in: Counter::default(),
            packets_refused: Family::default(),
            packets_out: Counter::default(),
            twins_in: Counter::default(),
            twins_duplicate: Counter::default(),
            synthesis_out: Counter::default(),
            outbox_depth: Gauge::default(),
            outbox_dropped: Counter::default(),
            outbox_write_failures: Counter::default(),
            consumer_lag: Family::default(),
            synthesis_latency: Histogram::new(exponential_buckets(1e-6, 4.0, 12)),
            status_writes: Counter::default(),
            subjects_refused: Counter::default(),
            synthesis_evictions: Family::default(),
            intake_connections: Gauge::default(),
            consensus: Default::default(),
            registry: Registry::default(),
        };
        m.consensus.register(&mut registry);
        m.register_packets(&mut registry);
        m.register_twins(&mut registry);
        m.register_outbox(&mut registry);
        m.register_subjects(&mut registry);
        m.register_intake(&mut registry);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Registers: the intake's and the deposit's packets.
    fn register_packets(&self, registry: &mut Registry) {
        registry.register(
            "packets_in",
            "Packets taken in through the intake",
            self.packets_in.clone(),
        );
        registry.register(
            "packets_refused",
            "Packets refused, by rule",
            self.packets_refused.clone(),
        );
        registry.register(
            "packets_out",
            "Packets deposited (acked)",
            self.packets_out.clone(),
        );
    }

    /// Registers: twins received and synthesis packets published.
    fn register_twins(&self, registry: &mut Registry) {
        registry.register("twins_in", "Twins received", self.twins_in.clone());
        registry.register(
            "twins_duplicate",
            "Twins that changed nothing (duplicates, redeliveries)",
            self.twins_duplicate.clone(),
        );
        registry.register(
            "synthesis_out",
            "Synthesis packets published",
            self.synthesis_out.clone(),
        );
    }

    /// Registers: the outbox.
    fn register_outbox(&self, registry: &mut Registry) {
        registry.register(
            "outbox_depth",
            "Packets waiting in the outbox",
            self.outbox_depth.clone(),
        );
        registry.register(
            "outbox_dropped",
            "Packets dropped because the outbox was full",
            self.outbox_dropped.clone(),
        );
        registry.register(
            "outbox_write_failures",
            "Outbox writes that failed (disk full, I/O error)",
            self.outbox_write_failures.clone(),
        );
    }

    /// Registers: per subject: consumers, synthesis, status writes.
    fn register_subjects(&self, registry: &mut Registry) {
        registry.register(
            "consumer_lag",
            "Messages pending on the subject's consumer",
            self.consumer_lag.clone(),
        );
        registry.register(
            "synthesis_latency_seconds",
            "Time to take a twin into the synthesis state",
            self.synthesis_latency.clone(),
        );
        registry.register(
            "status_writes",
            "Consensus status writes",
            self.status_writes.clone(),
        );
        registry.register(
            "subjects_refused",
            "Subjects refused for settings the agent cannot use",
            self.subjects_refused.clone(),
        );
        registry.register(
            "synthesis_evictions",
            "Packets a subject's window limits turned away (maxVoters, maxPackets, maxProblems)",
            self.synthesis_evictions.clone(),
        );
    }

    /// Registers: the intake's connections.
    fn register_intake(&self, registry: &mut Registry) {
        registry.register(
            "intake_connections",
            "Open intake connections",
            self.intake_connections.clone(),
        );
    }

    pub fn refused(&self, rule: &'static str) {
        self.packets_refused
            .get_or_create(&RuleLabel { rule })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
