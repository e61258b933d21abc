//! Proves what the operator does with specs it cannot carry out: invalid fields, an agent env
//! naming an operator variable, overlapping subject spaces and an unsupported change are
//! reported by condition and reason, destroy nothing and do not stall other swarms.

use super::cluster::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use qis_crds::QisSwarm;
use serde_json::json;
use std::time::Duration;

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
    c.ready_swarm("plant", &[]).await;
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
