//! Proves the main path of a swarm and its subjects: they become Ready with the stream, the
//! per-site consumers, the Deployments and the agents' RBAC; a subject waits for its swarm; the
//! user's `kubectl apply` / `kubectl get` path; the stream's live state in the status.

use super::cluster::*;
use async_nats::jetstream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use qis_testkit::controlplane::ControlPlane;
use std::process::Command;

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

/// Proves the live stream state is refreshed on resync: packets deposited show up in
/// `status.stream.messages`.
#[tokio::test]
async fn stream_state_is_refreshed() {
    let c = Cluster::start().await;
    c.ready_swarm("plant", &[]).await;
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
