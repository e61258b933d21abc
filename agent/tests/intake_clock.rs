//! The intake's time bounds against the real `qis-agent` binary (standalone) and a real
//! nats-server: a packet stamped more than `maxClockSkew` ahead of the agent's clock, older
//! than the window, or before 2020 (an unset clock) is refused 422 naming its rule and counted
//! by it; a packet on the edge of either bound is taken; batches name each refused line.

mod intake_support;

use intake_support::*;
use qis_testkit::NatsServer;

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_qis-agent"))
}

async fn post(agent: &AgentProc, body: String) -> (u16, String, String) {
    let a = agent.http.post("/v1/outcomes", body, &[]).await;
    let error = a.json()["error"].as_str().unwrap_or_default().to_owned();
    (a.status, a.rule(), error)
}

/// Proves each time rule of an agent that follows no subject (the documented defaults: 30 s
/// ahead, 1 h back): refused 422 with the rule in the body and in the counter, the edges
/// taken, and the measured attack (10^6 s ahead) refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_outside_the_default_bounds_are_refused_by_rule() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentProc::start(bin(), &nats.url(), dir.path(), "{}").await;
    let now = now();
    let at = |i, ts| packet_at("hvac", "energy", i, ts);
    // The edges, with a margin for the time the request takes (the agent's clock moves on).
    assert_eq!(post(&agent, at(1, now + 29.5)).await.0, 202, "skew edge");
    assert_eq!(
        post(&agent, at(2, now - 3595.0)).await.0,
        202,
        "window edge"
    );
    let (code, rule, error) = post(&agent, at(3, now + 1e6)).await;
    assert_eq!(
        (code, rule.as_str()),
        (422, "timestamp_in_future"),
        "{error}"
    );
    assert!(error.contains("maxClockSkew of 30s"), "{error}");
    let (code, rule, _) = post(&agent, at(4, now + 32.0)).await;
    assert_eq!((code, rule.as_str()), (422, "timestamp_in_future"));
    let (code, rule, error) = post(&agent, at(5, now - 3601.0)).await;
    assert_eq!((code, rule.as_str()), (422, "timestamp_too_old"), "{error}");
    assert!(error.contains("window of 3600s"), "{error}");
    let (code, rule, error) = post(&agent, at(6, 1.0)).await;
    assert_eq!((code, rule.as_str()), (422, "clock_unset"), "{error}");
    assert!(error.contains("clock looks unset"), "{error}");
    agent.wait_refused("timestamp_in_future", 2).await;
    agent.wait_refused("timestamp_too_old", 1).await;
    agent.wait_refused("clock_unset", 1).await;
    assert_eq!(agent.metric("qis_agent_packets_in_total", &[]).await, 2.0);
}

/// Proves a batch with packets outside the bounds is refused whole, naming every refused line
/// and its rule, each counted; nothing of it is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_names_each_line_outside_the_bounds() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentProc::start(bin(), &nats.url(), dir.path(), "{}").await;
    let now = now();
    let lines = [
        packet_at("hvac", "energy", 1, now),
        packet_at("hvac", "energy", 2, now + 1e6),
        packet_at("hvac", "energy", 3, now - 7200.0),
        packet_at("hvac", "energy", 4, 1_000_000.0),
    ];
    let a = agent
        .http
        .post("/v1/outcomes/batch", lines.join("\n"), &[])
        .await;
    assert_eq!((a.status, a.rule().as_str()), (422, "timestamp_in_future"));
    let refused: Vec<(u64, String)> = a.json()["refused"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|l| (l["line"].as_u64().unwrap_or(0), l["rule"].to_string()))
                .collect()
        })
        .unwrap_or_default();
    let want = [
        (2, "\"timestamp_in_future\""),
        (3, "\"timestamp_too_old\""),
        (4, "\"clock_unset\""),
    ]
    .map(|(n, r)| (n, r.to_owned()));
    assert_eq!(refused, want, "{}", a.body);
    for rule in ["timestamp_in_future", "timestamp_too_old", "clock_unset"] {
        agent.wait_refused(rule, 1).await;
    }
    assert_eq!(agent.metric("qis_agent_packets_in_total", &[]).await, 0.0);
}

/// Proves the standalone config's bounds are the intake's: the defaults (`synthesis:`) when no
/// subject follows, a followed subject's own window for its packets, and the largest window of
/// the followed subjects for an address none follows (said in the refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bounds_are_those_of_the_config_and_its_subjects() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let lone = AgentProc::start_with(
        bin(),
        &nats.url(),
        dir.path(),
        "{}",
        "synthesis: {maxClockSkew: 5s, window: 10m}\n",
    )
    .await;
    let now = now();
    let at = |i, ts| packet_at("hvac", "energy", i, ts);
    assert_eq!(post(&lone, at(1, now + 4.5)).await.0, 202);
    assert_eq!(
        post(&lone, at(2, now + 10.0)).await.1,
        "timestamp_in_future"
    );
    assert_eq!(post(&lone, at(3, now - 700.0)).await.1, "timestamp_too_old");
    let following = AgentProc::start_with(
        bin(),
        &nats.url(),
        dir.path(),
        "{}",
        "subjects:\n- {name: hvac, domain: hvac, synthesis: {window: 2m}}\n\
         - {name: water, domain: water, synthesis: {window: 20m}}\n",
    )
    .await;
    let now = self::now();
    let (code, rule, error) = post(&following, at(4, now - 300.0)).await;
    assert_eq!((code, rule.as_str()), (422, "timestamp_too_old"), "{error}");
    assert!(error.contains("window of 120s"), "{error}");
    let power = |i, ts| packet_at("power", "grid", i, ts);
    assert_eq!(post(&following, power(5, now - 300.0)).await.0, 202);
    let (_, rule, error) = post(&following, power(6, now - 1300.0)).await;
    assert_eq!(rule, "timestamp_too_old");
    assert!(
        error.contains("window of 1200s") && error.contains("none follows"),
        "{error}"
    );
}
