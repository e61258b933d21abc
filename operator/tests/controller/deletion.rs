//! Proves deletion: the `delete` and `retain` policies, a deleted subject taking its consumers,
//! finalizers released, and foreground deletion by the real garbage collector.

use super::cluster::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use qis_crds::{DeletionPolicy, QisSwarm};

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
