//! Proves the operator writes to the API server only when something changed: drift is put
//! back, traffic does not make it write continuously, and a steady swarm costs no writes
//! (read from the operator's `qis_operator_api_writes_total`).

use super::cluster::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;

/// Proves drift revert: a stream edited behind the operator's back is put back at the next
/// resync, with a Drifted event.
#[tokio::test]
async fn drifted_stream_is_put_back() {
    let c = Cluster::start().await;
    c.ready_swarm("plant", &[]).await;
    let js = c.js().await;
    let mut cfg = js
        .get_stream(&c.stream("plant"))
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    cfg.max_bytes = 4096;
    js.update_stream(&cfg).await.expect("edit");
    let stream = c.stream("plant");
    eventually("max_bytes reverted", || {
        let (js, stream) = (js.clone(), stream.clone());
        async move {
            let info = js.get_stream(&stream).await.ok()?.cached_info().clone();
            (info.config.max_bytes == 50 * 1024 * 1024).then_some(())
        }
    })
    .await;
    eventually("Drifted event", || async {
        (!events_with_reason(&c, "Drifted").await.is_empty()).then_some(())
    })
    .await;
}

/// The operator's `qis_operator_api_writes_total` on `port` (summed over its labels; 0 before
/// its first write), `None` when the operator did not answer.
async fn api_writes(port: u16) -> Option<f64> {
    Some(metrics(port).await?.count("qis_operator_api_writes_total"))
}

/// Proves traffic does not make the operator write continuously: while packets flow into the
/// stream (its counters in the swarm's status change with each one), the status is written at
/// most about once per resync (2 s here), not once per status write that re-triggered the
/// reconcile (what the operator did before: a write, a watch event, a reconcile, new counters,
/// a write …). Bounded: 240 packets over 12 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_does_not_make_the_operator_write_continuously() {
    let c = Cluster::start().await;
    c.swarms()
        .create(
            &PostParams::default(),
            &swarm("plant", Some("qis.iot"), &["a"]),
        )
        .await
        .expect("swarm");
    swarm_condition(&c, "plant", "StreamReady", "True", None).await;
    let js = c.js().await;
    let before = api_writes(c.port).await.expect("metrics");
    let started = tokio::time::Instant::now();
    for i in 0..240u32 {
        js.publish("qis.iot.hvac.energy-anomaly", format!("packet {i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        tokio::time::sleep_until(started + Duration::from_millis(50) * (i + 1)).await;
    }
    let window = started.elapsed().as_secs_f64();
    let writes = api_writes(c.port).await.expect("metrics") - before;
    let bound = (window / 2.0).ceil() + 3.0;
    assert!(
        writes <= bound,
        "{writes} writes in {window:.1} s of traffic (at most {bound}: one per resync)"
    );
    let st = c
        .swarms()
        .get("plant")
        .await
        .expect("swarm")
        .status
        .expect("status");
    assert!(
        st.stream.expect("stream status").messages > 0,
        "the counters are still refreshed"
    );
}

/// Proves a steady swarm costs no writes: after it is Ready, three resyncs (drift checks of
/// the stream, consumers, Deployments and RBAC) write nothing to the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_makes_no_writes() {
    let c = Cluster::start().await;
    c.swarms()
        .create(
            &PostParams::default(),
            &swarm("plant", None, &["a", "b", "c"]),
        )
        .await
        .expect("swarm");
    c.subjects()
        .create(
            &PostParams::default(),
            &subject("wear", "plant", "bearing-wear"),
        )
        .await
        .expect("subject");
    swarm_condition(&c, "plant", "Ready", "True", None).await;
    subject_condition(&c, "wear", "Ready", "True", None).await;
    // Settled: no write across two resync periods (the last status writes of converging can
    // come after Ready on a loaded machine). An operator that writes every resync never
    // settles and fails here.
    let before = eventually("no API writes across two resyncs", || async {
        let first = api_writes(c.port).await?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        (api_writes(c.port).await? == first).then_some(first)
    })
    .await;
    // Then three more resyncs write nothing either.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = api_writes(c.port).await.expect("metrics");
    assert!(before > 0.0, "the first reconciles wrote");
    assert_eq!(after, before, "no writes at steady state");
    // A child edited behind the operator's back is still put back.
    let d: Api<Deployment> = Api::namespaced(c.client.clone(), &c.ns);
    d.patch(
        "plant-agent-a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .expect("edit");
    eventually("the edited Deployment is put back", || async {
        (d.get("plant-agent-a").await.ok()?.spec?.replicas == Some(1)).then_some(())
    })
    .await;
}
