//! Proves `spec.agent.persistence` on the real API server: nonsense refused at admission, one
//! outbox claim per site mounted by its Deployment, unsupported changes reported, the claims
//! removed with the swarm.

use super::cluster::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

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
