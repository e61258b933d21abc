//! Proves sites follow the spec and the Nodes: a removed site loses its Deployment and
//! consumers, one site's failure stays that site's, discovery from node labels adds sites, and
//! discovery asked for without node access is reported rather than refused.

use super::cluster::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use qis_testkit::controlplane::ControlPlane;
use serde_json::json;
use std::time::Duration;

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
