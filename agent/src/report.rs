//! Reporting consensus into `QisSubject.status.consensus` (cluster mode). Exactly one agent of
//! the swarm writes at a time: the holder of the Lease `qis-reporter-<swarm>`; when it dies the
//! lease expires and another agent takes over. The holder writes a subject at most once per
//! report interval and only when its consensus changed (compared without `updatedAt`), with
//! field manager `qis-agent`, touching nothing else of the status.

use crate::consensus_events::Announcer;
use crate::metrics::Metrics;
use crate::subject_worker::Views;
use crate::synthesis::Snapshot;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use qis_crds::constants::AGENT_FIELD_MANAGER;
use qis_crds::{Consensus, QisSubject};
use qis_lease::{Attempt, LeaseLock};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Whether the agent's NATS connection is up: a reporter without it gives the lease up.
    pub connected: Arc<AtomicBool>,
    /// Least time between two alert Events of one subject
    /// ([`crate::consensus_events::DEFAULT_GAP`]).
    pub event_gap: Duration,
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
        agreeing_agents: s.agreeing_agents,
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

    /// Whether this agent can report: connected to NATS and serving at least one subject
    /// (bound). A reporter that is not gives the lease up, so one that can takes over at once
    /// instead of a lease duration later.
    fn fit(&self, views: &Views) -> bool {
        self.connected.load(Ordering::Relaxed)
            && views
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .any(|v| v.bound && v.invalid.is_none())
    }

    /// Runs until `stop` turns true; gives the lease up then.
    pub async fn run(self, views: Views, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
        let lock = LeaseLock::new(
            self.namespace.clone(),
            self.lease_name(),
            self.identity.clone(),
            self.interval * 3,
            self.interval,
        );
        let api: Api<QisSubject> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut written: HashMap<String, Consensus> = HashMap::new();
        let recorder = kube::runtime::events::Recorder::new(
            self.client.clone(),
            kube::runtime::events::Reporter {
                controller: "qis-agent".into(),
                instance: Some(self.identity.clone()),
            },
        );
        let mut announcer = Announcer::new(recorder, api.clone(), self.event_gap);
        let mut tick = tokio::time::interval(self.interval);
        let mut holding = false;
        let mut unfit_ticks = 0u32;
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    metrics.consensus.set_exporting(false);
                    if holding && let Err(e) = lock.release(&self.client).await {
                        tracing::warn!(error = %e, "cannot release the reporter lease");
                    }
                    return;
                }
                _ = tick.tick() => {}
            }
            // Unfit on two ticks running: a NATS reconnect or a rebind is no reason to hand
            // the lease over (every handover rewrites every subject's status).
            unfit_ticks = if self.fit(&views) { 0 } else { unfit_ticks + 1 };
            if unfit_ticks > 0 {
                if holding && unfit_ticks >= 2 {
                    tracing::info!(
                        "no NATS connection or no subject bound: giving the reporter lease up"
                    );
                    metrics.consensus.set_exporting(false);
                    match lock.release(&self.client).await {
                        Ok(()) => holding = false,
                        Err(e) => tracing::warn!(error = %e, "cannot release the reporter lease"),
                    }
                    written.clear();
                    announcer.forget();
                }
                continue;
            }
            let attempted = tokio::time::Instant::now();
            match lock.try_once(&self.client).await {
                Ok(Attempt::Held) => {
                    holding = true;
                    metrics.consensus.set_exporting(true);
                }
                Ok(Attempt::HeldByOther(_)) => {
                    holding = false;
                    metrics.consensus.set_exporting(false);
                    written.clear();
                    announcer.forget();
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
                    // A flip held back by the Event gap is announced once the gap has passed.
                    bounded(lock.deadline(), announcer.announce(&name, &c)).await;
                    continue;
                }
                // Writes stop before the lease could have passed to another agent.
                if attempted.elapsed() + lock.deadline() >= lock.lease_duration {
                    break;
                }
                if !written.contains_key(&name) {
                    bounded(lock.deadline(), announcer.seed(&name)).await;
                }
                let mut stamped = c.clone();
                stamped.updated_at = k8s_openapi::jiff::Timestamp::now().to_string();
                let patch = json!({"apiVersion": "qis.dev/v1alpha1", "kind": "QisSubject", "status": {"consensus": stamped}});
                let params = PatchParams::apply(AGENT_FIELD_MANAGER).force();
                let patch = Patch::Apply(&patch);
                let write = api.patch_status(&name, &params, &patch);
                match tokio::time::timeout(lock.deadline(), write).await {
                    Ok(Ok(_)) => {
                        metrics.status_writes.inc();
                        bounded(lock.deadline(), announcer.announce(&name, &c)).await;
                        written.insert(name, c);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(subject = %name, error = %e, "cannot write consensus")
                    }
                    Err(_) => {
                        tracing::warn!(subject = %name, "the API server did not answer a consensus write in time");
                        break;
                    }
                }
            }
        }
    }
}

/// Runs `f` for at most `limit` (an API call of the reporter must not outlast its lease).
async fn bounded<T>(limit: Duration, f: impl std::future::Future<Output = T>) {
    if tokio::time::timeout(limit, f).await.is_err() {
        tracing::warn!("the API server did not answer in time");
    }
}
