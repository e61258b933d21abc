//! A node agent in place of a kubelet, for tests against a real control plane that has no
//! kubelet and no container runtime.
//!
//! [`NodeAgent::start`] registers the Nodes it is given (Ready, with capacity, so the real
//! scheduler binds pods to them), keeps their heartbeat fresh, and runs every container of
//! every Pod bound to one of them as a local process: the image picks the executable
//! ([`NodeAgentConfig::images`], else [`NodeAgentConfig::default_binary`]), command and args
//! are its arguments, the environment is resolved as the kubelet does (values, fieldRefs,
//! Secret and ConfigMap keys), volumes are materialized as files under
//! `<work_dir>/pods/<pod-uid>/volumes/<volume>`, and the projected ServiceAccount token comes
//! from the TokenRequest API, so the process talks to the API server as its ServiceAccount.
//!
//! A process cannot see absolute mount paths, so environment values (and arguments) that name
//! a mount path are rewritten to the materialized directory; `KUBECONFIG` points at a
//! kubeconfig per pod (the control plane's address, the namespace's `kube-root-ca.crt`, the
//! projected token as `tokenFile`); `QIS_LISTEN=127.0.0.1:<port>` gives each pod its own
//! loopback port, recorded as the annotation [`PORT_ANNOTATION`]. Probes go to that port.
//! Pod status (phase, IPs, conditions, container statuses) is written through `pods/status`;
//! exited processes restart with a capped backoff; a deleted Pod's processes get SIGTERM, then
//! SIGKILL after the grace period (at most 10 s), and the Pod is deleted with grace 0.

mod env;
mod nodes;
mod pods;
mod probes;
mod runtime;
mod volumes;

use k8s_openapi::api::core::v1::Taint;
use kube::Client;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The annotation that records the loopback port of a pod's (first) container.
pub const PORT_ANNOTATION: &str = "nodeagent.qis.dev/port";
/// The field manager of everything the node agent writes.
pub const FIELD_MANAGER: &str = "qis-nodeagent";

/// What goes wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// A Node to register.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    pub name: String,
    /// Labels besides `kubernetes.io/hostname`, `kubernetes.io/os` and `kubernetes.io/arch`.
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl NodeSpec {
    /// A Node with `labels` given as `key=value`.
    pub fn new(name: &str, labels: &[&str]) -> NodeSpec {
        NodeSpec {
            name: name.to_owned(),
            labels: labels
                .iter()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            taints: Vec::new(),
        }
    }

    /// Adds a taint (`effect` is `NoSchedule`, `PreferNoSchedule` or `NoExecute`).
    pub fn taint(mut self, key: &str, value: Option<&str>, effect: &str) -> NodeSpec {
        self.taints.push(Taint {
            key: key.to_owned(),
            value: value.map(str::to_owned),
            effect: effect.to_owned(),
            time_added: None,
        });
        self
    }
}

/// What the node agent runs and where.
#[derive(Debug, Clone, Default)]
pub struct NodeAgentConfig {
    /// The node agent's own credentials (it reads Secrets and ConfigMaps of its pods, requests
    /// their tokens, writes Node and Pod status).
    pub kubeconfig: PathBuf,
    pub nodes: Vec<NodeSpec>,
    /// The executable of containers whose image is not in `images`.
    pub default_binary: PathBuf,
    /// Image → executable.
    pub images: BTreeMap<String, PathBuf>,
    /// Pod directories (`pods/<uid>/…`) and logs (`pods/<namespace>_<pod>/<container>.log`).
    pub work_dir: PathBuf,
    /// Set in every container's environment, after the pod's own variables.
    pub extra_env: Vec<(String, String)>,
}

/// What the node agent knows of one running pod (for the test helpers).
#[derive(Debug, Default, Clone)]
pub(crate) struct PodRecord {
    pub uid: String,
    pub port: u16,
    /// Container → pid of its live process.
    pub pids: BTreeMap<String, u32>,
}

pub(crate) type Registry = Arc<Mutex<BTreeMap<(String, String), PodRecord>>>;

pub(crate) fn lock(r: &Registry) -> MutexGuard<'_, BTreeMap<(String, String), PodRecord>> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends `signal` (`TERM`, `KILL`) with `kill(1)` to the process group of `pid`: each
/// container process leads its own group, so whatever it started gets the signal too (as the
/// kubelet's runtime stops a container's whole cgroup).
pub(crate) fn signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pid}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// What the node agent's tasks share.
pub(crate) struct Ctx {
    pub client: Client,
    pub config: NodeAgentConfig,
    pub node_names: BTreeSet<String>,
    /// The API server's address as the pods' kubeconfig names it.
    pub server: String,
    pub registry: Registry,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("config", &self.config)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A running node agent. Dropping it kills every process it started.
#[derive(Debug)]
pub struct NodeAgent {
    ctx: Arc<Ctx>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeAgent {
    /// Registers the Nodes (creating or updating them; nothing is deleted) and starts running
    /// the pods bound to them.
    pub async fn start(config: NodeAgentConfig) -> Result<NodeAgent, Error> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&config.kubeconfig)?;
        let kc = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        let server = kc.cluster_url.to_string().trim_end_matches('/').to_owned();
        let client = Client::try_from(kc)?;
        if config.nodes.is_empty() {
            return Err(Error::Invalid("no nodes given".to_owned()));
        }
        std::fs::create_dir_all(config.work_dir.join("pods"))
            .map_err(Error::io(config.work_dir.join("pods")))?;
        let ctx = Arc::new(Ctx {
            client,
            node_names: config.nodes.iter().map(|n| n.name.clone()).collect(),
            config,
            server,
            registry: Registry::default(),
        });
        for node in &ctx.config.nodes {
            nodes::register(&ctx.client, node).await?;
        }
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(nodes::heartbeat(ctx.clone(), Duration::from_secs(10))),
            tokio::spawn(pods::run(ctx.clone(), stop_rx)),
        ];
        Ok(NodeAgent { ctx, stop, tasks })
    }

    /// The names of the Nodes this agent serves.
    pub fn nodes(&self) -> Vec<String> {
        self.ctx.node_names.iter().cloned().collect()
    }

    /// The loopback port of pod `namespace/pod` (its first container's `QIS_LISTEN`).
    pub fn pod_port(&self, namespace: &str, pod: &str) -> Option<u16> {
        lock(&self.ctx.registry)
            .get(&(namespace.to_owned(), pod.to_owned()))
            .map(|r| r.port)
    }

    /// The pods with at least one live process, as `(namespace, pod)`.
    pub fn running(&self) -> Vec<(String, String)> {
        lock(&self.ctx.registry)
            .iter()
            .filter(|(_, r)| !r.pids.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The pids of the live processes of `namespace/pod`, by container.
    pub fn pids(&self, namespace: &str, pod: &str) -> BTreeMap<String, u32> {
        lock(&self.ctx.registry)
            .get(&(namespace.to_owned(), pod.to_owned()))
            .map(|r| r.pids.clone())
            .unwrap_or_default()
    }

    /// SIGKILLs the processes of `namespace/pod` (a crash, for fault tests); they are
    /// restarted as the restart policy says. False when there was none.
    pub fn kill_process(&self, namespace: &str, pod: &str) -> bool {
        let pids = self.pids(namespace, pod);
        !pids.is_empty() && pids.values().all(|pid| signal(*pid, "KILL"))
    }

    /// Stops: kills every process and ends the watches. The Nodes stay registered.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    /// Stops, then deletes the Nodes it registered.
    pub async fn stop_and_remove_nodes(mut self) -> Result<(), Error> {
        self.shutdown().await;
        for name in &self.ctx.node_names {
            nodes::remove(&self.ctx.client, name).await?;
        }
        Ok(())
    }

    async fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        // The pod task kills its children and returns; the heartbeat has nothing to finish.
        if let Some(heartbeat) = self.tasks.first() {
            heartbeat.abort();
        }
        for task in self.tasks.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.kill_all();
    }

    fn kill_all(&self) {
        let pids: Vec<u32> = lock(&self.ctx.registry)
            .values()
            .flat_map(|r| r.pids.values().copied())
            .collect();
        for pid in pids {
            signal(pid, "KILL");
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        // Synchronously, so that no process outlives a test whose runtime is going away; the
        // aborted tasks then drop their `Child`ren (kill_on_drop) and tokio reaps them.
        self.kill_all();
        for t in &self.tasks {
            t.abort();
        }
    }
}
