//! Each subject's consensus as Prometheus gauges (`qis_agent_consensus_*{subject}`), exported by
//! one agent per swarm so that a query needs no dedupe: in cluster mode the holder of the
//! reporter Lease (see `report.rs`, which turns [`ConsensusMetrics::set_exporting`] on and off
//! with the lease), a standalone agent always. The gauges are filled from the subjects' local
//! views at each scrape ([`ConsensusMetrics::sync`]), so they are never staler than the view.
//! The swarm, site, pod and namespace come from the scrape's target labels (the chart's
//! PodMonitor).

use crate::subject_worker::View;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsensusLabel {
    /// The QisSubject's name (or the standalone config's subject name).
    pub subject: String,
}

type FloatGauges = Family<ConsensusLabel, Gauge<f64, AtomicU64>>;

/// The consensus gauges, and whether this agent exports them.
#[derive(Debug, Default)]
pub struct ConsensusMetrics {
    alert: FloatGauges,
    strength: FloatGauges,
    confidence: FloatGauges,
    agents: FloatGauges,
    agreeing_agents: FloatGauges,
    dispersion: FloatGauges,
    last_packet: FloatGauges,
    exporting: AtomicBool,
    /// The subjects with series now (to remove a subject that left the views).
    shown: Mutex<BTreeSet<String>>,
}

impl ConsensusMetrics {
    /// Registers the gauges under `consensus_*` of the agent's registry.
    pub fn register(&self, registry: &mut Registry) {
        let gauges: [(&str, &str, &FloatGauges); 7] = [
            (
                "consensus_alert",
                "1 while the subject's consensus raises an alert",
                &self.alert,
            ),
            (
                "consensus_strength",
                "Share of the decay-weighted votes that agree on the consensus problem",
                &self.strength,
            ),
            (
                "consensus_confidence",
                "Combined confidence of the agreeing votes",
                &self.confidence,
            ),
            (
                "consensus_agents",
                "Distinct agents with a vote in the window",
                &self.agents,
            ),
            (
                "consensus_agreeing_agents",
                "Agents whose vote names the consensus problem",
                &self.agreeing_agents,
            ),
            (
                "consensus_dispersion",
                "Interquartile range of the agreeing votes' confidences",
                &self.dispersion,
            ),
            (
                "consensus_last_packet_timestamp_seconds",
                "Timestamp of the newest vote in the window (at most the agent's clock)",
                &self.last_packet,
            ),
        ];
        for (name, help, family) in gauges {
            registry.register(name, help, family.clone());
        }
    }

    /// Whether this agent exports the consensus (the reporter's lease holder, or standalone).
    pub fn set_exporting(&self, on: bool) {
        self.exporting.store(on, Ordering::Relaxed);
    }

    /// Makes the gauges show `views`: one series set per subject with a consensus, none for the
    /// others; none at all while this agent does not export.
    pub fn sync(&self, views: &BTreeMap<String, View>) {
        let mut shown = self
            .shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let exporting = self.exporting.load(Ordering::Relaxed);
        let mut now = BTreeSet::new();
        for (name, view) in views {
            let Some(s) = view.snapshot.as_ref().filter(|_| exporting) else {
                continue;
            };
            let l = ConsensusLabel {
                subject: name.clone(),
            };
            self.alert
                .get_or_create(&l)
                .set(f64::from(u8::from(s.alert)));
            self.strength.get_or_create(&l).set(s.strength);
            self.confidence.get_or_create(&l).set(s.weighted_confidence);
            self.agents.get_or_create(&l).set(f64::from(s.agents));
            self.agreeing_agents
                .get_or_create(&l)
                .set(f64::from(s.agreeing_agents));
            self.dispersion.get_or_create(&l).set(s.dispersion);
            self.last_packet.get_or_create(&l).set(s.newest);
            now.insert(name.clone());
        }
        for gone in shown.difference(&now) {
            let l = ConsensusLabel {
                subject: gone.clone(),
            };
            for family in self.families() {
                family.remove(&l);
            }
        }
        *shown = now;
    }

    fn families(&self) -> [&FloatGauges; 7] {
        [
            &self.alert,
            &self.strength,
            &self.confidence,
            &self.agents,
            &self.agreeing_agents,
            &self.dispersion,
            &self.last_packet,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthesis::Snapshot;

    fn view(alert: bool, agreeing: u32) -> View {
        View {
            snapshot: Some(Snapshot {
                problem: "iot.bearing-wear".into(),
                strength: 0.75,
                weighted_confidence: 0.84,
                agents: 3,
                agreeing_agents: agreeing,
                newest: 1_764_150_000.0,
                packets: 3,
                synthesis_pairs: 3,
                dispersion: 0.1,
                effective_n: 3.0,
                alert,
                recommendation: String::new(),
            }),
            ..View::default()
        }
    }

    fn render(m: &ConsensusMetrics) -> String {
        let mut registry = Registry::with_prefix("qis_agent");
        m.register(&mut registry);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    #[test]
    fn an_exporter_shows_each_subject_with_a_consensus_and_forgets_one_that_left() {
        let m = ConsensusMetrics::default();
        m.set_exporting(true);
        let mut views = BTreeMap::from([
            ("bearing".to_owned(), view(true, 2)),
            ("hvac".to_owned(), view(false, 1)),
            ("quiet".to_owned(), View::default()),
        ]);
        m.sync(&views);
        let text = render(&m);
        assert!(
            text.contains("qis_agent_consensus_alert{subject=\"bearing\"} 1.0"),
            "{text}"
        );
        assert!(text.contains("qis_agent_consensus_alert{subject=\"hvac\"} 0.0"));
        assert!(text.contains("qis_agent_consensus_agreeing_agents{subject=\"bearing\"} 2.0"));
        assert!(text.contains(
            "qis_agent_consensus_last_packet_timestamp_seconds{subject=\"hvac\"} 1764150000.0"
        ));
        assert!(!text.contains("subject=\"quiet\""));
        views.remove("hvac");
        m.sync(&views);
        let text = render(&m);
        assert!(!text.contains("subject=\"hvac\""), "{text}");
        assert!(text.contains("subject=\"bearing\""));
    }

    #[test]
    fn an_agent_that_does_not_export_shows_nothing_and_stops_when_it_loses_the_lease() {
        let m = ConsensusMetrics::default();
        let views = BTreeMap::from([("bearing".to_owned(), view(true, 2))]);
        m.sync(&views);
        assert!(!render(&m).contains("subject="));
        m.set_exporting(true);
        m.sync(&views);
        assert!(render(&m).contains("subject=\"bearing\""));
        m.set_exporting(false);
        m.sync(&views);
        assert!(!render(&m).contains("subject="), "{}", render(&m));
    }
}
