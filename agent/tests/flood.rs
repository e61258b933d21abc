//! A flood of invented agent ids on one subject, against the real agent binary and a real
//! nats-server: published straight into the stream (as any client with publish rights on the
//! subject can), 1,000,000 packets each naming another agent, with three honest halls posting
//! throughout. The agent takes every packet (none lost or refused by rule), the window stays at
//! its limits (evictions counted), and its peak RSS stays inside the agent pod's 64 MiB limit.
//!
//! `QIS_FLOOD_PACKETS` sets the flood: CI runs 200,000 in debug (about 30 s on 2 cores);
//! `QIS_FLOOD_PACKETS=1000000 cargo test --release -p qis-agent --test flood -- --nocapture`
//! is the full run (`docs/benchmarks.md`, attacks).

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use qis_testkit::http::Http;
use qis_testkit::{KillOnDrop, NatsServer};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STREAM: &str = "QIS_FLOOD";
const PREFIX: &str = "qis.flood";
const SUBJECT: &str = "qis.flood.predictive-maintenance.bearing-wear";
/// The agent pod's default memory limit (`operator/src/workload.rs`).
const POD_LIMIT_KIB: u64 = 64 * 1024;

fn body(agent: &str, confidence: f64, timestamp: f64) -> String {
    format!(
        "{{\"agent_id\": \"{agent}\", \"domain\": \"predictive-maintenance\", \"problem_class\": \"bearing-wear\", \"conclusion\": \"wear\", \"confidence\": {confidence}, \"context_vector\": [0.5], \"timestamp\": {timestamp}, \"source_node\": \"{agent}\"}}"
    )
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The value of metric `name` summed over the label sets carrying `filter`, 0 when absent;
/// `None` when the agent did not answer.
async fn metric(http: &Http, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
    Some(http.metrics().await?.count_where(name, filter))
}

/// Peak resident set of process `pid`, KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_invented_agents_on_one_subject_stay_within_the_limits() {
    let flood: usize = std::env::var("QIS_FLOOD_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec![format!("{PREFIX}.>")],
        // The default 200,000 packets store far less than this; JetStream reserves max_bytes
        // of the disk up front (2 GiB was refused once with a few GiB free).
        max_bytes: 1024 * 1024 * 1024,
        duplicate_window: Duration::from_secs(10),
        ..Default::default()
    })
    .await
    .expect("stream");

    let dir = tempfile::tempdir().expect("tmp");
    let port = qis_testkit::free_port();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "agentId: hall-a-agent\nsite: hall-a\nnats: {{url: \"{}\"}}\nsubjectPrefix: {PREFIX}\nstream: {STREAM}\nmanageJetstream: true\nlisten: 127.0.0.1:{port}\ndataDir: {}\nsubjects:\n- {{name: wear, domain: predictive-maintenance, problemClass: bearing-wear}}\nsynthesis: {{window: 1h, quorum: 2, maxVoters: 10000, maxPackets: 100000}}\n",
            nats.url(),
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let agent = KillOnDrop(
        Command::new(qis_testkit::workspace_binary("qis-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent"),
    );
    let pid = agent.0.id();
    let http = Http::local(port);
    qis_testkit::eventually("the agent ready", Duration::from_secs(30), || async {
        let a = http.get("/readyz").await;
        (a.status == 200 && a.body.starts_with("ready")).then_some(())
    })
    .await;

    // The flood, pipelined in windows of acknowledged publishes, with the halls among it.
    let started = Instant::now();
    let t0 = now();
    let mut sent = 0usize;
    let mut honest = 0usize;
    let window = 2048;
    for chunk in 0..flood.div_ceil(window) {
        let mut acks = Vec::with_capacity(window + 3);
        for i in chunk * window..((chunk + 1) * window).min(flood) {
            let mut h = HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("flood-{i}").as_str());
            let b = body(&format!("invented-{i}"), 0.1, t0 + i as f64 * 1e-6);
            acks.push(
                js.publish_with_headers(SUBJECT, h, b.into())
                    .await
                    .expect("publish"),
            );
        }
        if chunk % 64 == 0 {
            for hall in ["hall-a", "hall-b", "hall-c"] {
                let mut h = HeaderMap::new();
                h.insert("Nats-Msg-Id", format!("{hall}-{chunk}").as_str());
                let b = body(hall, 0.9, now());
                acks.push(
                    js.publish_with_headers(SUBJECT, h, b.into())
                        .await
                        .expect("publish"),
                );
                honest += 1;
            }
        }
        let n = acks.len();
        for ack in acks {
            ack.await.expect("stored");
        }
        sent += n;
    }
    let published = started.elapsed();

    // Every packet taken in by the agent: none lost, none refused by a packet rule.
    let total = (flood + honest) as f64;
    let deadline = Duration::from_secs(600);
    let twins_in = || metric(&http, "qis_agent_twins_in_total", &[]);
    if qis_testkit::poll_for(deadline, || async {
        twins_in().await.filter(|n| *n >= total)
    })
    .await
    .is_none()
    {
        panic!("the agent took {:?} of {total} packets", twins_in().await);
    }
    let consumed = started.elapsed();
    assert_eq!(sent as f64, total);
    let refused = http
        .metrics()
        .await
        .expect("metrics")
        .series("qis_agent_packets_refused_total")
        .cloned()
        .collect::<Vec<_>>();
    assert!(refused.is_empty(), "refused: {refused:?}");

    // The window at its limits, the rest counted.
    let view: Value = http.get_json("/v1/consensus/wear").await.expect("view");
    let agents = view["consensus"]["agents"].as_u64().expect("agents");
    assert_eq!(agents, 10_000.min(flood as u64 + 3), "{view}");
    // Counted at the worker's next snapshot tick (every 250 ms).
    let voters = || {
        metric(
            &http,
            "qis_agent_synthesis_evictions_total",
            &[("subject", "wear"), ("reason", "voters")],
        )
    };
    let expected = (flood + 3).saturating_sub(10_000) as f64;
    let Some(evicted_voters) = qis_testkit::poll_for(Duration::from_secs(10), || async {
        voters().await.filter(|n| *n == expected)
    })
    .await
    else {
        panic!("voters evicted: {:?}, expected {expected}", voters().await);
    };

    let peak = peak_rss_kib(pid).expect("VmHWM");
    println!(
        "| flood of {flood} invented agent ids on one subject (+{honest} honest packets) | published in {:.1} s, consumed in {:.1} s | peak RSS {:.1} MiB | evicted: voters {evicted_voters} | lost 0 |",
        published.as_secs_f64(),
        consumed.as_secs_f64(),
        peak as f64 / 1024.0
    );
    assert!(
        peak < POD_LIMIT_KIB,
        "peak RSS {peak} KiB is over the pod's {POD_LIMIT_KIB} KiB"
    );
}
