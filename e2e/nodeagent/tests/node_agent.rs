//! The node agent against the real control plane: the scheduler binds pods to its Nodes, the
//! ReplicaSet controller counts the readiness it reports, and the processes it runs talk to
//! the API server as their ServiceAccounts under real RBAC.
//!
//! The pods run a small Python program (image [`IMAGE`]): it serves `/readyz` (ready once it
//! could GET its own Pod through the API), `/healthz` and `/report` on `$QIS_LISTEN`, and
//! reports what it sees (environment, files of its volumes, API answers as its
//! ServiceAccount) there and in `report.json` of its data volume.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use qis_nodeagent::{NodeAgent, NodeAgentConfig, NodeSpec, PORT_ANNOTATION};
use qis_testkit::controlplane::{ControlPlane, DumpOnFailure};
use qis_testkit::eventually;
use qis_testkit::http::Http;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

const IMAGE: &str = "registry.invalid/qis/test-program:1";
const EDGE_TAINT: &str = "node-role.kubernetes.io/edge";
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

const PROGRAM: &str = r#"
import http.server, json, os, ssl, threading, time, urllib.error, urllib.request

host, port = os.environ["QIS_LISTEN"].rsplit(":", 1)
kc = json.load(open(os.environ["KUBECONFIG"]))
cluster, user = kc["clusters"][0]["cluster"], kc["users"][0]["user"]
ns, name = os.environ["POD_NAMESPACE"], os.environ["POD_NAME"]
state = {"report": None, "ready": False}

def call(method, path, body=None):
    token = open(user["tokenFile"]).read().strip()
    ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(cluster["server"] + path, data=data, method=method,
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None
    except Exception as e:
        return 0, str(e)

def files(d):
    if not d or not os.path.isdir(d):
        return None
    return {f: open(os.path.join(d, f)).read() for f in sorted(os.listdir(d))
            if os.path.isfile(os.path.join(d, f))}

def observe():
    while True:
        own, pod = call("GET", "/api/v1/namespaces/%s/pods/%s" % (ns, name))
        secrets, _ = call("GET", "/api/v1/namespaces/%s/secrets" % ns)
        _, review = call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                         {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        sa = os.environ.get("SA_DIR", "")
        report = {
            "env": {k: v for k, v in os.environ.items() if k.startswith(("T_", "POD_", "SA_", "QIS_"))},
            "secretFiles": files(os.environ.get("T_SECRET_DIR")),
            "saFiles": sorted(os.listdir(sa)) if os.path.isdir(sa) else None,
            "saNamespace": open(os.path.join(sa, "namespace")).read() if os.path.isdir(sa) else None,
            "tokenIsTheKubeconfigs": os.path.isdir(sa) and os.path.samefile(os.path.join(sa, "token"), user["tokenFile"]),
            "getOwnPod": own,
            "ownPodUid": pod["metadata"]["uid"] if own == 200 else None,
            "listSecrets": secrets,
            "user": review["status"]["userInfo"]["username"] if isinstance(review, dict) else None,
        }
        data = os.environ.get("T_DATA_DIR")
        if data:
            with open(os.path.join(data, "report.tmp"), "w") as f:
                json.dump(report, f)
            os.replace(os.path.join(data, "report.tmp"), os.path.join(data, "report.json"))
        state["report"], state["ready"] = report, own == 200
        time.sleep(1)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/readyz":
            code, body = (200 if state["ready"] else 503), b"ready"
        elif self.path == "/healthz":
            code, body = 200, b"ok"
        elif self.path == "/report" and state["report"] is not None:
            code, body = 200, json.dumps(state["report"]).encode()
        else:
            code, body = 404, b""
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

threading.Thread(target=observe, daemon=True).start()
http.server.ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
"#;

fn python() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("python3"))
        .find(|p| p.exists())
        .expect("python3 on PATH")
}

/// A namespace, a node agent with one Node per site, and an admin client.
struct Fixture {
    cp: &'static ControlPlane,
    ns: String,
    test: String,
    agent: Option<NodeAgent>,
    client: kube::Client,
    work: tempfile::TempDir,
    _dump: DumpOnFailure<'static>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The pods' own logs, next to the control plane's state.
            for entry in walk(self.work.path()) {
                if entry.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&entry).unwrap_or_default();
                    eprintln!("==== {}\n{text}", entry.display());
                }
            }
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

impl Fixture {
    async fn new(test: &str, sites: &[&str], ns_labels: &[&str]) -> Fixture {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "qis_nodeagent=info".into()),
            )
            .with_test_writer()
            .try_init();
        let cp = ControlPlane::shared();
        let ns = format!("na-{test}");
        // Created with its labels at once: Pod Security admission reads namespaces from a
        // cache, which a label added afterwards may not have reached yet.
        let labels: BTreeMap<&str, &str> =
            ns_labels.iter().filter_map(|l| l.split_once('=')).collect();
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": labels}});
        cp.kubectl_stdin(&["create", "-f", "-"], Some(&namespace.to_string()));
        let work = tempfile::Builder::new()
            .prefix("qis-nodeagent-")
            .tempdir()
            .expect("tmp");
        let nodes = sites
            .iter()
            .map(|site| {
                NodeSpec::new(
                    &format!("na-{test}-{site}"),
                    &[
                        &format!("qis.dev/site={site}"),
                        &format!("qis.dev/test={test}"),
                    ],
                )
                .taint(EDGE_TAINT, None, "NoSchedule")
            })
            .collect();
        let agent = NodeAgent::start(NodeAgentConfig {
            kubeconfig: cp.kubeconfig.clone(),
            nodes,
            default_binary: PathBuf::from("/bin/false"),
            images: BTreeMap::from([(IMAGE.to_owned(), python())]),
            work_dir: work.path().to_owned(),
            extra_env: vec![("PYTHONUNBUFFERED".to_owned(), "1".to_owned())],
        })
        .await
        .expect("node agent");
        let kc = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        Fixture {
            cp,
            _dump: DumpOnFailure {
                cp,
                namespace: ns.clone(),
            },
            ns,
            test: test.to_owned(),
            agent: Some(agent),
            client,
            work,
        }
    }

    fn agent(&self) -> &NodeAgent {
        self.agent.as_ref().expect("agent")
    }

    fn apply(&self, object: &Value) {
        self.cp.kubectl_stdin(
            &["apply", "-n", &self.ns, "-f", "-"],
            Some(&object.to_string()),
        );
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// A ServiceAccount, and a Role to get pods bound to it when `may_get_pods`.
    fn service_account(&self, name: &str, may_get_pods: bool) {
        self.cp
            .kubectl(&["create", "serviceaccount", name, "-n", &self.ns]);
        if may_get_pods {
            self.grant_get_pods(name);
        }
    }

    fn grant_get_pods(&self, sa: &str) {
        self.cp.kubectl(&[
            "create",
            "role",
            "get-pods",
            "-n",
            &self.ns,
            "--verb=get",
            "--resource=pods",
        ]);
        self.cp.kubectl(&[
            "create",
            "rolebinding",
            "get-pods",
            "-n",
            &self.ns,
            "--role=get-pods",
            &format!("--serviceaccount={}:{sa}", self.ns),
        ]);
    }

    /// The pod spec of the test program on `site`'s node, as `sa`.
    fn pod_spec(&self, site: &str, sa: &str, readiness: bool) -> Value {
        let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
        let mut container = json!({
            "name": "program",
            "image": IMAGE,
            "args": ["-c", PROGRAM],
            "env": [
                field("POD_NAME", "metadata.name"),
                field("POD_NAMESPACE", "metadata.namespace"),
                field("T_UID", "metadata.uid"),
                field("T_NODE", "spec.nodeName"),
                field("T_SA", "spec.serviceAccountName"),
                field("T_IP", "status.podIP"),
                field("T_SITE", "metadata.labels['qis.dev/site']"),
                {"name": "T_EXPANDED", "value": "$(T_SITE)-x"},
                {"name": "T_DATA_DIR", "value": "/var/lib/qis"},
                {"name": "SA_DIR", "value": SA_DIR},
                {"name": "QIS_LISTEN", "value": "0.0.0.0:8080"},
            ],
            "ports": [{"name": "http", "containerPort": 8080}],
            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/qis"}],
        });
        if readiness {
            container["readinessProbe"] =
                json!({"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1});
            container["livenessProbe"] =
                json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 2});
        }
        json!({
            "serviceAccountName": sa,
            "nodeSelector": {"qis.dev/site": site, "qis.dev/test": self.test},
            "tolerations": [{"key": EDGE_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
            "volumes": [{"name": "data", "emptyDir": {}}],
        })
    }

    async fn pod(&self, name: &str) -> Option<Pod> {
        self.pods().get_opt(name).await.ok().flatten()
    }

    /// The names of the pods labelled `app=<app>` whose Ready condition is True.
    async fn ready_pods(&self, app: &str) -> Vec<String> {
        let list = self
            .pods()
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        list.into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .filter_map(|p| p.metadata.name)
            .collect()
    }

    /// The report of the pod's program, through its annotated loopback port.
    async fn report(&self, pod: &str) -> Option<Value> {
        let p = self.pod(pod).await?;
        let port: u16 = p.metadata.annotations?.get(PORT_ANNOTATION)?.parse().ok()?;
        Http::local(port).get_json("/report").await
    }

    async fn finish(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop_and_remove_nodes().await.expect("remove nodes");
        }
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn deployment(name: &str, replicas: i32, spec: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "qis.dev/site": "hall-a"}},
                "spec": spec,
            },
        },
    })
}

async fn ready_replicas(f: &Fixture, name: &str) -> i32 {
    let api: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    api.get(name)
        .await
        .ok()
        .and_then(|d| d.status?.ready_replicas)
        .unwrap_or(0)
}

/// A Deployment of 2 replicas with a readiness probe, downward-API and Secret/ConfigMap
/// environment and a Secret volume becomes 2 Ready pods on the agent's node: each process
/// sees its own pod's fields, the Secret's files under its (rewritten) mount path, the
/// projected ServiceAccount token, and reads its own Pod through the API as its
/// ServiceAccount. The Deployment controller counts both as ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_becomes_ready_pods_that_see_their_env_volumes_and_identity() {
    let f = Fixture::new("deploy", &["hall-a"], &[]).await;
    f.service_account("prober", true);
    f.cp.kubectl(&[
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        &f.ns,
        "--from-literal=password=s3cret",
        "--from-literal=username=edge",
    ]);
    f.cp.kubectl(&[
        "create",
        "configmap",
        "settings",
        "-n",
        &f.ns,
        "--from-literal=greeting=hello",
    ]);
    let mut spec = f.pod_spec("hall-a", "prober", true);
    let c = &mut spec["containers"][0];
    for e in [
        json!({"name": "T_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}),
        json!({"name": "T_GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}}),
        json!({"name": "T_SECRET_DIR", "value": "/etc/qis/secret"}),
    ] {
        c["env"].as_array_mut().expect("env").push(e);
    }
    c["volumeMounts"]
        .as_array_mut()
        .expect("mounts")
        .push(json!({"name": "creds", "mountPath": "/etc/qis/secret", "readOnly": true}));
    spec["volumes"]
        .as_array_mut()
        .expect("volumes")
        .push(json!({"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o440}}));
    f.apply(&deployment("probe", 2, spec));

    eventually("readyReplicas=2", Duration::from_secs(90), || async {
        (ready_replicas(&f, "probe").await == 2).then_some(())
    })
    .await;
    let ready = f.ready_pods("probe").await;
    assert_eq!(ready.len(), 2, "{ready:?}");
    let node = "na-deploy-hall-a";
    for name in &ready {
        let pod = f.pod(name).await.expect("pod");
        let uid = pod.metadata.uid.clone().expect("uid");
        let spec = pod.spec.clone().expect("spec");
        let status = pod.status.clone().expect("status");
        assert_eq!(
            spec.node_name.as_deref(),
            Some(node),
            "bound by the scheduler"
        );
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.1"));
        let cs = &status.container_statuses.expect("container statuses")[0];
        assert!(cs.ready && cs.started == Some(true), "{cs:?}");
        assert_eq!(cs.restart_count, 0);
        assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
        let port: u16 = pod.metadata.annotations.as_ref().expect("annotations")[PORT_ANNOTATION]
            .parse()
            .expect("port");
        assert_eq!(f.agent().pod_port(&f.ns, name), Some(port));
        assert!(f.agent().running().contains(&(f.ns.clone(), name.clone())));

        let report = eventually("the program's report", Duration::from_secs(20), || async {
            f.report(name).await.filter(|r| r["getOwnPod"] == 200)
        })
        .await;
        let env = &report["env"];
        let volumes = f.work.path().join("pods").join(&uid).join("volumes");
        let expected = [
            ("POD_NAME", name.as_str()),
            ("POD_NAMESPACE", f.ns.as_str()),
            ("T_UID", &uid),
            ("T_NODE", node),
            ("T_SA", "prober"),
            ("T_IP", "127.0.0.1"),
            ("T_SITE", "hall-a"),
            ("T_EXPANDED", "hall-a-x"),
            ("T_PASSWORD", "s3cret"),
            ("T_GREETING", "hello"),
            ("QIS_LISTEN", &format!("127.0.0.1:{port}")),
        ];
        for (k, v) in expected {
            assert_eq!(env[k], v, "{k} in {report}");
        }
        assert_eq!(
            env["T_SECRET_DIR"],
            volumes.join("creds").display().to_string()
        );
        assert_eq!(
            env["T_DATA_DIR"],
            volumes.join("data").display().to_string()
        );
        assert_eq!(
            report["secretFiles"],
            json!({"password": "s3cret", "username": "edge"})
        );
        assert_eq!(report["saFiles"], json!(["ca.crt", "namespace", "token"]));
        assert_eq!(report["saNamespace"], f.ns.as_str());
        assert_eq!(report["tokenIsTheKubeconfigs"], true);
        assert_eq!(report["ownPodUid"], uid.as_str(), "GET of its own pod");
        assert_eq!(
            report["user"],
            format!("system:serviceaccount:{}:prober", f.ns),
            "it is its ServiceAccount"
        );
        assert_eq!(
            report["listSecrets"], 403,
            "and has no more rights than its Role"
        );
        let file = volumes.join("data").join("report.json");
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("report.json"))
                .expect("json");
        assert_eq!(written["ownPodUid"], uid.as_str(), "{}", file.display());
        let log = f
            .work
            .path()
            .join("pods")
            .join(format!("{}_{name}", f.ns))
            .join("program.log");
        assert!(log.exists(), "{}", log.display());
    }
    f.finish().await;
}

/// The process holds its ServiceAccount's identity and nothing more: without a Role its GET
/// of its own pod is forbidden (403) and the pod is not Ready; once a Role is bound, the same
/// process (same token) is allowed and the pod turns Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_talks_as_its_service_account_under_rbac() {
    let f = Fixture::new("identity", &["hall-a"], &[]).await;
    f.service_account("nobody", false);
    f.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "who", "labels": {"app": "who", "qis.dev/site": "hall-a"}},
        "spec": f.pod_spec("hall-a", "nobody", true),
    }));
    let denied = eventually("a report", Duration::from_secs(60), || async {
        f.report("who").await.filter(|r| r["user"].is_string())
    })
    .await;
    assert_eq!(
        denied["user"],
        format!("system:serviceaccount:{}:nobody", f.ns)
    );
    assert_eq!(denied["getOwnPod"], 403, "{denied}");
    assert_eq!(denied["listSecrets"], 403);
    let pod = f.pod("who").await.expect("pod");
    assert!(!is_ready(&pod), "not ready while forbidden");
    let pids = f.agent().pids(&f.ns, "who");
    assert_eq!(pids.len(), 1);

    f.grant_get_pods("nobody");
    let allowed = eventually(
        "GET allowed once bound",
        Duration::from_secs(30),
        || async { f.report("who").await.filter(|r| r["getOwnPod"] == 200) },
    )
    .await;
    assert_eq!(
        allowed["ownPodUid"],
        pod.metadata.uid.as_deref().expect("uid")
    );
    eventually("Ready", Duration::from_secs(20), || async {
        f.pod("who").await.filter(is_ready)
    })
    .await;
    assert_eq!(f.agent().pids(&f.ns, "who"), pids, "the same process");
    f.finish().await;
}

/// Deleting a pod stops its process (SIGTERM within the grace period), the node agent then
/// deletes the pod object, and the ReplicaSet's replacement starts and becomes Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pod_stops_and_its_replacement_starts() {
    let f = Fixture::new("delete", &["hall-a"], &[]).await;
    f.service_account("prober", true);
    f.apply(&deployment(
        "probe",
        2,
        f.pod_spec("hall-a", "prober", true),
    ));
    eventually("readyReplicas=2", Duration::from_secs(90), || async {
        (ready_replicas(&f, "probe").await == 2).then_some(())
    })
    .await;
    let before = f.ready_pods("probe").await;
    let victim = before[0].clone();
    let port = f.agent().pod_port(&f.ns, &victim).expect("port");
    let pid = f.agent().pids(&f.ns, &victim)["program"];
    assert!(PathBuf::from(format!("/proc/{pid}")).exists());
    assert!(
        Http::local(port).get("/healthz").await.answered(),
        "serving before"
    );

    f.cp.kubectl(&["delete", "pod", &victim, "-n", &f.ns, "--wait=false"]);
    eventually("the pod object gone", Duration::from_secs(20), || async {
        f.pod(&victim).await.is_none().then_some(())
    })
    .await;
    assert!(
        !f.agent()
            .running()
            .contains(&(f.ns.clone(), victim.clone())),
        "{:?}",
        f.agent().running()
    );
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "process {pid} is gone"
    );
    assert!(
        !Http::local(port).get("/healthz").await.answered(),
        "nothing serves its port"
    );

    let after = eventually("a Ready replacement", Duration::from_secs(60), || async {
        let now = f.ready_pods("probe").await;
        (now.len() == 2 && !now.contains(&victim)).then_some(now)
    })
    .await;
    let replacement = after
        .iter()
        .find(|p| !before.contains(p))
        .expect("a new pod");
    assert!(
        f.agent()
            .running()
            .contains(&(f.ns.clone(), replacement.clone()))
    );
    eventually("readyReplicas=2 again", Duration::from_secs(30), || async {
        (ready_replicas(&f, "probe").await == 2).then_some(())
    })
    .await;
    f.finish().await;
}

/// A pod whose nodeSelector names a site no node has stays Pending: the scheduler reports it
/// Unschedulable (and a FailedScheduling event); the node agent runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_for_a_missing_site_stays_pending() {
    let f = Fixture::new("pending", &["hall-a"], &[]).await;
    f.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "lost", "labels": {"app": "lost"}},
        "spec": f.pod_spec("hall-z", "default", false),
    }));
    let condition = eventually("PodScheduled=False", Duration::from_secs(60), || async {
        let pod = f.pod("lost").await?;
        pod.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    })
    .await;
    assert_eq!(
        condition.reason.as_deref(),
        Some("Unschedulable"),
        "{condition:?}"
    );
    assert!(
        condition
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("node affinity/selector"),
        "{condition:?}"
    );
    eventually(
        "a FailedScheduling event",
        Duration::from_secs(30),
        || async {
            let out = f.cp.kubectl(&[
                "get",
                "events",
                "-n",
                &f.ns,
                "--field-selector=involvedObject.name=lost,reason=FailedScheduling",
                "-o",
                "name",
            ]);
            (!out.trim().is_empty()).then_some(())
        },
    )
    .await;
    let pod = f.pod("lost").await.expect("pod");
    let status = pod.status.expect("status");
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert!(pod.spec.and_then(|s| s.node_name).is_none(), "not bound");
    assert!(f.agent().running().is_empty(), "{:?}", f.agent().running());
    assert_eq!(f.agent().pod_port(&f.ns, "lost"), None);
    f.finish().await;
}

/// In a `restricted` namespace a pod without the restricted settings is refused at admission
/// (no object, no process); one with them is admitted and runs on the agent's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_refuses_a_pod_before_anything_runs() {
    let f = Fixture::new(
        "psa",
        &["hall-a"],
        &["pod-security.kubernetes.io/enforce=restricted"],
    )
    .await;
    let pod = |name: &str, restricted: bool| {
        let mut spec = f.pod_spec("hall-a", "default", false);
        if restricted {
            spec["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}});
            spec["containers"][0]["securityContext"] = json!({"allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]}});
        }
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "labels": {"app": name}}, "spec": spec})
    };
    let err =
        f.cp.try_kubectl(
            &["apply", "-n", &f.ns, "-f", "-"],
            Some(&pod("loose", false).to_string()),
        )
        .expect_err("refused");
    assert!(err.contains("violates PodSecurity \"restricted"), "{err}");
    assert!(f.pod("loose").await.is_none(), "no object");

    f.apply(&pod("strict", true));
    eventually(
        "the admitted pod running",
        Duration::from_secs(60),
        || async {
            let p = f.pod("strict").await?;
            (p.status?.phase.as_deref() == Some("Running")
                && f.agent()
                    .running()
                    .contains(&(f.ns.clone(), "strict".to_owned())))
            .then_some(())
        },
    )
    .await;
    assert!(
        !f.agent().running().iter().any(|(_, p)| p == "loose"),
        "{:?}",
        f.agent().running()
    );
    assert!(
        !f.work
            .path()
            .join("pods")
            .join(format!("{}_loose", f.ns))
            .exists()
    );
    f.finish().await;
}

/// A crashed process (SIGKILL) is restarted: restartCount 1, lastState terminated with the
/// signal's exit code, Ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_process_is_restarted() {
    let f = Fixture::new("crash", &["hall-a"], &[]).await;
    f.service_account("prober", true);
    f.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crashy", "labels": {"app": "crashy", "qis.dev/site": "hall-a"}},
        "spec": f.pod_spec("hall-a", "prober", true),
    }));
    eventually("Ready", Duration::from_secs(60), || async {
        f.pod("crashy").await.filter(is_ready)
    })
    .await;
    let pid = f.agent().pids(&f.ns, "crashy")["program"];
    assert!(f.agent().kill_process(&f.ns, "crashy"));
    let cs = eventually("restarted and Ready", Duration::from_secs(60), || async {
        let p = f.pod("crashy").await.filter(is_ready)?;
        let cs = p.status?.container_statuses?.into_iter().next()?;
        (cs.restart_count == 1).then_some(cs)
    })
    .await;
    let last = cs.last_state.and_then(|s| s.terminated).expect("lastState");
    assert_eq!(last.exit_code, 137, "{last:?}");
    assert_ne!(
        f.agent().pids(&f.ns, "crashy")["program"],
        pid,
        "a new process"
    );
    f.finish().await;
}
