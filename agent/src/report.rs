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
        let mut tick = tokio::time::interval(self.interval);
        let mut round = Rounds::new(&self, metrics);
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    round.release_if_held(&self.client).await;
                    return;
                }
                _ = tick.tick() => {}
            }
            round.once(&self, &views).await;
        }
    }

    /// The status form of every subject with a snapshot, by subject name.
    fn current(&self, views: &Views) -> Vec<(String, Consensus)> {
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
    }
}

/// How one consensus write ended.
enum Written {
    Done,
    Failed,
    /// The API server did not answer in time: no more writes this round.
    TimedOut,
}

/// The reporter's state across rounds: the lease, whether it is held, what was written.
struct Rounds {
    lock: LeaseLock,
    subjects: Api<QisSubject>,
    metrics: Arc<Metrics>,
    /// The consensus last written per subject (while holding the lease).
    written: HashMap<String, Consensus>,
    holding: bool,
    /// Ticks running on which this agent could not report.
    unfit_ticks: u32,
    /// The alert Events of the subjects written while holding the lease.
    announcer: Announcer,
}

impl Rounds {
    fn new(reporter: &Reporter, metrics: Arc<Metrics>) -> Rounds {
        let subjects: Api<QisSubject> =
            Api::namespaced(reporter.client.clone(), &reporter.namespace);
        let recorder = kube::runtime::events::Recorder::new(
            reporter.client.clone(),
            kube::runtime::events::Reporter {
                controller: "qis-agent".into(),
                instance: Some(reporter.identity.clone()),
            },
        );
        Rounds {
            lock: LeaseLock::new(
                reporter.namespace.clone(),
                reporter.lease_name(),
                reporter.identity.clone(),
                reporter.interval * 3,
                reporter.interval,
            ),
            subjects: subjects.clone(),
            metrics,
            written: HashMap::new(),
            holding: false,
            unfit_ticks: 0,
            announcer: Announcer::new(recorder, subjects, reporter.event_gap),
        }
    }

    /// One report interval: hand the lease over if unfit, else take or renew it and write the
    /// subjects whose consensus changed.
    async fn once(&mut self, reporter: &Reporter, views: &Views) {
        // Unfit on two ticks running: a NATS reconnect or a rebind is no reason to hand
        // the lease over (every handover rewrites every subject's status).
        self.unfit_ticks = if reporter.fit(views) {
            0
        } else {
            self.unfit_ticks + 1
        };
        if self.unfit_ticks > 0 {
            if self.holding && self.unfit_ticks >= 2 {
                tracing::info!(
                    "no NATS connection or no subject bound: giving the reporter lease up"
                );
                self.release_if_held(&reporter.client).await;
                self.forget();
            }
            return;
        }
        let attempted = tokio::time::Instant::now();
        if self.hold(&reporter.client).await {
            self.write_changed(reporter.current(views), attempted).await;
        }
    }

    /// Takes or renews the lease; whether this agent holds it.
    async fn hold(&mut self, client: &Client) -> bool {
        match self.lock.try_once(client).await {
            Ok(Attempt::Held) => {
                self.holding = true;
                self.metrics.consensus.set_exporting(true);
            }
            Ok(Attempt::HeldByOther(_)) => {
                self.holding = false;
                self.forget();
            }
            Err(e) => {
                tracing::debug!(error = %e, "reporter lease");
                return false;
            }
        }
        self.holding
    }

    /// Another agent reports (or none): this one exports no consensus gauges and will seed
    /// its Events from the status again when it next holds the lease.
    fn forget(&mut self) {
        self.metrics.consensus.set_exporting(false);
        self.written.clear();
        self.announcer.forget();
    }

    async fn release_if_held(&mut self, client: &Client) {
        self.metrics.consensus.set_exporting(false);
        if !self.holding {
            return;
        }
        match self.lock.release(client).await {
            Ok(()) => self.holding = false,
            Err(e) => tracing::warn!(error = %e, "cannot release the reporter lease"),
        }
    }

    /// Writes every subject whose consensus changed, stopping before the lease taken at
    /// `attempted` could have passed to another agent.
    async fn write_changed(
        &mut self,
        current: Vec<(String, Consensus)>,
        attempted: tokio::time::Instant,
    ) {
        for (name, c) in current {
            let deadline = self.lock.deadline();
            if self.written.get(&name) == Some(&c) {
                // A flip held back by the Event gap is announced once the gap has passed.
                bounded(deadline, self.announcer.announce(&name, &c)).await;
                continue;
            }
            if attempted.elapsed() + deadline >= self.lock.lease_duration {
                break;
            }
            if !self.written.contains_key(&name) {
                bounded(deadline, self.announcer.seed(&name)).await;
            }
            match self.write(&name, &c).await {
                Written::Done => {
                    self.metrics.status_writes.inc();
                    bounded(deadline, self.announcer.announce(&name, &c)).await;
                    self.written.insert(name, c);
                }
                Written::Failed => {}
                Written::TimedOut => break,
            }
        }
    }

    /// Writes one subject's consensus, stamped now, with the agent's field manager.
    async fn write(&self, name: &str, c: &Consensus) -> Written {
        let mut stamped = c.clone();
        stamped.updated_at = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = json!({"apiVersion": "qis.dev/v1alpha1", "kind": "QisSubject", "status": {"consensus": stamped}});
        let params = PatchParams::apply(AGENT_FIELD_MANAGER).force();
        let patch = Patch::Apply(&patch);
        let write = self.subjects.patch_status(name, &params, &patch);
        match tokio::time::timeout(self.lock.deadline(), write).await {
            Ok(Ok(_)) => Written::Done,
            Ok(Err(e)) => {
                tracing::warn!(subject = %name, error = %e, "cannot write consensus");
                Written::Failed
            }
            Err(_) => {
                tracing::warn!(subject = %name, "the API server did not answer a consensus write in time");
                Written::TimedOut
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
