//! Proves the operator's RBAC is exactly what its code calls: nothing forbidden under the
//! chart's ClusterRole, and every grant used (from the API server's audit log).

use super::cluster::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use qis_crds::{QisSubject, QisSwarm};
use qis_testkit::controlplane::ControlPlane;
use serde_json::json;

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
