//! The real operator binary against the real control plane (kube-apiserver with RBAC and
//! admission, controller manager, scheduler; `qis_testkit::controlplane`) and a real
//! nats-server: each test is one scenario of the operator issue, end to end, in a namespace of
//! its own, the operator running as its ServiceAccount under the ClusterRole the chart renders.

use async_nats::jetstream;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use qis_crds::{
    DeletionPolicy, QisSubject, QisSubjectSpec, QisSwarm, QisSwarmSpec, SiteSpec, SwarmRef,
};
use qis_nodeagent::{NodeAgent, NodeAgentConfig, NodeSpec};
use qis_testkit::NatsServer;
use qis_testkit::controlplane::{ControlPlane, DumpOnFailure};
use serde_json::json;
use std::path::PathBuf;
use std::process::ChildStdin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Real agent pods must become Ready for most conditions: room for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);
/// For what the garbage collector does: it picks up new kinds at its 30 s discovery resync.
const GC_WAIT: Duration = Duration::from_secs(120);

/// The operator's identity in this test binary: the ServiceAccount, ClusterRole and binding
/// `helm template` renders, installed once; every operator here runs as it, under real RBAC.
fn operator_identity() -> &'static (PathBuf, String) {
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
fn shared_nodes() {
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
async fn own_nodes(c: &Cluster, nodes: &[(&str, &[&str])]) -> NodeAgent {
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
fn test_toleration(c: &Cluster) -> k8s_openapi::api::core::v1::Toleration {
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
struct Cluster {
    nats: NatsServer,
    client: Client,
    operator: Child,
    /// Port of the operator's /metrics.
    port: u16,
    dir: tempfile::TempDir,
    /// This test's namespace.
    ns: String,
    _dump: DumpOnFailure<'static>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.operator.kill();
        let _ = self.operator.wait();
    }
}

/// A namespace name no other test of this binary has.
fn fresh_namespace() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("factory{}", N.fetch_add(1, Ordering::Relaxed))
}

/// An admin client of the shared control plane.
async fn admin_client() -> Client {
    let cp = ControlPlane::shared();
    let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

impl Cluster {
    async fn start() -> Cluster {
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

    fn swarms(&self) -> Api<QisSwarm> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn subjects(&self) -> Api<QisSubject> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The stream of swarm `name` in this test's namespace.
    fn stream(&self, name: &str) -> String {
        qis_crds::addressing::stream_name(&self.ns, name)
    }

    /// The default subject prefix of swarm `name` in this test's namespace.
    fn prefix(&self, name: &str) -> String {
        qis_crds::addressing::default_prefix(&self.ns, name)
    }

    /// The node label this test's swarms discover sites by: Nodes are cluster-wide, and a
    /// label other tests' Nodes carry would add their sites to this test's swarms.
    fn site_label(&self) -> String {
        format!("qis.dev/site-{}", self.ns)
    }

    /// A cluster-scoped name (a Node) no other test uses.
    fn node_name(&self, name: &str) -> String {
        format!("{}-{name}", self.ns)
    }

    /// Stops the operator (SIGKILL) and starts another with `extra` flags.
    fn restart_operator(&mut self, extra: &[&str]) {
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

    async fn js(&self) -> jetstream::Context {
        let mut js = jetstream::new(async_nats::connect(self.nats.url()).await.expect("nats"));
        js.set_timeout(Duration::from_secs(2));
        js
    }
}

/// Starts the operator binary as its ServiceAccount, watching namespace `ns` (its Lease there
/// too).
fn spawn_operator(
    dir: &std::path::Path,
    ns: &str,
    nats_url: &str,
    port: u16,
    extra: &[&str],
) -> Child {
    spawn_operator_as(&operator_identity().0, dir, ns, nats_url, port, extra)
}

/// [`spawn_operator`] as the identity of `kubeconfig`.
fn spawn_operator_as(
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

/// Status code of `GET path` on 127.0.0.1:`port`, `None` when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `f` until it returns `Some`, or fails the test after `WAIT` saying what it waited for.
async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    qis_testkit::eventually(what, WAIT, f).await
}

fn condition<'a>(
    conds: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conds.iter().find(|c| c.type_ == t)
}

/// Waits until the swarm's condition `t` has `status` (and `reason`, when given).
/// Waits until the object's condition `t` has `status` (and `reason`, when given).
async fn wait_condition<K>(
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

async fn swarm_condition(
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

async fn subject_condition(
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

fn swarm(name: &str, prefix: Option<&str>, sites: &[&str]) -> QisSwarm {
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

fn subject(name: &str, swarm: &str, problem_class: &str) -> QisSubject {
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
async fn consumer_names(js: &jetstream::Context, stream: &str) -> Vec<String> {
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

async fn events_with_reason(c: &Cluster, reason: &str) -> Vec<Event> {
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
async fn exists<K>(c: &Cluster, name: &str) -> bool
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

/// Proves the main path: a swarm with three sites and a subject yield the stream, three
/// per-site consumers on the subject's address, three restricted Deployments, the agents'
/// RBAC, and Ready conditions with observedGeneration.
#[tokio::test]
async fn swarm_and_subject_become_ready() {
    let c = Cluster::start().await;
    let pp = PostParams::default();
    c.swarms()
        .create(
            &pp,
            &swarm("plant", Some("qis.iot"), &["hall-a", "hall-b", "hall-c"]),
        )
        .await
        .expect("swarm");
    c.subjects()
        .create(&pp, &subject("bearing-wear", "plant", "bearing-wear"))
        .await
        .expect("subject");

    let s = swarm_condition(&c, "plant", "Ready", "True", Some("Reconciled")).await;
    let st = s.status.expect("status");
    assert_eq!(st.observed_generation, s.metadata.generation);
    assert_eq!(st.subject_prefix.as_deref(), Some("qis.iot"));
    assert_eq!(
        st.sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["hall-a", "hall-b", "hall-c"]
    );
    assert!(
        s.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"qis.dev/stream".to_owned())
    );

    let sub = subject_condition(&c, "bearing-wear", "Ready", "True", None).await;
    let sst = sub.status.expect("status");
    assert_eq!(
        sst.address.as_deref(),
        Some("qis.iot.predictive-maintenance.bearing-wear")
    );
    assert_eq!(sst.consumers.len(), 3);

    let js = c.js().await;
    let info = js
        .get_stream(&c.stream("plant"))
        .await
        .expect("stream")
        .cached_info()
        .clone();
    assert_eq!(info.config.subjects, ["qis.iot.>"]);
    assert_eq!(
        consumer_names(&js, &c.stream("plant")).await,
        [
            "bearing-wear_hall-a",
            "bearing-wear_hall-b",
            "bearing-wear_hall-c"
        ]
    );
    let consumer = js
        .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
            "bearing-wear_hall-a",
            &c.stream("plant"),
        )
        .await
        .expect("consumer");
    assert_eq!(
        consumer.cached_info().config.filter_subject,
        "qis.iot.predictive-maintenance.bearing-wear"
    );

    let deployments = Api::<Deployment>::namespaced(c.client.clone(), &c.ns)
        .list(&ListParams::default().labels("qis.dev/swarm=plant"))
        .await
        .expect("list");
    assert_eq!(deployments.items.len(), 3);
    let pod = deployments.items[0]
        .spec
        .clone()
        .expect("spec")
        .template
        .spec
        .expect("pod");
    assert_eq!(pod.service_account_name.as_deref(), Some("plant-agent"));
    assert_eq!(
        pod.containers[0]
            .security_context
            .as_ref()
            .and_then(|s| s.allow_privilege_escalation),
        Some(false)
    );
    assert!(
        exists::<ServiceAccount>(&c, "plant-agent").await,
        "agents' ServiceAccount"
    );
    assert!(exists::<Role>(&c, "plant-agent").await, "agents' Role");
    assert!(
        exists::<RoleBinding>(&c, "plant-agent").await,
        "agents' RoleBinding"
    );
}

/// Proves a subject whose swarm does not exist waits with SwarmNotFound and reconciles as
/// soon as the swarm appears.
#[tokio::test]
async fn subject_waits_for_its_swarm() {
    let c = Cluster::start().await;
    let pp = PostParams::default();
    c.subjects()
        .create(&pp, &subject("early", "later", "bearing-wear"))
        .await
        .expect("subject");
    subject_condition(&c, "early", "Ready", "False", Some("SwarmNotFound")).await;
    c.swarms()
        .create(&pp, &swarm("later", None, &[]))
        .await
        .expect("swarm");
    let s = subject_condition(&c, "early", "Ready", "True", None).await;
    assert_eq!(
        s.status.expect("status").consumers[0].name,
        "early_default",
        "the default site"
    );
}

/// Proves invalid input: a spec the schema cannot refuse is InvalidSpec naming the field and
/// does not stall the valid swarm; an object of the wrong shape is refused by the API server.
#[tokio::test]
async fn invalid_specs_are_reported_and_do_not_stall_others() {
    let c = Cluster::start().await;
    let pp = PostParams::default();
    let mut bad = swarm("bad", Some("qis.bad"), &[]);
    bad.spec.stream.duplicate_window = Duration::from_secs(3 * 86400).into();
    c.swarms().create(&pp, &bad).await.expect("create");
    // An object of the wrong shape never reaches the operator: the real API server refuses it
    // against the CRD schema, naming the field.
    let unreadable = json!({"apiVersion": "qis.dev/v1alpha1", "kind": "QisSwarm", "metadata": {"name": "garbled", "namespace": c.ns},
        "spec": {"stream": {"replicas": "three"}}});
    let refused = Api::<kube::api::DynamicObject>::namespaced_with(
        c.client.clone(),
        &c.ns,
        &kube::api::ApiResource::erase::<QisSwarm>(&()),
    )
    .create(&pp, &serde_json::from_value(unreadable).expect("object"))
    .await
    .expect_err("the schema refuses a string replica count");
    assert!(
        refused.to_string().contains("spec.stream.replicas"),
        "{refused}"
    );
    c.swarms()
        .create(&pp, &swarm("good", Some("qis.good"), &[]))
        .await
        .expect("create");

    let s = swarm_condition(&c, "bad", "Ready", "False", Some("InvalidSpec")).await;
    let msg = condition(&s.status.expect("status").conditions, "Ready")
        .expect("ready")
        .message
        .clone();
    assert!(msg.contains("spec.stream.duplicateWindow"), "{msg}");
    swarm_condition(&c, "good", "Ready", "True", None).await;
    let js = c.js().await;
    assert!(
        js.get_stream(&c.stream("bad")).await.is_err(),
        "nothing made for an invalid spec"
    );
}

/// Proves drift revert: a stream edited behind the operator's back is put back at the next
/// resync, with a Drifted event.
#[tokio::test]
async fn drifted_stream_is_put_back() {
    let c = Cluster::start().await;
    c.swarms()
        .create(&PostParams::default(), &swarm("plant", None, &[]))
        .await
        .expect("swarm");
    swarm_condition(&c, "plant", "Ready", "True", None).await;
    let js = c.js().await;
    let mut cfg = js
        .get_stream(&c.stream("plant"))
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    cfg.max_bytes = 4096;
    js.update_stream(&cfg).await.expect("edit");
    let stream = c.stream("plant");
    eventually("max_bytes reverted", || {
        let (js, stream) = (js.clone(), stream.clone());
        async move {
            let info = js.get_stream(&stream).await.ok()?.cached_info().clone();
            (info.config.max_bytes == 50 * 1024 * 1024).then_some(())
        }
    })
    .await;
    eventually("Drifted event", || async {
        (!events_with_reason(&c, "Drifted").await.is_empty()).then_some(())
    })
    .await;
}

/// Proves sites follow the spec: removing a site deletes its Deployment and the subject's
/// consumer of that site.
#[tokio::test]
async fn removed_site_loses_deployment_and_consumers() {
    let c = Cluster::start().await;
    let pp = PostParams::default();
    c.swarms()
        .create(&pp, &swarm("plant", None, &["a", "b", "c"]))
        .await
        .expect("swarm");
    c.subjects()
        .create(&pp, &subject("wear", "plant", "bearing-wear"))
        .await
        .expect("subject");
    subject_condition(&c, "wear", "Ready", "True", None).await;
    let js = c.js().await;
    assert_eq!(consumer_names(&js, &c.stream("plant")).await.len(), 3);

    let patch = json!({"spec": {"sites": [{"name": "a"}, {"name": "b"}]}});
    c.swarms()
        .patch("plant", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let deployments = Api::<Deployment>::namespaced(c.client.clone(), &c.ns);
    eventually("Deployment of site c deleted", || {
        let d = deployments.clone();
        async move {
            d.get_opt("plant-agent-c")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    let stream = c.stream("plant");
    eventually("consumer of site c deleted", || {
        let (js, stream) = (js.clone(), stream.clone());
        async move { (consumer_names(&js, &stream).await == ["wear_a", "wear_b"]).then_some(()) }
    })
    .await;
}

/// Proves one site's failure stays that site's: a ResourceQuota lets the namespace have three
/// Deployments, so adding a fourth site is refused by the API server (403, exceeded quota).
/// The swarm reports the site by name, keeps every site in its status, and no subject loses a
/// consumer at that site or any other. (Before, the status was written without `sites`; under
/// real server-side apply the field went and each subject deleted all its consumers.)
#[tokio::test]
async fn a_failed_site_deletes_no_consumers() {
    let c = Cluster::start().await;
    ControlPlane::shared().kubectl_stdin(
        &["apply", "-n", &c.ns, "-f", "-"],
        Some("apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: three-deployments}\nspec:\n  hard: {count/deployments.apps: \"3\"}\n"),
    );
    let pp = PostParams::default();
    c.swarms()
        .create(&pp, &swarm("plant", None, &["a", "b", "c"]))
        .await
        .expect("swarm");
    c.subjects()
        .create(&pp, &subject("wear", "plant", "bearing-wear"))
        .await
        .expect("subject");
    let js = c.js().await;
    let stream = c.stream("plant");
    eventually("three consumers", || async {
        (consumer_names(&js, &stream).await == ["wear_a", "wear_b", "wear_c"]).then_some(())
    })
    .await;
    c.swarms()
        .patch(
            "plant",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sites": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}]}})),
        )
        .await
        .expect("a fourth site");
    // Through three resyncs (2 s each) after the change, every consumer stays.
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < until {
        let names = consumer_names(&js, &stream).await;
        for site in ["a", "b", "c"] {
            assert!(
                names.contains(&format!("wear_{site}")),
                "consumer at {site} kept: {names:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let st = eventually("AgentsReady names the failed site", || async {
        let st = c.swarms().get("plant").await.ok()?.status?;
        let cond = condition(&st.conditions, "AgentsReady")?;
        (cond.status == "False" && cond.message.contains("site d")).then_some(st.clone())
    })
    .await;
    let message = &condition(&st.conditions, "AgentsReady")
        .expect("condition")
        .message;
    assert!(message.contains("exceeded quota"), "{message}");
    assert_eq!(
        st.sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c", "d"]
    );
    assert!(exists::<Deployment>(&c, "plant-agent-a").await);
}

/// Proves `spec.agent.env` naming a variable the operator sets is `InvalidSpec` naming the
/// entry, and nothing is applied for it. (Before, every Deployment apply of the swarm failed on
/// the real API server: the container's env is a list keyed by name.)
#[tokio::test]
async fn agent_env_naming_an_operator_variable_is_invalid() {
    let c = Cluster::start().await;
    let mut s = swarm("plant", None, &["a"]);
    s.spec.agent.env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: "QIS_SITE".into(),
        value: Some("elsewhere".into()),
        ..Default::default()
    }];
    c.swarms()
        .create(&PostParams::default(), &s)
        .await
        .expect("swarm");
    let s = swarm_condition(&c, "plant", "Ready", "False", Some("InvalidSpec")).await;
    let st = s.status.expect("status");
    let message = &condition(&st.conditions, "Ready").expect("ready").message;
    assert!(message.contains("spec.agent.env[0].name"), "{message}");
    assert!(!exists::<Deployment>(&c, "plant-agent-a").await);
}

/// Proves an installation without node access (chart `siteDiscovery.enabled=false`: no Node
/// rule in the ClusterRole, `--watch-nodes=false`) still runs a swarm that asks for discovery:
/// its listed sites are deployed, the swarm says why no site is discovered, and the API server
/// refuses the operator nothing. (Before, the operator listed Nodes anyway: 403, and no site
/// of that swarm was deployed.)
#[tokio::test]
async fn discovery_asked_for_without_node_access_is_reported() {
    let mut c = Cluster::start().await;
    let cp = ControlPlane::shared();
    let (kubeconfig, user) = cp.operator_identity(
        "no-nodes",
        "qis-no-nodes",
        &["siteDiscovery.enabled=false"],
        c.dir.path(),
    );
    let _ = c.operator.kill();
    let _ = c.operator.wait();
    c.operator = spawn_operator_as(
        &kubeconfig,
        c.dir.path(),
        &c.ns,
        &c.nats.url(),
        qis_testkit::free_port(),
        &["--watch-nodes=false"],
    );
    let mut s = swarm("plant", None, &["a"]);
    s.spec.site_discovery = Some(qis_crds::SiteDiscovery {
        node_label: "qis.dev/site".into(),
        replicas: 1,
        tolerations: vec![],
    });
    c.swarms()
        .create(&PostParams::default(), &s)
        .await
        .expect("swarm");
    swarm_condition(
        &c,
        "plant",
        "AgentsReady",
        "False",
        Some("SiteDiscoveryDisabled"),
    )
    .await;
    assert!(exists::<Deployment>(&c, "plant-agent-a").await);
    // The log is written in order: once it has the Deployment's apply, it has what came before.
    eventually("the apply in the audit log", || async {
        cp.audited_calls(&user)
            .contains(&("apps".into(), "deployments".into(), "patch".into()))
            .then_some(())
    })
    .await;
    let forbidden = cp.forbidden_calls(&user);
    assert!(forbidden.is_empty(), "{forbidden:?}");
}

/// Proves overlapping subject spaces: the later swarm gets ResourceConflict and no agents;
/// the earlier keeps working.
#[tokio::test]
async fn overlapping_swarm_conflicts() {
    let c = Cluster::start().await;
    let pp = PostParams::default();
    c.swarms()
        .create(&pp, &swarm("first", Some("qis.iot"), &[]))
        .await
        .expect("first");
    swarm_condition(&c, "first", "Ready", "True", None).await;
    c.swarms()
        .create(&pp, &swarm("second", Some("qis.iot.hvac"), &[]))
        .await
        .expect("second");
    let s = swarm_condition(&c, "second", "Ready", "False", Some("ResourceConflict")).await;
    let msg = condition(&s.status.expect("status").conditions, "Ready")
        .expect("ready")
        .message
        .clone();
    assert!(msg.contains(&c.stream("first")), "{msg}");
    let d = Api::<Deployment>::namespaced(c.client.clone(), &c.ns)
        .list(&ListParams::default().labels("qis.dev/swarm=second"))
        .await
        .expect("list");
    assert!(d.items.is_empty(), "no agents for a conflicting swarm");
    swarm_condition(&c, "first", "Ready", "True", None).await;
}

/// Proves a change the server cannot apply (replicas 3 on a single server) is NotSupported
/// and destroys nothing.
#[tokio::test]
async fn unsupported_change_is_reported() {
    let c = Cluster::start().await;
    c.swarms()
        .create(&PostParams::default(), &swarm("plant", None, &[]))
        .await
        .expect("swarm");
    swarm_condition(&c, "plant", "Ready", "True", None).await;
    let js = c.js().await;
    js.publish(format!("{}.x.y", c.prefix("plant")), "{}".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let patch = json!({"spec": {"stream": {"replicas": 3}}});
    c.swarms()
        .patch("plant", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    swarm_condition(&c, "plant", "StreamReady", "False", Some("NotSupported")).await;
    let info = js
        .get_stream(&c.stream("plant"))
        .await
        .expect("still there")
        .cached_info()
        .clone();
    assert_eq!(info.state.messages, 1);
}

/// Proves deletion policies: `delete` removes the stream, `retain` keeps it; a deleted subject
/// takes its consumers with it; finalizers are released.
#[tokio::test]
async fn deletion_policies() {
    let c = Cluster::start().await;
    let pp = PostParams::default();
    let mut kept = swarm("kept", Some("qis.kept"), &[]);
    kept.spec.deletion_policy = DeletionPolicy::Retain;
    c.swarms().create(&pp, &kept).await.expect("kept");
    c.swarms()
        .create(&pp, &swarm("gone", Some("qis.gone"), &[]))
        .await
        .expect("gone");
    c.subjects()
        .create(&pp, &subject("wear", "gone", "bearing-wear"))
        .await
        .expect("subject");
    swarm_condition(&c, "kept", "Ready", "True", None).await;
    subject_condition(&c, "wear", "Ready", "True", None).await;
    let js = c.js().await;
    assert_eq!(
        consumer_names(&js, &c.stream("gone")).await,
        ["wear_default"]
    );

    c.subjects()
        .delete("wear", &DeleteParams::default())
        .await
        .expect("delete subject");
    eventually("subject gone", || async {
        c.subjects()
            .get_opt("wear")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(consumer_names(&js, &c.stream("gone")).await.is_empty());

    for name in ["kept", "gone"] {
        c.swarms()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    eventually("swarms gone", || async {
        c.swarms()
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(
        js.get_stream(&c.stream("gone")).await.is_err(),
        "deletionPolicy delete removes the stream"
    );
    assert!(
        js.get_stream(&c.stream("kept")).await.is_ok(),
        "deletionPolicy retain keeps it"
    );
    // The garbage collector takes the Deployments (background deletion: after the owner). It
    // learns new kinds (the CRDs) at its discovery resync, every 30 s: allow for that.
    qis_testkit::eventually("Deployments go with their owner", GC_WAIT, || async {
        Api::<Deployment>::namespaced(c.client.clone(), &c.ns)
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
}

/// Proves foreground deletion as the real garbage collector does it: the swarm stays (with
/// `foregroundDeletion`) until its Deployments, ServiceAccount, Role and RoleBinding are gone,
/// the operator removes the stream and its finalizer meanwhile and re-creates nothing, and
/// then the swarm goes.
#[tokio::test]
async fn foreground_deletion_takes_the_children_first() {
    let c = Cluster::start().await;
    let pp = PostParams::default();
    c.swarms()
        .create(&pp, &swarm("plant", Some("qis.iot"), &["a", "b"]))
        .await
        .expect("swarm");
    swarm_condition(&c, "plant", "StreamReady", "True", None).await;
    eventually("both Deployments", || async {
        (exists::<Deployment>(&c, "plant-agent-a").await
            && exists::<Deployment>(&c, "plant-agent-b").await)
            .then_some(())
    })
    .await;
    c.swarms()
        .delete("plant", &DeleteParams::foreground())
        .await
        .expect("delete");
    qis_testkit::eventually("the swarm gone after its children", GC_WAIT, || async {
        (!exists::<QisSwarm>(&c, "plant").await).then_some(())
    })
    .await;
    for d in ["plant-agent-a", "plant-agent-b"] {
        let live = Api::<Deployment>::namespaced(c.client.clone(), &c.ns)
            .get_opt(d)
            .await
            .expect("get");
        assert!(
            live.is_none(),
            "{d} taken first: {:?}",
            live.map(|l| (
                l.metadata.deletion_timestamp,
                l.metadata.finalizers,
                l.metadata.owner_references
            ))
        );
    }
    let account = qis_operator::workload::agent_account_name("plant");
    assert!(!exists::<ServiceAccount>(&c, &account).await);
    assert!(!exists::<Role>(&c, &account).await);
    assert!(!exists::<RoleBinding>(&c, &account).await);
    let js = c.js().await;
    assert!(
        js.get_stream(&c.stream("plant")).await.is_err(),
        "stream removed"
    );
}

/// Proves NATS unreachable: conditions say NatsUnavailable and nothing is deleted; when NATS
/// is back the swarm recovers by itself; deletion while NATS is away gives up after the
/// bounded time with a CleanupAbandoned Warning instead of hanging.
#[tokio::test]
async fn nats_outage() {
    let mut c = Cluster::start().await;
    c.swarms()
        .create(&PostParams::default(), &swarm("plant", None, &["a"]))
        .await
        .expect("swarm");
    swarm_condition(&c, "plant", "Ready", "True", None).await;
    c.nats.kill();
    swarm_condition(&c, "plant", "StreamReady", "False", Some("NatsUnavailable")).await;
    let d = Api::<Deployment>::namespaced(c.client.clone(), &c.ns);
    assert!(
        d.get_opt("plant-agent-a").await.expect("get").is_some(),
        "agents stay while NATS is away"
    );
    c.nats.restart();
    swarm_condition(&c, "plant", "Ready", "True", None).await;

    c.nats.kill();
    c.swarms()
        .delete("plant", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("swarm deleted despite NATS being away", || async {
        c.swarms()
            .get_opt("plant")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(!events_with_reason(&c, "CleanupAbandoned").await.is_empty());
}

/// Proves the user's path: `kubectl apply -f` of a swarm and a subject, then `kubectl get qsub`
/// shows the address column and the swarm reports Ready, through the printer columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_and_get() {
    let c = Cluster::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let manifest = dir.path().join("swarm.yaml");
    std::fs::write(
        &manifest,
        format!("apiVersion: qis.dev/v1alpha1\nkind: QisSwarm\nmetadata: {{name: campus, namespace: {ns}}}\nspec:\n  subjectPrefix: qis.campus\n  sites: [{{name: north}}, {{name: south}}]\n---\napiVersion: qis.dev/v1alpha1\nkind: QisSubject\nmetadata: {{name: hvac-energy, namespace: {ns}}}\nspec:\n  swarmRef: {{name: campus}}\n  domain: hvac\n  problemClass: energy-anomaly\n", ns = c.ns),
    )
    .expect("manifest");
    let kubeconfig = &ControlPlane::shared().kubeconfig;
    let run = |args: &[&str]| {
        let out = Command::new(qis_testkit::controlplane::tool("kubectl"))
            .env("KUBECONFIG", kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let applied = run(&["apply", "-f", manifest.to_str().expect("utf8")]);
    assert!(
        applied.contains("qisswarm.qis.dev/campus created"),
        "{applied}"
    );
    subject_condition(&c, "hvac-energy", "Ready", "True", None).await;
    let table = run(&["get", "qsub", "-n", &c.ns]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "ADDRESS",
            "CONSENSUS",
            "STRENGTH",
            "AGENTS",
            "ALERT",
            "AGE"
        ]
    );
    assert!(table.contains("qis.campus.hvac.energy-anomaly"), "{table}");
    swarm_condition(&c, "campus", "Ready", "True", None).await;
    let swarms = run(&["get", "qsw", "-n", &c.ns]);
    assert!(
        swarms
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("True") && l.contains(&c.stream("campus"))),
        "{swarms}"
    );
}

/// Proves site discovery: one Deployment per distinct value of the node label, pinned to those
/// nodes; labelling another node adds a site (the node watch wakes the swarm).
#[tokio::test]
async fn sites_are_discovered_from_node_labels() {
    let c = Cluster::start().await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client.clone());
    let pp = PostParams::default();
    let key = c.site_label();
    let (a, b) = (format!("{key}=hall-a"), format!("{key}=hall-b"));
    let _nodes = own_nodes(
        &c,
        &[
            ("edge-1", &[a.as_str()]),
            ("edge-2", &[a.as_str()]),
            ("edge-3", &[b.as_str()]),
            ("core-1", &[]),
        ],
    )
    .await;
    let mut s = swarm("plant", None, &[]);
    s.spec.site_discovery = Some(qis_crds::SiteDiscovery {
        node_label: key.clone(),
        replicas: 1,
        tolerations: vec![test_toleration(&c)],
    });
    c.swarms().create(&pp, &s).await.expect("swarm");
    let ready = swarm_condition(&c, "plant", "Ready", "True", None).await;
    let sites: Vec<String> = ready
        .status
        .expect("status")
        .sites
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(sites, ["hall-a", "hall-b"]);
    let d = Api::<Deployment>::namespaced(c.client.clone(), &c.ns)
        .get("plant-agent-hall-b")
        .await
        .expect("deployment");
    let selector = d
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .node_selector
        .expect("pinned");
    assert_eq!(selector.get(&key).map(String::as_str), Some("hall-b"));

    nodes
        .patch(
            &c.node_name("core-1"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key.as_str(): "hall-c"}}})),
        )
        .await
        .expect("label");
    eventually("site hall-c discovered", || async {
        Api::<Deployment>::namespaced(c.client.clone(), &c.ns)
            .get_opt("plant-agent-hall-c")
            .await
            .ok()?
            .map(|_| ())
    })
    .await;
}

/// Proves the live stream state is refreshed on resync: packets deposited show up in
/// `status.stream.messages`.
#[tokio::test]
async fn stream_state_is_refreshed() {
    let c = Cluster::start().await;
    c.swarms()
        .create(&PostParams::default(), &swarm("plant", None, &[]))
        .await
        .expect("swarm");
    swarm_condition(&c, "plant", "Ready", "True", None).await;
    let js = c.js().await;
    for i in 0..5 {
        js.publish(format!("{}.hvac.x{i}", c.prefix("plant")), "{}".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    eventually("status.stream.messages == 5", || async {
        let s = c.swarms().get("plant").await.ok()?;
        (s.status?.stream?.messages == 5).then_some(())
    })
    .await;
}

/// Proves per-swarm NATS credentials from a Secret (user/password against a nats-server with
/// authorization) and that a Secret change is picked up at the next resync: a wrong password
/// reports NatsUnavailable, the corrected Secret makes the swarm Ready.
#[tokio::test]
async fn credentials_come_from_a_secret_and_follow_its_changes() {
    let c = Cluster::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("auth.conf");
    std::fs::write(
        &conf,
        "authorization { users = [ { user: alice, password: s3cret } ] }\n",
    )
    .expect("conf");
    let secured = NatsServer::start_with_config(Some(conf));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.client.clone(), &c.ns);
    let secret = |pass: &str| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(json!({"metadata": {"name": "nats-auth"}, "data": {
            "user": k8s_openapi::ByteString(b"alice".to_vec()), "pass": k8s_openapi::ByteString(pass.as_bytes().to_vec())}}))
        .expect("secret")
    };
    secrets
        .create(&PostParams::default(), &secret("wrong"))
        .await
        .expect("secret");
    let mut s = swarm("secure", None, &[]);
    let key = |k: &str| {
        Some(qis_crds::SecretKeyRef {
            name: "nats-auth".into(),
            key: k.into(),
        })
    };
    s.spec.nats = Some(qis_crds::NatsConnection {
        url: Some(secured.url()),
        credentials: Some(qis_crds::NatsCredentials {
            username: key("user"),
            password: key("pass"),
            creds_file: None,
            nkey_seed: None,
            token: None,
        }),
        tls: None,
        jetstream_domain: None,
    });
    c.swarms()
        .create(&PostParams::default(), &s)
        .await
        .expect("swarm");
    swarm_condition(
        &c,
        "secure",
        "StreamReady",
        "False",
        Some("NatsUnavailable"),
    )
    .await;
    secrets
        .replace("nats-auth", &PostParams::default(), &secret("s3cret"))
        .await
        .expect("rotate");
    // The operator follows the rotation. Not `Ready`: that needs the agent pod Ready, and an
    // agent started with the old password keeps retrying it (it reads its credential files once
    // and nothing rolls its pod when the Secret changes), so `Ready` came only when the pod
    // happened to start after the rotation. Open: roll the agents on a credential change.
    swarm_condition(&c, "secure", "StreamReady", "True", None).await;
    let client =
        async_nats::ConnectOptions::with_user_and_password("alice".into(), "s3cret".into())
            .connect(secured.url())
            .await
            .expect("connect");
    assert!(
        jetstream::new(client)
            .get_stream(&c.stream("secure"))
            .await
            .is_ok(),
        "stream made with the Secret's credentials"
    );
}

/// Proves leader election: of two replicas with `--leader-elect`, exactly one is ready and
/// holds the Lease; when it dies, the other takes the lease over and acts.
// Multi-threaded: the probes block a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_acts_and_a_standby_takes_over() {
    let mut c = Cluster::start().await;
    let _ = c.operator.kill();
    let _ = c.operator.wait();
    let (pa, pb) = (qis_testkit::free_port(), qis_testkit::free_port());
    let lease_args = |name: &'static str| ["--leader-elect", "--pod-name", name];
    let mut a = spawn_operator(c.dir.path(), &c.ns, &c.nats.url(), pa, &lease_args("op-a"));
    let mut b = spawn_operator(c.dir.path(), &c.ns, &c.nats.url(), pb, &lease_args("op-b"));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c.client.clone(), &c.ns);
    let holder = eventually("a leader", || async {
        let l = leases.get_opt("qis-operator").await.ok()??;
        l.spec?.holder_identity
    })
    .await;
    let (leader_port, standby_port) = if holder == "op-a" { (pa, pb) } else { (pb, pa) };
    eventually("leader ready", || async {
        (http_status(leader_port, "/readyz") == Some(200)).then_some(())
    })
    .await;
    // The standby is ready too (a rolling update of two replicas completes) and does not act.
    eventually("standby ready", || async {
        (http_status(standby_port, "/readyz") == Some(200)).then_some(())
    })
    .await;
    assert_eq!(metric(standby_port, "qis_operator_leader"), Some(0.0));
    assert_eq!(metric(leader_port, "qis_operator_leader"), Some(1.0));
    c.swarms()
        .create(&PostParams::default(), &swarm("plant", None, &[]))
        .await
        .expect("swarm");
    swarm_condition(&c, "plant", "Ready", "True", None).await;

    let (dead, survivor) = if holder == "op-a" {
        (&mut a, "op-b")
    } else {
        (&mut b, "op-a")
    };
    let _ = dead.kill();
    let _ = dead.wait();
    eventually("the standby takes the lease over", || async {
        let l = leases.get_opt("qis-operator").await.ok()??;
        (l.spec?.holder_identity? == survivor).then_some(())
    })
    .await;
    eventually("the standby leads", || async {
        (metric(standby_port, "qis_operator_leader") == Some(1.0)).then_some(())
    })
    .await;
    c.swarms()
        .create(
            &PostParams::default(),
            &swarm("after", Some("qis.after"), &[]),
        )
        .await
        .expect("swarm");
    swarm_condition(&c, "after", "Ready", "True", None).await;
    for p in [&mut a, &mut b] {
        let _ = p.kill();
        let _ = p.wait();
    }
}

/// Proves an operator killed in the middle of reconciling 200 subjects converges after a
/// restart, with exactly the consumers the subjects ask for (none orphaned, none missing), and
/// that deleting half the subjects leaves exactly the other half's consumers.
// Multi-threaded: 200 subjects keep the client busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_mid_reconcile_converges_without_orphans() {
    let mut c = Cluster::start().await;
    // One reconcile at a time, so that the kill below lands while most subjects are still
    // waiting (the default concurrency finishes 200 subjects before a poll sees 20 of them).
    c.restart_operator(&["--concurrency", "1"]);
    let pp = PostParams::default();
    c.swarms()
        .create(&pp, &swarm("plant", None, &["a", "b"]))
        .await
        .expect("swarm");
    swarm_condition(&c, "plant", "Ready", "True", None).await;
    for i in 0..200 {
        c.subjects()
            .create(
                &pp,
                &subject(&format!("s{i:03}"), "plant", &format!("class-{i}")),
            )
            .await
            .expect("subject");
    }
    let ready = |c: &Cluster| {
        let api = c.subjects();
        async move {
            api.list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|s| {
                            s.status.as_ref().is_some_and(|st| {
                                qis_operator::conditions::is_true(&st.conditions, "Ready")
                                    == Some(true)
                            })
                        })
                        .count()
                })
                .unwrap_or(0)
        }
    };
    eventually("some subjects reconciled", || async {
        (ready(&c).await >= 20).then_some(())
    })
    .await;
    let _ = c.operator.kill();
    let _ = c.operator.wait();
    let done_before = ready(&c).await;
    eprintln!("operator killed with {done_before} of 200 subjects Ready");
    assert!(
        done_before < 200,
        "killed mid-reconcile ({done_before} of 200 done)"
    );
    c.restart_operator(&[]);
    eventually("all 200 subjects Ready after the restart", || async {
        (ready(&c).await == 200).then_some(())
    })
    .await;
    let js = c.js().await;
    let mut want: Vec<String> = (0..200)
        .flat_map(|i| ["a", "b"].map(|s| format!("s{i:03}_{s}")))
        .collect();
    want.sort();
    let got = consumer_names(&js, &c.stream("plant")).await;
    let extra: Vec<_> = got.iter().filter(|n| !want.contains(n)).collect();
    let missing: Vec<_> = want.iter().filter(|n| !got.contains(n)).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "orphaned consumers {extra:?}; missing {missing:?}"
    );
    for i in 0..100 {
        c.subjects()
            .delete(&format!("s{i:03}"), &DeleteParams::default())
            .await
            .expect("delete");
    }
    let rest: Vec<String> = want
        .iter()
        .filter(|n| n.as_str() >= "s100")
        .cloned()
        .collect();
    eventually("exactly the remaining subjects' consumers", || async {
        (consumer_names(&js, &c.stream("plant")).await == rest).then_some(())
    })
    .await;
}

/// Makes a CA and a server certificate for 127.0.0.1 with the openssl CLI; returns
/// (ca.crt, server.crt, server.key) paths.
fn make_certs(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=qis-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

/// Proves TLS with a self-signed CA made in the test: a swarm whose Secret holds the CA
/// reaches a TLS-only nats-server; with another CA the swarm reports NatsUnavailable.
#[tokio::test]
async fn tls_with_a_self_signed_ca() {
    let c = Cluster::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, cert, key) = make_certs(dir.path());
    let conf = dir.path().join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
            cert, key
        ),
    )
    .expect("conf");
    let secured = NatsServer::start_with_config(Some(conf));
    let other = tempfile::tempdir().expect("tmp");
    let (wrong_ca, _, _) = make_certs(other.path());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.client.clone(), &c.ns);
    for (name, pem) in [("nats-ca", &ca), ("wrong-ca", &wrong_ca)] {
        let data = std::fs::read(pem).expect("pem");
        let s = serde_json::from_value(
            json!({"metadata": {"name": name}, "data": {"ca.crt": k8s_openapi::ByteString(data)}}),
        )
        .expect("secret");
        secrets
            .create(&PostParams::default(), &s)
            .await
            .expect("secret");
    }
    for (swarm_name, secret) in [("trusting", "nats-ca"), ("mistrusting", "wrong-ca")] {
        let mut s = swarm(swarm_name, Some(&format!("qis.{swarm_name}")), &[]);
        s.spec.nats = Some(qis_crds::NatsConnection {
            url: Some(format!("tls://127.0.0.1:{}", secured.port())),
            tls: Some(qis_crds::NatsTls {
                secret_name: secret.into(),
                client_cert: false,
            }),
            ..Default::default()
        });
        c.swarms()
            .create(&PostParams::default(), &s)
            .await
            .expect("swarm");
    }
    swarm_condition(&c, "trusting", "Ready", "True", None).await;
    swarm_condition(
        &c,
        "mistrusting",
        "StreamReady",
        "False",
        Some("NatsUnavailable"),
    )
    .await;
}

/// Sum of the operator's `qis_operator_api_writes_total` series.
/// The value of the operator's metric `name` (summed over its labels).
fn metric(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let values: Vec<f64> = out
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn api_writes(port: u16) -> Option<f64> {
    metric(port, "qis_operator_api_writes_total").or(Some(0.0))
}

/// Proves traffic does not make the operator write continuously: while packets flow into the
/// stream (its counters in the swarm's status change with each one), the status is written at
/// most about once per resync (2 s here), not once per status write that re-triggered the
/// reconcile (what the operator did before: a write, a watch event, a reconcile, new counters,
/// a write …). Bounded: 240 packets over 12 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_does_not_make_the_operator_write_continuously() {
    let c = Cluster::start().await;
    c.swarms()
        .create(
            &PostParams::default(),
            &swarm("plant", Some("qis.iot"), &["a"]),
        )
        .await
        .expect("swarm");
    swarm_condition(&c, "plant", "StreamReady", "True", None).await;
    let js = c.js().await;
    let before = api_writes(c.port).expect("metrics");
    let started = tokio::time::Instant::now();
    for i in 0..240u32 {
        js.publish("qis.iot.hvac.energy-anomaly", format!("packet {i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        tokio::time::sleep_until(started + Duration::from_millis(50) * (i + 1)).await;
    }
    let window = started.elapsed().as_secs_f64();
    let writes = api_writes(c.port).expect("metrics") - before;
    let bound = (window / 2.0).ceil() + 3.0;
    assert!(
        writes <= bound,
        "{writes} writes in {window:.1} s of traffic (at most {bound}: one per resync)"
    );
    let st = c
        .swarms()
        .get("plant")
        .await
        .expect("swarm")
        .status
        .expect("status");
    assert!(
        st.stream.expect("stream status").messages > 0,
        "the counters are still refreshed"
    );
}

/// Proves a steady swarm costs no writes: after it is Ready, three resyncs (drift checks of
/// the stream, consumers, Deployments and RBAC) write nothing to the API server.
// Multi-threaded: the metrics probe blocks a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_makes_no_writes() {
    let c = Cluster::start().await;
    c.swarms()
        .create(
            &PostParams::default(),
            &swarm("plant", None, &["a", "b", "c"]),
        )
        .await
        .expect("swarm");
    c.subjects()
        .create(
            &PostParams::default(),
            &subject("wear", "plant", "bearing-wear"),
        )
        .await
        .expect("subject");
    swarm_condition(&c, "plant", "Ready", "True", None).await;
    subject_condition(&c, "wear", "Ready", "True", None).await;
    // Settled: no write across two resync periods (the last status writes of converging can
    // come after Ready on a loaded machine). An operator that writes every resync never
    // settles and fails here.
    let before = eventually("no API writes across two resyncs", || async {
        let first = api_writes(c.port)?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        (api_writes(c.port)? == first).then_some(first)
    })
    .await;
    // Then three more resyncs write nothing either.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = api_writes(c.port).expect("metrics");
    assert!(before > 0.0, "the first reconciles wrote");
    assert_eq!(after, before, "no writes at steady state");
    // A child edited behind the operator's back is still put back.
    let d: Api<Deployment> = Api::namespaced(c.client.clone(), &c.ns);
    d.patch(
        "plant-agent-a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .expect("edit");
    eventually("the edited Deployment is put back", || async {
        (d.get("plant-agent-a").await.ok()?.spec?.replicas == Some(1)).then_some(())
    })
    .await;
}

/// Proves the operator's RBAC (`operator/src/rbac.rs`, which the chart and kustomize must
/// equal, see `manifests.rs`) is what its code calls. The operator runs as its own
/// ServiceAccount (a release of its own, so the audit is of this test alone) under the
/// ClusterRole `helm template` renders, and the real API server enforces it, while the operator
/// does everything it does: leader election, NATS credentials from a Secret, explicit and
/// discovered sites, a removed site, subjects, a drifted stream reverted twice (a repeated
/// event), deletion. Nothing may be forbidden, and, from the API server's audit log, every
/// grant must be called or be one the agents' Role needs (a Role can only grant what its
/// creator holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_is_what_the_operator_calls() {
    use qis_operator::rbac::{CLUSTER_RULES, NODE_RULE, SECRET_RULE, grants, policy_grants};
    let mut c = Cluster::start().await;
    let cp = ControlPlane::shared();
    let (kubeconfig, user) = cp.operator_identity("rbac-audit", "qis-rbac", &[], c.dir.path());
    let _ = c.operator.kill();
    let _ = c.operator.wait();
    c.operator = spawn_operator_as(
        &kubeconfig,
        c.dir.path(),
        &c.ns,
        &c.nats.url(),
        qis_testkit::free_port(),
        &["--leader-elect", "--pod-name", "op-0"],
    );
    let pp = PostParams::default();
    let hall_a = format!("{}=hall-a", c.site_label());
    let _nodes = own_nodes(&c, &[("edge-1", &[hall_a.as_str()])]).await;
    let secret = serde_json::from_value(
        json!({"metadata": {"name": "nats-token"}, "stringData": {"token": "t0ken"}}),
    )
    .expect("secret");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.client.clone(), &c.ns)
        .create(&pp, &secret)
        .await
        .expect("secret");
    let mut plant = swarm("plant", None, &["a", "b"]);
    plant.spec.nats = Some(qis_crds::NatsConnection {
        credentials: Some(qis_crds::NatsCredentials {
            token: Some(qis_crds::SecretKeyRef {
                name: "nats-token".into(),
                key: "token".into(),
            }),
            creds_file: None,
            nkey_seed: None,
            username: None,
            password: None,
        }),
        ..Default::default()
    });
    c.swarms().create(&pp, &plant).await.expect("swarm");
    let mut campus = swarm("campus", Some("qis.campus"), &[]);
    campus.spec.site_discovery = Some(qis_crds::SiteDiscovery {
        node_label: c.site_label(),
        replicas: 1,
        tolerations: vec![test_toleration(&c)],
    });
    c.swarms().create(&pp, &campus).await.expect("swarm");
    c.subjects()
        .create(&pp, &subject("wear", "plant", "bearing-wear"))
        .await
        .expect("subject");
    swarm_condition(&c, "plant", "Ready", "True", None).await;
    swarm_condition(&c, "campus", "Ready", "True", None).await;
    subject_condition(&c, "wear", "Ready", "True", None).await;

    // A swarm keeping its outbox in claims, one site removed: its claim goes (the claims'
    // verbs). Its pods wait for volumes (no provisioner here): its readiness is not waited for.
    let mut store = swarm("store", None, &["a", "b"]);
    store.spec.agent.persistence = Some(outbox_claims_of("64Mi"));
    c.swarms().create(&pp, &store).await.expect("swarm");
    eventually("the store's claims", || async {
        (exists::<PersistentVolumeClaim>(&c, "store-agent-b-data").await).then_some(())
    })
    .await;
    c.swarms()
        .patch(
            "store",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sites": [{"name": "a"}]}})),
        )
        .await
        .expect("one site");
    eventually("the removed site's claim deleted", || async {
        claim_deleted(&c, "store-agent-b-data").await.then_some(())
    })
    .await;

    // A site removed: its Deployment goes.
    // A merge patch, not a replace: a replace carries the resourceVersion it read and
    // conflicts with the operator's own status writes (CI hit that once).
    c.swarms()
        .patch(
            "plant",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sites": [{"name": "a"}]}})),
        )
        .await
        .expect("one site");
    eventually("the removed site's Deployment deleted", || async {
        (!exists::<Deployment>(&c, "plant-agent-b").await).then_some(())
    })
    .await;

    // The same drift twice: the same event again (a patch of the first).
    let js = c.js().await;
    for _ in 0..2 {
        let mut live = js
            .get_stream(&c.stream("plant"))
            .await
            .expect("stream")
            .cached_info()
            .config
            .clone();
        live.max_bytes = 1024 * 1024;
        js.update_stream(&live).await.expect("drift");
        eventually("the drift reverted", || async {
            let info = js.get_stream(&c.stream("plant")).await.ok()?;
            (info.cached_info().config.max_bytes != 1024 * 1024).then_some(())
        })
        .await;
    }

    c.subjects()
        .delete("wear", &DeleteParams::default())
        .await
        .expect("delete subject");
    c.swarms()
        .delete("plant", &DeleteParams::default())
        .await
        .expect("delete swarm");
    eventually("both deleted (finalizers done)", || async {
        let gone =
            !exists::<QisSubject>(&c, "wear").await && !exists::<QisSwarm>(&c, "plant").await;
        gone.then_some(())
    })
    .await;

    let forbidden = cp.forbidden_calls(&user);
    assert!(
        forbidden.is_empty(),
        "the API server refused the operator: {forbidden:?}"
    );
    // The log is written in batches, in order: once it has the test's last request (the
    // admin's GET of the deleted swarm, 404), it has everything the operator did before.
    eventually("the audit log caught up with the deletion", || async {
        cp.audit_events()
            .iter()
            .any(|e| {
                e["user"]["username"] == "qis-test-admin"
                    && e["objectRef"]["name"] == "plant"
                    && e["objectRef"]["namespace"] == c.ns.as_str()
                    && e["responseStatus"]["code"] == 404
            })
            .then_some(())
    })
    .await;
    let called = cp.audited_calls(&user);
    let mut granted = grants(CLUSTER_RULES);
    granted.extend(grants(&[SECRET_RULE, NODE_RULE]));
    let ungranted: Vec<_> = called.difference(&granted).collect();
    assert!(
        ungranted.is_empty(),
        "the operator calls what its RBAC does not grant: {ungranted:?}"
    );
    let agents = policy_grants(&qis_operator::workload::agent_rules());
    // Authorized by admission, never requested: OwnerReferencesPermissionEnforcement (on in the
    // control plane) checks it on every child whose owner reference blocks deletion.
    let by_admission = (
        "qis.dev".to_owned(),
        "qisswarms/finalizers".to_owned(),
        "update".to_owned(),
    );
    let unused: Vec<_> = granted
        .iter()
        .filter(|g| !called.contains(*g) && !agents.contains(*g) && **g != by_admission)
        .collect();
    assert!(
        unused.is_empty(),
        "the RBAC grants what neither the operator calls nor the agents need: {unused:?}"
    );
}

/// A NATS "server" that accepts connections and never says a word; counts the connections it
/// accepted and those the client closed since.
struct SilentServer {
    url: String,
    accepted: std::sync::Arc<AtomicUsize>,
    closed: std::sync::Arc<AtomicUsize>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("nats://{}", listener.local_addr().expect("addr"));
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let closed = std::sync::Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                std::thread::spawn(move || {
                    use std::io::Read;
                    let mut buf = [0u8; 256];
                    // Read (and ignore) whatever comes until the client hangs up.
                    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        SilentServer {
            url,
            accepted,
            closed,
        }
    }
}

/// Proves a swarm whose NATS server accepts and never answers does not delay other swarms:
/// while the operator is still inside that connect (its connection open, a 20 s timeout), a
/// second swarm's stream is made and reported. Before, the connection pool held its lock across
/// the connect, so every other swarm's reconcile waited for the silent one to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_nats_server_does_not_delay_other_swarms() {
    let mut c = Cluster::start().await;
    c.restart_operator(&["--nats-timeout", "20s"]);
    let silent = SilentServer::start();
    let mut stuck = swarm("stuck", None, &[]);
    stuck.spec.nats = Some(qis_crds::NatsConnection {
        url: Some(silent.url.clone()),
        ..Default::default()
    });
    c.swarms()
        .create(&PostParams::default(), &stuck)
        .await
        .expect("swarm");
    eventually("the operator connects to the silent server", || async {
        (silent.accepted.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    c.swarms()
        .create(&PostParams::default(), &swarm("plant", None, &[]))
        .await
        .expect("swarm");
    swarm_condition(&c, "plant", "StreamReady", "True", None).await;
    assert_eq!(
        silent.closed.load(Ordering::SeqCst),
        0,
        "the other swarm became ready only after the silent connect was given up"
    );
    assert!(
        c.js().await.get_stream(c.stream("plant")).await.is_ok(),
        "the stream exists"
    );
    // The silent swarm is reported once its connect times out.
    swarm_condition(&c, "stuck", "StreamReady", "False", Some("NatsUnavailable")).await;
}

/// Whether the claim is gone or deleted and held only by `kubernetes.io/pvc-protection` (its
/// admission plugin runs here, its controller, which lets go once no pod mounts the claim,
/// does not).
async fn claim_deleted(c: &Cluster, name: &str) -> bool {
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
fn outbox_claims_of(size: &str) -> qis_crds::Persistence {
    qis_crds::Persistence {
        type_: qis_crds::PersistenceType::PersistentVolumeClaim,
        storage_class_name: None,
        size: Some(size.into()),
    }
}

/// Proves `spec.agent.persistence` on the real API server: nonsense is refused at admission
/// (a claim with two replicas, a size below 16Mi, a class for an emptyDir); a swarm with
/// claims gets one per site, owned by the swarm, mounted by its Deployment (updated by
/// `Recreate`); a change the claim cannot take (shrinking; growing an unbound claim, which
/// the API server forbids) is reported as `NotSupported` naming the claim, and the claim is
/// kept; the claims go with the swarm. No volume provisioner runs here: the claims stay
/// Pending, which is all this test needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_claims_are_made_mounted_reported_and_removed_with_the_swarm() {
    let c = Cluster::start().await;
    let pp = PostParams::default();
    let mut two = swarm("two", None, &["a"]);
    two.spec.sites[0].replicas = 2;
    two.spec.agent.persistence = Some(outbox_claims_of("64Mi"));
    let err = c.swarms().create(&pp, &two).await.expect_err("refused");
    assert!(err.to_string().contains("at most one replica"), "{err}");
    let mut tiny = swarm("tiny", None, &["a"]);
    tiny.spec.agent.persistence = Some(outbox_claims_of("8Mi"));
    let err = c.swarms().create(&pp, &tiny).await.expect_err("refused");
    assert!(err.to_string().contains("at least 16Mi"), "{err}");
    let mut classy = swarm("classy", None, &["a"]);
    classy.spec.agent.persistence = Some(qis_crds::Persistence {
        type_: qis_crds::PersistenceType::EmptyDir,
        storage_class_name: Some("fast".into()),
        size: None,
    });
    let err = c.swarms().create(&pp, &classy).await.expect_err("refused");
    assert!(
        err.to_string()
            .contains("only for type persistentVolumeClaim"),
        "{err}"
    );

    let mut store = swarm("store", None, &["a"]);
    store.spec.agent.persistence = Some(outbox_claims_of("64Mi"));
    let created = c.swarms().create(&pp, &store).await.expect("swarm");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), &c.ns);
    let claim = eventually("the site's claim", || async {
        claims.get_opt("store-agent-a-data").await.ok()?
    })
    .await;
    assert_eq!(
        claim
            .metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].uid.clone()),
        created.metadata.uid,
        "owned by the swarm"
    );
    let spec = claim.spec.clone().expect("spec");
    assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
    assert_eq!(
        spec.resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned()),
        Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
            "64Mi".into()
        ))
    );
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &c.ns);
    let d = eventually("the site's Deployment", || async {
        deployments.get_opt("store-agent-a").await.ok()?
    })
    .await;
    let dspec = d.spec.expect("spec");
    assert_eq!(
        dspec.strategy.and_then(|s| s.type_).as_deref(),
        Some("Recreate")
    );
    let pod = dspec.template.spec.expect("pod");
    let data = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "data")
        .expect("data volume");
    assert_eq!(
        data.persistent_volume_claim
            .map(|p| p.claim_name)
            .as_deref(),
        Some("store-agent-a-data")
    );

    for (size, says) in [("32Mi", "never shrinks"), ("128Mi", "cannot be applied")] {
        c.swarms()
            .patch(
                "store",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"agent": {"persistence": {"size": size}}}})),
            )
            .await
            .expect("size change");
        let s = swarm_condition(&c, "store", "AgentsReady", "False", Some("NotSupported")).await;
        let msg = condition(&s.status.expect("status").conditions, "AgentsReady")
            .expect("condition")
            .message
            .clone();
        eventually(&format!("{size}: reported ({says})"), || async {
            let s = c.swarms().get("store").await.ok()?;
            let m = condition(&s.status?.conditions, "AgentsReady")?
                .message
                .clone();
            (m.contains(says) && m.contains("store-agent-a-data")).then_some(())
        })
        .await;
        let live = claims.get("store-agent-a-data").await.expect("claim");
        assert_eq!(
            live.spec
                .and_then(|s| s.resources)
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").cloned()),
            Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "64Mi".into()
            )),
            "the claim is kept as it was ({msg})"
        );
    }

    c.swarms()
        .delete("store", &DeleteParams::default())
        .await
        .expect("delete");
    qis_testkit::eventually("the claim went with the swarm", GC_WAIT, || async {
        claim_deleted(&c, "store-agent-a-data").await.then_some(())
    })
    .await;
}
