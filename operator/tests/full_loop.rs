//! The whole loop on one machine: the real control plane (`qis_testkit::controlplane`), the
//! node agent running the agent Deployments' pods as real `qis-agent` processes under their
//! ServiceAccounts, a real nats-server, and the real operator under the RBAC the chart renders.
//! Sites deposit outcomes through the agents' intake; the agents converge; one agent writes the
//! consensus into the QisSubject status; when its pod is deleted, another takes over.

use k8s_openapi::api::core::v1::{EnvVar, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use qis_crds::{QisSubject, QisSubjectSpec, QisSwarm, QisSwarmSpec, SiteSpec, SwarmRef};
use qis_nodeagent::{NodeAgent, NodeAgentConfig, NodeSpec};
use qis_testkit::NatsServer;
use qis_testkit::controlplane::{ControlPlane, DumpOnFailure};
use qis_testkit::http::Http;
use std::process::{Command, Stdio};
use std::time::Duration;

const NS: &str = "factory";
const WAIT: Duration = Duration::from_secs(60);

/// Polls `f` until it returns `Some`, or fails the test after `WAIT` saying what it waited for.
async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    qis_testkit::eventually(what, WAIT, f).await
}

fn outcome(agent: &str, site: &str) -> String {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    serde_json::json!({"agent_id": agent, "domain": "predictive-maintenance", "problem_class": "bearing-wear",
        "conclusion": format!("bearing wear at {site}"), "confidence": 0.85, "context_vector": [0.3, 0.9],
        "timestamp": ts, "source_node": site})
    .to_string()
}

/// Proves the local full loop and single-reporter failover: three sites converge, exactly one
/// agent writes `status.consensus` (field manager qis-agent) next to the operator's
/// conditions, and another agent takes over when the reporter's pod is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_sites_converge_and_one_agent_reports_with_failover() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let cp = ControlPlane::shared();
    cp.namespace(NS, &["pod-security.kubernetes.io/enforce=restricted"]);
    let _dump = DumpOnFailure {
        cp,
        namespace: NS.into(),
    };
    let (operator_kubeconfig, _) =
        cp.operator_identity("qis-operator", "qis-system", &[], dir.path());
    let _nodes = NodeAgent::start(NodeAgentConfig {
        kubeconfig: cp.kubeconfig.clone(),
        nodes: ["edge-1", "edge-2", "edge-3"]
            .iter()
            .map(|n| NodeSpec::new(n, &[]))
            .collect(),
        default_binary: qis_testkit::workspace_binary("qis-agent"),
        work_dir: dir.path().join("pods"),
        ..Default::default()
    })
    .await
    .expect("node agent");
    let _operator = qis_testkit::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_qis-operator"))
            .env("KUBECONFIG", &operator_kubeconfig)
            .env("POD_NAMESPACE", "qis-system")
            .args([
                "--nats-url",
                &nats.url(),
                "--resync",
                "2s",
                "--listen",
                &format!("127.0.0.1:{}", qis_testkit::free_port()),
            ])
            .arg("--scratch-dir")
            .arg(dir.path().join("scratch"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("operator"),
    );
    let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
    let client = Client::try_from(
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config"),
    )
    .expect("client");
    let mut spec = QisSwarmSpec {
        subject_prefix: Some("qis.campus".into()),
        sites: ["hall-a", "hall-b", "hall-c"]
            .iter()
            .map(|s| SiteSpec {
                name: (*s).into(),
                replicas: 1,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    spec.agent.env = vec![EnvVar {
        name: "QIS_REPORT_INTERVAL".into(),
        value: Some("1s".into()),
        ..Default::default()
    }];
    let swarms: Api<QisSwarm> = Api::namespaced(client.clone(), NS);
    swarms
        .create(&PostParams::default(), &QisSwarm::new("campus", spec))
        .await
        .expect("swarm");
    let subjects: Api<QisSubject> = Api::namespaced(client.clone(), NS);
    let subject = QisSubjectSpec {
        swarm_ref: SwarmRef {
            name: "campus".into(),
        },
        domain: "predictive-maintenance".into(),
        problem_class: Some("bearing-wear".into()),
        ..Default::default()
    };
    subjects
        .create(&PostParams::default(), &QisSubject::new("wear", subject))
        .await
        .expect("subject");

    // The agents run and are ready (consumers bound): the swarm says AgentsReady.
    eventually("swarm Ready with its agents", || async {
        let s = swarms.get("campus").await.ok()?;
        s.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let port_of = |p: &Pod| {
        p.annotations()
            .get(qis_nodeagent::PORT_ANNOTATION)
            .and_then(|v| v.parse::<u16>().ok())
    };
    let running = pods.list(&ListParams::default()).await.expect("pods").items;
    assert_eq!(running.len(), 3, "one agent per site");
    for (i, p) in running.iter().enumerate() {
        let site = p.labels().get("qis.dev/site").cloned().unwrap_or_default();
        let port = port_of(p).expect("port");
        assert_eq!(
            Http::local(port)
                .post("/v1/outcomes", outcome(&format!("sensor-{i}"), &site), &[])
                .await
                .status,
            202
        );
    }

    let reported = eventually("consensus of 3 agents in the QisSubject status", || async {
        let s = subjects.get("wear").await.ok()?;
        let c = s.status?.consensus?;
        (c.agents == 3).then_some(c)
    })
    .await;
    assert!(reported.alert);
    assert!(
        running
            .iter()
            .any(|p| p.name_any() == reported.reporting_agent),
        "a running agent reports: {reported:?}"
    );
    let s = subjects
        .get("wear")
        .await
        .expect("subject")
        .status
        .expect("status");
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "the operator's conditions stay"
    );

    pods.delete(&reported.reporting_agent, &DeleteParams::default())
        .await
        .expect("delete the reporter");
    let next = eventually("another agent takes over reporting", || async {
        let c = subjects.get("wear").await.ok()?.status?.consensus?;
        (c.reporting_agent != reported.reporting_agent && !c.reporting_agent.is_empty())
            .then_some(c)
    })
    .await;
    assert_eq!(next.agents, 3, "the new reporter has the same consensus");
}
