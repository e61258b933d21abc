//! What every reconcile shares: the API client, NATS connections, settings, events, metrics,
//! and the per-object failure counts that pace retries.

use crate::metrics::Metrics;
use crate::nats_connections::{Pool, Settings};
use crate::workload::Defaults;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use qis_crds::QisSwarm;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Settings of the operator (from flags and environment).
#[derive(Debug, Clone)]
pub struct Config {
    /// Connection for swarms that name none (url, credentials, TLS, domain).
    pub default_nats: Settings,
    /// Defaults of the agent workload.
    pub defaults: Defaults,
    /// Every object is looked at again this often (drift revert, live stream state).
    pub resync: Duration,
    /// How long deletion keeps retrying an unreachable NATS before giving up on it.
    pub deletion_timeout: Duration,
    /// Bound on connecting to NATS and on each JetStream request.
    pub nats_timeout: Duration,
    /// Where TLS material is written for the NATS client.
    pub scratch_dir: std::path::PathBuf,
    /// Sites may be discovered from node labels (the operator may read Nodes).
    pub site_discovery: bool,
}

/// Shared by all reconciles.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub config: Arc<Config>,
    pub pool: Arc<Pool>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// What server-side apply wrote last (to skip writes that change nothing).
    pub applied: Arc<crate::apply::LastApplied>,
    failures: Arc<Mutex<HashMap<String, u32>>>,
    /// Every swarm, kept by the watch that wakes subjects (see `run`); a swarm that does not
    /// deserialize is kept as such, so it cannot keep the cache from listing the others.
    swarms: Store<DeserializeGuard<QisSwarm>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        instance: Option<String>,
        swarms: Store<DeserializeGuard<QisSwarm>>,
    ) -> Context {
        let reporter = Reporter {
            controller: "qis-operator".into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            pool: Pool::new(config.nats_timeout, config.scratch_dir.clone()),
            client,
            config: Arc::new(config),
            metrics,
            applied: Arc::default(),
            failures: Arc::default(),
            swarms,
        }
    }

    /// A swarm from the cache, once the cache has listed them all: `Ok(None)` when there is no
    /// such swarm, `Err` with the parser's message when it does not deserialize.
    pub async fn swarm(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<QisSwarm>>, String> {
        // Fails only when the watch that fills the store is gone (the controller stops).
        if self.swarms.wait_until_ready().await.is_err() {
            return Ok(None);
        }
        match self.swarms.get(&ObjectRef::new(name).within(namespace)) {
            None => Ok(None),
            Some(guard) => match &guard.0 {
                Ok(swarm) => Ok(Some(Arc::new(swarm.clone()))),
                Err(invalid) => Err(invalid.error.clone()),
            },
        }
    }

    /// Records an event; a failure to record is logged, never fatal.
    pub async fn event(
        &self,
        reference: &ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(error = %e, reason, "could not record event");
        }
    }

    /// One more failure of `key`; returns how many in a row.
    pub fn failed(&self, key: &str) -> u32 {
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = f.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    }

    /// `key` succeeded: the next failure starts the backoff again.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}
