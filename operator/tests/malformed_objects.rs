//! One object cannot stop the others, on the real API server. A `QisSwarm` and a `QisSubject`
//! that do not deserialize (stored while the CRDs had a looser schema, as objects of an older
//! or newer CRD version are) are present when the operator and an agent start: the operator
//! reports both and reconciles everything else; the agent serves its swarm's other subjects.
//!
//! This binary changes the CRDs, so it has a control plane of its own (each test binary
//! starts one).

use kube::Client;
use kube::api::{Api, PostParams};
use qis_crds::{QisSubject, QisSubjectSpec, QisSwarm, QisSwarmSpec, SiteSpec, SwarmRef};
use qis_testkit::controlplane::{ControlPlane, DumpOnFailure};
use qis_testkit::http::Http;
use qis_testkit::{KillOnDrop, NatsServer};
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::Duration;

const NS: &str = "plant";
const WAIT: Duration = Duration::from_secs(60);

/// Replaces the `spec` schema of CRD `name` with "any object" (and drops the root CEL rule).
fn loosen(cp: &ControlPlane, name: &str) {
    let mut crd: Value =
        serde_json::from_str(&cp.kubectl(&["get", "crd", name, "-o", "json"])).expect("crd json");
    let schema = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    schema["properties"]["spec"] =
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    if let Some(root) = schema.as_object_mut() {
        root.remove("x-kubernetes-validations");
    }
    cp.kubectl_stdin(&["replace", "-f", "-"], Some(&crd.to_string()));
}

/// Puts the generated CRDs back.
fn restore(cp: &ControlPlane) {
    let crds = qis_testkit::workspace_root().join("crds");
    for f in ["qis.dev_qisswarms.yaml", "qis.dev_qissubjects.yaml"] {
        cp.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &crds.join(f).to_string_lossy(),
        ]);
    }
}

/// Creates `manifest` with kubectl, retrying while the API server still serves the previous
/// schema (a CRD update takes effect within moments, not at once).
async fn create_eventually(cp: &ControlPlane, manifest: &Value) {
    qis_testkit::eventually("the malformed object is stored", WAIT, || async {
        cp.try_kubectl(&["create", "-f", "-"], Some(&manifest.to_string()))
            .ok()
    })
    .await;
}

async fn admin_client(cp: &ControlPlane) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

/// `(status, reason, message)` of condition `type_` of object `kind/name`, read as JSON (the
/// malformed objects cannot be read as our types).
fn condition(
    cp: &ControlPlane,
    kind: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let out = cp
        .try_kubectl(&["get", kind, name, "-n", NS, "-o", "json"], None)
        .ok()?;
    let obj: Value = serde_json::from_str(&out).ok()?;
    let c = obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

async fn wait_condition(
    cp: &ControlPlane,
    kind: &str,
    name: &str,
    type_: &str,
    status: &str,
) -> (String, String, String) {
    qis_testkit::eventually(&format!("{kind}/{name} {type_}={status}"), WAIT, || async {
        condition(cp, kind, name, type_).filter(|(s, _, _)| s == status)
    })
    .await
}

fn subject(name: &str, problem_class: &str) -> QisSubject {
    QisSubject::new(
        name,
        QisSubjectSpec {
            swarm_ref: SwarmRef {
                name: "plant".into(),
            },
            domain: "predictive-maintenance".into(),
            problem_class: Some(problem_class.into()),
            ..Default::default()
        },
    )
}

/// Proves a malformed swarm and a malformed subject present at start stop nothing else: the
/// operator reports each `InvalidSpec` and makes the good swarm's consumers; an agent of the
/// good swarm binds both of its good subjects. Before, the operator's swarm cache (a typed
/// watch) could not list the swarms, so every subject reconcile waited for it; and the agent's
/// typed subject watch failed its whole list, so it served no subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_objects_present_at_start_stop_nothing_else() {
    let cp = ControlPlane::shared();
    let _dump = DumpOnFailure {
        cp,
        namespace: NS.into(),
    };
    cp.namespace(NS, &[]);
    let nats = NatsServer::start();

    loosen(cp, "qisswarms.qis.dev");
    loosen(cp, "qissubjects.qis.dev");
    let broken = json!({
        "apiVersion": "qis.dev/v1alpha1", "kind": "QisSwarm",
        "metadata": {"name": "broken", "namespace": NS},
        "spec": {"sites": "everywhere", "stream": {"replicas": "three"}},
    });
    let garbled = json!({
        "apiVersion": "qis.dev/v1alpha1", "kind": "QisSubject",
        "metadata": {"name": "garbled", "namespace": NS},
        "spec": {"swarmRef": {"name": "plant"}, "domain": "hvac", "synthesis": {"quorum": "two"}},
    });
    create_eventually(cp, &broken).await;
    create_eventually(cp, &garbled).await;
    restore(cp);
    // The real schema is back: the same object is refused now.
    qis_testkit::eventually("the generated schema is served again", WAIT, || async {
        let mut again = garbled.clone();
        again["metadata"]["name"] = json!("garbled-again");
        cp.try_kubectl(
            &["create", "--dry-run=server", "-f", "-"],
            Some(&again.to_string()),
        )
        .err()
        .filter(|e| e.contains("quorum"))
    })
    .await;

    // The operator starts with both present.
    let dir = tempfile::tempdir().expect("tmp");
    let (kubeconfig, _) = cp.operator_identity("qis-operator", "qis-system", &[], dir.path());
    let port = qis_testkit::free_port();
    let _operator = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_qis-operator"))
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "warn,qis_operator=info")
            .env("QIS_WATCH_NAMESPACE", NS)
            .env("POD_NAMESPACE", NS)
            .args([
                "--nats-url",
                &nats.url(),
                "--resync",
                "5s",
                "--nats-timeout",
                "2s",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--scratch-dir")
            .arg(dir.path().join("scratch"))
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("QIS_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("operator"),
    );

    let client = admin_client(cp).await;
    let swarms: Api<QisSwarm> = Api::namespaced(client.clone(), NS);
    let subjects: Api<QisSubject> = Api::namespaced(client.clone(), NS);
    let plant = QisSwarm::new(
        "plant",
        QisSwarmSpec {
            sites: vec![SiteSpec {
                name: "a".into(),
                replicas: 1,
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    swarms
        .create(&PostParams::default(), &plant)
        .await
        .expect("swarm");
    for s in [
        subject("bearing", "bearing-wear"),
        subject("hvac", "energy"),
    ] {
        subjects
            .create(&PostParams::default(), &s)
            .await
            .expect("subject");
    }
    for name in ["bearing", "hvac"] {
        wait_condition(cp, "qissubject", name, "ConsumersReady", "True").await;
    }
    for (kind, name, field) in [
        ("qisswarm", "broken", "spec.sites"),
        ("qissubject", "garbled", "spec.synthesis.quorum"),
    ] {
        let (_, reason, message) = wait_condition(cp, kind, name, "Ready", "False").await;
        assert_eq!(reason, "InvalidSpec", "{kind}/{name}: {message}");
        assert!(
            message.contains(&format!("does not match the schema: {field}:")),
            "{kind}/{name} names {field}: {message}"
        );
    }

    // An agent of site a (a local process in cluster mode, as its pod would run it).
    let agent_port = qis_testkit::free_port();
    let data = tempfile::tempdir().expect("tmp");
    let _agent = KillOnDrop(
        Command::new(qis_testkit::workspace_binary("qis-agent"))
            .arg("run")
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("RUST_LOG", "warn,qis_agent=info")
            .env("QIS_NATS_URL", nats.url())
            .env("QIS_POD_NAME", "plant-agent-a-local")
            .env("QIS_SITE", "a")
            .env(
                "QIS_SUBJECT_PREFIX",
                qis_crds::addressing::default_prefix(NS, "plant"),
            )
            .env("QIS_STREAM", qis_crds::addressing::stream_name(NS, "plant"))
            .env("QIS_NAMESPACE", NS)
            .env("QIS_SWARM", "plant")
            .env("QIS_LISTEN", format!("127.0.0.1:{agent_port}"))
            .env("QIS_DATA_DIR", data.path())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("QIS_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("agent"),
    );
    let bound = qis_testkit::eventually("the agent binds both good subjects", WAIT, || async {
        let views = Http::local(agent_port).get_json("/v1/consensus").await?;
        let mut bound: Vec<String> = views
            .as_array()?
            .iter()
            .filter(|v| v["bound"] == true)
            .filter_map(|v| v["subject"].as_str().map(str::to_owned))
            .collect();
        bound.sort();
        (bound.len() == 2).then_some(bound)
    })
    .await;
    assert_eq!(bound, ["bearing", "hvac"]);
}
