//! The fixture every scenario of this binary stands on: a namespace of its own on the shared
//! control plane, a nats-server and the operator binary running as its ServiceAccount under the
//! chart's ClusterRole ([`Cluster`]); the shared and per-test node agents where agent pods run;
//! and the waits, builders and probes the scenarios share.

use async_nats::jetstream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use qis_crds::{QisSubject, QisSubjectSpec, QisSwarm, QisSwarmSpec, SiteSpec, SwarmRef};
use qis_nodeagent::{NodeAgent, NodeAgentConfig, NodeSpec};
use qis_testkit::NatsServer;
use qis_testkit::controlplane::{ControlPlane, DumpOnFailure};
use qis_testkit::http::Http;
use qis_testkit::metrics::Metrics;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Real agent pods must become Ready for most conditions: room for a loaded 2-core machine.
pub(crate) const WAIT: Duration = Duration::from_secs(60);
/// For what the garbage collector does: it picks up new kinds at its 30 s discovery resync.
pub(crate) const GC_WAIT: Duration = Duration::from_secs(120);

/// The operator's identity in this test binary: the ServiceAccount, ClusterRole and binding
/// `helm template` renders, installed once; every operator here runs as it, under real RBAC.
pub(crate) fn operator_identity() -> &'static (PathBuf, String) {
    static ID: OnceLock<(PathBuf, String)> = OnceLock::new();
    ID.get_or_init(|| {
        let cp = ControlPlane::shared();
        cp.operator_identity("qis-operator", "qis-system", &[], &cp.dir)
    })
}

/// The node agent of this test binary (`qis-nodeagent`, in place of a kubelet): two Nodes
/// without site labels, where the agent pods of explicit sites are scheduled, each container
/// run as a real `qis-agent` process under its pod's ServiceAccount. It stops when this
/// process exits (it watches its standard input).
pub(crate) fn shared_nodes() {
    static NODES: OnceLock<Mutex<(Child, ChildStdin, tempfile::TempDir)>> = OnceLock::new();
    NODES.get_or_init(|| {
        let cp = ControlPlane::shared();
        let work = tempfile::tempdir().expect("tmp");
        let log = std::fs::File::create(work.path().join("nodeagent.log")).expect("log");
        let mut child = Command::new(qis_testkit::workspace_binary("qis-nodeagent"))
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(["--node", "pool-1:qis.dev/pool=shared"])
            .args(["--node", "pool-2:qis.dev/pool=shared"])
            .arg("--binary")
            .arg(qis_testkit::workspace_binary("qis-agent"))
            .arg("--work-dir")
            .arg(work.path())
            .arg("--exit-on-stdin-eof")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("qis-nodeagent");
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("node agent output");
        assert!(line.contains("pool-1"), "node agent up: {line:?}");
        Mutex::new((child, stdin, work))
    });
}

/// A node agent of one test's own: Nodes with `labels` (each `name:key=value,…`), tainted
/// `qis.dev/test=<namespace>:NoSchedule` so that only pods tolerating it ([`test_toleration`])
/// land there, not those of other tests.
pub(crate) async fn own_nodes(c: &Cluster, nodes: &[(&str, &[&str])]) -> NodeAgent {
    let work = c.dir.path().join("nodes");
    NodeAgent::start(NodeAgentConfig {
        kubeconfig: ControlPlane::shared().kubeconfig.clone(),
        nodes: nodes
            .iter()
            .map(|(name, labels)| {
                NodeSpec::new(&c.node_name(name), labels).taint(
                    "qis.dev/test",
                    Some(&c.ns),
                    "NoSchedule",
                )
            })
            .collect(),
        default_binary: qis_testkit::workspace_binary("qis-agent"),
        work_dir: work,
        ..Default::default()
    })
    .await
    .expect("node agent")
}

/// Tolerates the taint of [`own_nodes`].
pub(crate) fn test_toleration(c: &Cluster) -> k8s_openapi::api::core::v1::Toleration {
    k8s_openapi::api::core::v1::Toleration {
        key: Some("qis.dev/test".into()),
        operator: Some("Equal".into()),
        value: Some(c.ns.clone()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }
}

/// A namespace of its own on the shared control plane, a nats-server and the operator binary
/// (watching that namespace), torn down on drop; the control plane's state is printed when the
/// test fails.
pub(crate) struct Cluster {
    pub(crate) nats: NatsServer,
    pub(crate) client: Client,
    pub(crate) operator: Child,
    /// Port of the operator's /metrics.
    pub(crate) port: u16,
    pub(crate) dir: tempfile::TempDir,
    /// This test's namespace.
    pub(crate) ns: String,
    _dump: DumpOnFailure<'static>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.operator.kill();
        let _ = self.operator.wait();
    }
}

/// A namespace name no other test of this binary has.
pub(crate) fn fresh_namespace() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("factory{}", N.fetch_add(1, Ordering::Relaxed))
}

/// An admin client of the shared control plane.
pub(crate) async fn admin_client() -> Client {
    let cp = ControlPlane::shared();
    let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

impl Cluster {
    pub(crate) async fn start() -> Cluster {
        let nats = NatsServer::start();
        let cp = ControlPlane::shared();
        let ns = fresh_namespace();
        cp.namespace(&ns, &[]);
        operator_identity();
        shared_nodes();
        let dir = tempfile::tempdir().expect("tmp");
        let client = admin_client().await;
        let port = qis_testkit::free_port();
        let operator = spawn_operator(dir.path(), &ns, &nats.url(), port, &[]);
        Cluster {
            nats,
            client,
            operator,
            port,
            dir,
            _dump: DumpOnFailure {
                cp,
                namespace: ns.clone(),
            },
            ns,
        }
    }

    pub(crate) fn swarms(&self) -> Api<QisSwarm> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub(crate) fn subjects(&self) -> Api<QisSubject> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The stream of swarm `name` in this test's namespace.
    pub(crate) fn stream(&self, name: &str) -> String {
        qis_crds::addressing::stream_name(&self.ns, name)
    }

    /// The default subject prefix of swarm `name` in this test's namespace.
    pub(crate) fn prefix(&self, name: &str) -> String {
        qis_crds::addressing::default_prefix(&self.ns, name)
    }

    /// The node label this test's swarms discover sites by: Nodes are cluster-wide, and a
    /// label other tests' Nodes carry would add their sites to this test's swarms.
    pub(crate) fn site_label(&self) -> String {
        format!("qis.dev/site-{}", self.ns)
    }

    /// A cluster-scoped name (a Node) no other test uses.
    pub(crate) fn node_name(&self, name: &str) -> String {
        format!("{}-{name}", self.ns)
    }

    /// Stops the operator (SIGKILL) and starts another with `extra` flags.
    pub(crate) fn restart_operator(&mut self, extra: &[&str]) {
        let _ = self.operator.kill();
        let _ = self.operator.wait();
        self.operator = spawn_operator(
            self.dir.path(),
            &self.ns,
            &self.nats.url(),
            qis_testkit::free_port(),
            extra,
        );
    }

    /// Creates swarm `name` (default settings, these `sites`) and waits until it is Ready.
    pub(crate) async fn ready_swarm(&self, name: &str, sites: &[&str]) {
        self.swarms()
            .create(&PostParams::default(), &swarm(name, None, sites))
            .await
            .expect("swarm");
        swarm_condition(self, name, "Ready", "True", None).await;
    }

    pub(crate) async fn js(&self) -> jetstream::Context {
        let mut js = jetstream::new(async_nats::connect(self.nats.url()).await.expect("nats"));
        js.set_timeout(Duration::from_secs(2));
        js
    }
}

/// Starts the operator binary as its ServiceAccount, watching namespace `ns` (its Lease there
/// too).
pub(crate) fn spawn_operator(
    dir: &std::path::Path,
    ns: &str,
    nats_url: &str,
    port: u16,
    extra: &[&str],
) -> Child {
    spawn_operator_as(&operator_identity().0, dir, ns, nats_url, port, extra)
}

/// [`spawn_operator`] as the identity of `kubeconfig`.
pub(crate) fn spawn_operator_as(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    ns: &str,
    nats_url: &str,
    port: u16,
    extra: &[&str],
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_qis-operator"))
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn,qis_operator=info")
        .env("QIS_WATCH_NAMESPACE", ns)
        .env("POD_NAMESPACE", ns)
        // The tests' defaults, unless `extra` sets the flag itself.
        .args(
            [
                ("--nats-url", nats_url),
                ("--resync", "2s"),
                ("--deletion-timeout", "3s"),
                ("--nats-timeout", "1s"),
            ]
            .into_iter()
            .filter(|(flag, _)| !extra.contains(flag))
            .flat_map(|(flag, value)| [flag, value]),
        )
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--scratch-dir")
        .arg(dir.join(format!("scratch-{port}")))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("QIS_TEST_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("operator binary")
}

/// Polls `f` until it returns `Some`, or fails the test after `WAIT` saying what it waited for.
pub(crate) async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    qis_testkit::eventually(what, WAIT, f).await
}

pub(crate) fn condition<'a>(
    conds: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conds.iter().find(|c| c.type_ == t)
}

/// Waits until the swarm's condition `t` has `status` (and `reason`, when given).
/// Waits until the object's condition `t` has `status` (and `reason`, when given).
pub(crate) async fn wait_condition<K>(
    api: Api<K>,
    name: &str,
    t: &str,
    status: &str,
    reason: Option<&str>,
    conditions: fn(&K) -> Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>,
) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} {t}={status} {reason:?}"), || {
        let api = api.clone();
        async move {
            let o = api.get_opt(name).await.ok()??;
            let cond = condition(conditions(&o)?, t)?;
            (cond.status == status && reason.is_none_or(|r| cond.reason == r)).then_some(o.clone())
        }
    })
    .await
}

pub(crate) async fn swarm_condition(
    c: &Cluster,
    name: &str,
    t: &str,
    status: &str,
    reason: Option<&str>,
) -> QisSwarm {
    wait_condition(c.swarms(), name, t, status, reason, |s: &QisSwarm| {
        s.status.as_ref().map(|st| st.conditions.as_slice())
    })
    .await
}

pub(crate) async fn subject_condition(
    c: &Cluster,
    name: &str,
    t: &str,
    status: &str,
    reason: Option<&str>,
) -> QisSubject {
    wait_condition(c.subjects(), name, t, status, reason, |s: &QisSubject| {
        s.status.as_ref().map(|st| st.conditions.as_slice())
    })
    .await
}

pub(crate) fn swarm(name: &str, prefix: Option<&str>, sites: &[&str]) -> QisSwarm {
    let spec = QisSwarmSpec {
        subject_prefix: prefix.map(Into::into),
        sites: sites
            .iter()
            .map(|s| SiteSpec {
                name: (*s).into(),
                replicas: 1,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    QisSwarm::new(name, spec)
}

pub(crate) fn subject(name: &str, swarm: &str, problem_class: &str) -> QisSubject {
    QisSubject::new(
        name,
        QisSubjectSpec {
            swarm_ref: SwarmRef { name: swarm.into() },
            domain: "predictive-maintenance".into(),
            problem_class: Some(problem_class.into()),
            ..Default::default()
        },
    )
}

/// The durable consumers of `stream` (`<subject>_<site>`, the operator's), sorted; the
/// agents' short-lived ordered consumers (window rebuilds, standby followers) left out.
/// A listing that failed part way (a page request timed out on a loaded machine) is taken
/// again, up to five times, rather than returned short.
pub(crate) async fn consumer_names(js: &jetstream::Context, stream: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for _ in 0..5 {
        let Ok(s) = js.get_stream(stream).await else {
            return vec![];
        };
        let listed: Vec<Result<String, _>> = s.consumer_names().collect().await;
        if listed.iter().all(Result::is_ok) {
            names = listed
                .into_iter()
                .flatten()
                .filter(|n| n.contains('_'))
                .collect();
            break;
        }
    }
    names.sort();
    names
}

pub(crate) async fn events_with_reason(c: &Cluster, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(c.client.clone(), &c.ns)
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .collect()
        })
        .unwrap_or_default()
}

/// Does the namespaced object exist?
pub(crate) async fn exists<K>(c: &Cluster, name: &str) -> bool
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(c.client.clone(), &c.ns)
        .get_opt(name)
        .await
        .expect("get")
        .is_some()
}

/// The operator's Prometheus exposition on `port`, `None` when it did not answer.
pub(crate) async fn metrics(port: u16) -> Option<Metrics> {
    Http::local(port).metrics().await
}

/// The value of the operator's metric `name` on `port` (summed over its labels), `None` when
/// the operator did not answer or does not have it.
pub(crate) async fn metric(port: u16, name: &str) -> Option<f64> {
    metrics(port).await?.value(name)
}

/// Whether the operator on `port` answers 200 at `path` (`/readyz`, `/healthz`).
pub(crate) async fn answers_ok(port: u16, path: &str) -> bool {
    Http::local(port).get(path).await.status == 200
}

/// Whether the claim is gone or deleted and held only by `kubernetes.io/pvc-protection` (its
/// admission plugin runs here, its controller, which lets go once no pod mounts the claim,
/// does not).
pub(crate) async fn claim_deleted(c: &Cluster, name: &str) -> bool {
    match Api::<PersistentVolumeClaim>::namespaced(c.client.clone(), &c.ns)
        .get_opt(name)
        .await
        .expect("get")
    {
        None => true,
        Some(p) => {
            p.metadata.deletion_timestamp.is_some()
                && p.metadata
                    .finalizers
                    .unwrap_or_default()
                    .iter()
                    .all(|f| f == "kubernetes.io/pvc-protection")
        }
    }
}

/// Outbox claims of `size` (storage class left to the cluster).
pub(crate) fn outbox_claims_of(size: &str) -> qis_crds::Persistence {
    qis_crds::Persistence {
        type_: qis_crds::PersistenceType::PersistentVolumeClaim,
        storage_class_name: None,
        size: Some(size.into()),
    }
}
