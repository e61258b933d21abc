//! Agents desired and ready per site of each swarm, as gauges
//! (`qis_operator_agents_{desired,ready}{namespace,swarm,site}`), from the swarm status the
//! reconcile wrote: what the `QisAgentsNotReady` alert of the chart reads. Only the leader
//! reconciles, and a replica that loses the lead exits, so one replica exports them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use qis_crds::SiteStatus;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabels {
    pub namespace: String,
    pub swarm: String,
    pub site: String,
}

/// The gauges, and which sites of each swarm have series.
#[derive(Debug, Default)]
pub struct SiteMetrics {
    desired: Family<SiteLabels, Gauge>,
    ready: Family<SiteLabels, Gauge>,
    shown: Mutex<BTreeMap<(String, String), BTreeSet<String>>>,
}

impl SiteMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "agents_desired",
            "Agent replicas a site of a swarm asks for",
            self.desired.clone(),
        );
        registry.register(
            "agents_ready",
            "Agent replicas of a site of a swarm that are ready",
            self.ready.clone(),
        );
    }

    /// Shows the sites of `namespace/swarm` as `sites` says, and drops the series of sites it
    /// no longer lists.
    pub fn record(&self, namespace: &str, swarm: &str, sites: &[SiteStatus]) {
        let mut shown = self
            .shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now: BTreeSet<String> = sites.iter().map(|s| s.name.clone()).collect();
        let key = (namespace.to_owned(), swarm.to_owned());
        for gone in shown
            .get(&key)
            .into_iter()
            .flat_map(|old| old.difference(&now))
        {
            let l = labels(namespace, swarm, gone);
            self.desired.remove(&l);
            self.ready.remove(&l);
        }
        for s in sites {
            let l = labels(namespace, swarm, &s.name);
            self.desired
                .get_or_create(&l)
                .set(i64::from(s.desired_replicas));
            self.ready
                .get_or_create(&l)
                .set(i64::from(s.ready_replicas));
        }
        if now.is_empty() {
            shown.remove(&key);
        } else {
            shown.insert(key, now);
        }
    }

    /// Drops every series of a deleted swarm.
    pub fn forget(&self, namespace: &str, swarm: &str) {
        self.record(namespace, swarm, &[]);
    }
}

fn labels(namespace: &str, swarm: &str, site: &str) -> SiteLabels {
    SiteLabels {
        namespace: namespace.to_owned(),
        swarm: swarm.to_owned(),
        site: site.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, desired: i32, ready: i32) -> SiteStatus {
        SiteStatus {
            name: name.into(),
            deployment: format!("campus-agent-{name}"),
            desired_replicas: desired,
            ready_replicas: ready,
        }
    }

    fn render(m: &SiteMetrics) -> String {
        let mut registry = Registry::with_prefix("qis_operator");
        m.register(&mut registry);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    #[test]
    fn sites_are_shown_updated_and_dropped_with_their_swarm() {
        let m = SiteMetrics::default();
        m.record("factory", "campus", &[site("a", 2, 2), site("b", 2, 1)]);
        m.record("other", "campus", &[site("a", 1, 1)]);
        let text = render(&m);
        assert!(
            text.contains(
                r#"qis_operator_agents_ready{namespace="factory",swarm="campus",site="b"} 1"#
            ),
            "{text}"
        );
        m.record("factory", "campus", &[site("a", 2, 2)]);
        let text = render(&m);
        assert!(
            !text.contains(r#"namespace="factory",swarm="campus",site="b""#),
            "{text}"
        );
        m.forget("factory", "campus");
        let text = render(&m);
        assert!(!text.contains(r#"namespace="factory""#), "{text}");
        assert!(text.contains(r#"namespace="other""#), "{text}");
    }
}
