//! Proves an operator killed in the middle of a large reconcile converges after a restart,
//! with no orphaned and no missing consumers.

use super::cluster::*;
use kube::api::{DeleteParams, ListParams, PostParams};

/// Proves an operator killed in the middle of reconciling 200 subjects converges after a
/// restart, with exactly the consumers the subjects ask for (none orphaned, none missing), and
/// that deleting half the subjects leaves exactly the other half's consumers.
// Multi-threaded: 200 subjects keep the client busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_mid_reconcile_converges_without_orphans() {
    let mut c = Cluster::start().await;
    // One reconcile at a time, so that the kill below lands while most subjects are still
    // waiting (the default concurrency finishes 200 subjects before a poll sees 20 of them).
    c.restart_operator(&["--concurrency", "1"]);
    let pp = PostParams::default();
    c.swarms()
        .create(&pp, &swarm("plant", None, &["a", "b"]))
        .await
        .expect("swarm");
    swarm_condition(&c, "plant", "Ready", "True", None).await;
    for i in 0..200 {
        c.subjects()
            .create(
                &pp,
                &subject(&format!("s{i:03}"), "plant", &format!("class-{i}")),
            )
            .await
            .expect("subject");
    }
    let ready = |c: &Cluster| {
        let api = c.subjects();
        async move {
            api.list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|s| {
                            s.status.as_ref().is_some_and(|st| {
                                qis_operator::conditions::is_true(&st.conditions, "Ready")
                                    == Some(true)
                            })
                        })
                        .count()
                })
                .unwrap_or(0)
        }
    };
    eventually("some subjects reconciled", || async {
        (ready(&c).await >= 20).then_some(())
    })
    .await;
    let _ = c.operator.kill();
    let _ = c.operator.wait();
    let done_before = ready(&c).await;
    eprintln!("operator killed with {done_before} of 200 subjects Ready");
    assert!(
        done_before < 200,
        "killed mid-reconcile ({done_before} of 200 done)"
    );
    c.restart_operator(&[]);
    eventually("all 200 subjects Ready after the restart", || async {
        (ready(&c).await == 200).then_some(())
    })
    .await;
    let js = c.js().await;
    let mut want: Vec<String> = (0..200)
        .flat_map(|i| ["a", "b"].map(|s| format!("s{i:03}_{s}")))
        .collect();
    want.sort();
    // Subjects Ready before the kill are reconciled again by the new operator in any order;
    // the consumers must converge to exactly the wanted set (no orphan, none missing).
    let differences = || async {
        let got = consumer_names(&js, &c.stream("plant")).await;
        let extra: Vec<String> = got.iter().filter(|n| !want.contains(n)).cloned().collect();
        let missing: Vec<String> = want.iter().filter(|n| !got.contains(n)).cloned().collect();
        (extra, missing)
    };
    let converged = qis_testkit::poll_for(WAIT, || async {
        let (extra, missing) = differences().await;
        (extra.is_empty() && missing.is_empty()).then_some(())
    })
    .await;
    if converged.is_none() {
        let (extra, missing) = differences().await;
        panic!("orphaned consumers {extra:?}; missing {missing:?}");
    }
    for i in 0..100 {
        c.subjects()
            .delete(&format!("s{i:03}"), &DeleteParams::default())
            .await
            .expect("delete");
    }
    let rest: Vec<String> = want
        .iter()
        .filter(|n| n.as_str() >= "s100")
        .cloned()
        .collect();
    eventually("exactly the remaining subjects' consumers", || async {
        (consumer_names(&js, &c.stream("plant")).await == rest).then_some(())
    })
    .await;
}
