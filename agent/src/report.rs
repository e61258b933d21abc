//! Reporting consensus into `QisSubject.status.consensus` (cluster mode). Exactly one agent of
//! the swarm writes at a time: the holder of the Lease `qis-reporter-<swarm>`; when it dies the
//! lease expires and another agent takes over. The holder writes a subject at most once per
//! report interval and only when its consensus changed (compared without `updatedAt`), with
//! field manager `qis-agent`, touching nothing else of the status.

use crate::metrics::Metrics;
use crate::synthesis::Snapshot;
use crate::twins::Views;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use qis_crds::constants::AGENT_FIELD_MANAGER;
use qis_crds::{Consensus, QisSubject};
use qis_lease::{Attempt, LeaseLock};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Who reports, where.
#[derive(Clone)]
pub struct Reporter {
    pub client: Client,
    pub namespace: String,
    pub swarm: String,
    pub identity: String,
    pub site: String,
    pub interval: Duration,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("namespace", &self.namespace)
            .field("swarm", &self.swarm)
            .field("identity", &self.identity)
            .finish()
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The status form of a snapshot, without `updatedAt` (filled in when written).
pub fn consensus(s: &Snapshot, site: &str, agent: &str) -> Consensus {
    Consensus {
        problem: s.problem.clone(),
        strength: round3(s.strength),
        weighted_confidence: round3(s.weighted_confidence),
        agents: s.agents,
        packets: s.packets,
        synthesis_pairs: s.synthesis_pairs,
        dispersion: round3(s.dispersion),
        effective_n: round3(s.effective_n),
        alert: s.alert,
        recommendation: s.recommendation.clone(),
        updated_at: String::new(),
        reporting_site: site.to_owned(),
        reporting_agent: agent.to_owned(),
    }
}

impl Reporter {
    pub fn lease_name(&self) -> String {
        format!("qis-reporter-{}", self.swarm)
    }

    /// Runs until `stop` turns true.
    pub async fn run(self, views: Views, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
        let lock = LeaseLock {
            namespace: self.namespace.clone(),
            lease: self.lease_name(),
            identity: self.identity.clone(),
            lease_duration: self.interval * 3,
            renew_every: self.interval,
        };
        let api: Api<QisSubject> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut written: HashMap<String, Consensus> = HashMap::new();
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            match lock.try_once(&self.client).await {
                Ok(Attempt::Held) => {}
                Ok(Attempt::HeldByOther(_)) => {
                    written.clear();
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reporter lease");
                    continue;
                }
            }
            let current: Vec<(String, Consensus)> = {
                let views = views
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                views
                    .iter()
                    .filter_map(|(name, v)| {
                        v.snapshot
                            .as_ref()
                            .map(|s| (name.clone(), consensus(s, &self.site, &self.identity)))
                    })
                    .collect()
            };
            for (name, c) in current {
                if written.get(&name) == Some(&c) {
                    continue;
                }
                let mut stamped = c.clone();
                stamped.updated_at = k8s_openapi::jiff::Timestamp::now().to_string();
                let patch = json!({"apiVersion": "qis.dev/v1alpha1", "kind": "QisSubject", "status": {"consensus": stamped}});
                match api
                    .patch_status(
                        &name,
                        &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
                        &Patch::Apply(&patch),
                    )
                    .await
                {
                    Ok(_) => {
                        metrics.status_writes.inc();
                        written.insert(name, c);
                    }
                    Err(e) => tracing::warn!(subject = %name, error = %e, "cannot write consensus"),
                }
            }
        }
    }
}
