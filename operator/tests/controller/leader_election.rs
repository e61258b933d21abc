//! Proves leader election: of two replicas exactly one acts, and the standby takes over when
//! the leader dies.

use super::cluster::*;
use kube::api::{Api, PostParams};

/// Proves leader election: of two replicas with `--leader-elect`, exactly one is ready and
/// holds the Lease; when it dies, the other takes the lease over and acts.
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
        answers_ok(leader_port, "/readyz").await.then_some(())
    })
    .await;
    // The standby is ready too (a rolling update of two replicas completes) and does not act.
    eventually("standby ready", || async {
        answers_ok(standby_port, "/readyz").await.then_some(())
    })
    .await;
    assert_eq!(metric(standby_port, "qis_operator_leader").await, Some(0.0));
    assert_eq!(metric(leader_port, "qis_operator_leader").await, Some(1.0));
    c.ready_swarm("plant", &[]).await;

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
        (metric(standby_port, "qis_operator_leader").await == Some(1.0)).then_some(())
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
