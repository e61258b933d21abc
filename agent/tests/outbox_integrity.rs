//! Outbox integrity against the real `qis-agent` binary and a real nats-server 2.15.1: the
//! agent is killed (SIGKILL) or starved of disk at the bad moment, then restarted with NATS up,
//! and the packets are counted in the stream by `Nats-Msg-Id`: every packet the intake
//! acknowledged (202) is there exactly once.
//!
//! The stream's duplicate window is 100 ms, so JetStream's own deduplication does not hide a
//! packet the outbox sends twice. "Disk full" is a real tmpfs of a few pages (mounting needs
//! root or CAP_SYS_ADMIN: these tests fail, and say so, where it cannot be mounted).

use async_nats::jetstream;
use qis_testkit::NatsServer;
use qis_testkit::http::{Answer, Http};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const STREAM: &str = "QIS_OUTBOX_TEST";

async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    qis_testkit::eventually(what, WAIT, f).await
}

/// When this test process stamps its packets from (its first call): the same `i` gives the
/// same packet (and id) throughout the process, each within the intake's time bounds.
fn stamp_base() -> f64 {
    static BASE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| qis_agent::subject_worker::now().floor())
}

fn outcome(i: usize) -> String {
    let timestamp = stamp_base() + (i % 1000) as f64 / 1000.0;
    serde_json::json!({"agent_id": format!("sensor-{i}"), "domain": "predictive-maintenance",
        "problem_class": "bearing-wear", "conclusion": "47 Hz harmonic in the bearing housing",
        "confidence": 0.7, "context_vector": [0.4, 0.7], "timestamp": timestamp,
        "source_node": "node-1"})
    .to_string()
}

/// One agent process on a data directory.
struct Agent {
    child: Child,
    http: Http,
    _config: tempfile::NamedTempFile,
}

impl Agent {
    fn spawn(nats: &str, data: &Path, extra: &str) -> Agent {
        let port = qis_testkit::free_port();
        // Not next to the data: that disk may be full.
        let config = tempfile::NamedTempFile::new().expect("config file");
        std::fs::write(
            config.path(),
            format!(
                "agentId: outboxer\nsite: a\nnats: {{url: '{nats}'}}\nsubjectPrefix: qis.iot\nstream: {STREAM}\nmanageJetstream: false\nlisten: 127.0.0.1:{port}\ndataDir: {}\n{extra}",
                data.display()
            ),
        )
        .expect("config");
        let child = Command::new(env!("CARGO_BIN_EXE_qis-agent"))
            .args(["run", "--config"])
            .arg(config.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent");
        Agent {
            child,
            http: Http::local(port),
            _config: config,
        }
    }

    async fn healthy(&self) {
        eventually("agent serving", || async {
            (self.http.get("/healthz").await.status == 200).then_some(())
        })
        .await;
    }

    /// A metric named exactly `name`, summed over the label sets carrying `filter`: 0 when
    /// absent, `None` when `/metrics` did not answer.
    async fn metric(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        Some(self.http.metrics().await?.count_where(name, filter))
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The packet ids the agent acknowledged (202), from a response body.
fn acked_id(body: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(body).ok()?["id"]
        .as_str()
        .map(str::to_owned)
}

async fn make_stream(server: &NatsServer) {
    let js = jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["qis.iot.>".into()],
        duplicate_window: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .expect("stream");
}

/// Every `Nats-Msg-Id` in the stream, with how often it is there.
async fn stream_ids(server: &NatsServer) -> HashMap<String, usize> {
    use futures::StreamExt;
    let js = jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    let mut stream = js.get_stream(STREAM).await.expect("stream");
    let total = stream.info().await.expect("info").state.messages;
    let mut ids = HashMap::new();
    if total == 0 {
        return ids;
    }
    let c = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let mut msgs = c.messages().await.expect("messages");
    let mut seen = 0u64;
    while seen < total {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .expect("message within 10 s")
            .expect("message")
            .expect("message");
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        *ids.entry(id).or_insert(0) += 1;
        seen += 1;
    }
    ids
}

/// Starts an agent with NATS up, waits until its outbox is empty, and checks the stream:
/// every acknowledged packet exactly once, no packet twice. Returns the stream's ids.
async fn deliver_and_count(
    server: &NatsServer,
    data: &Path,
    acked: &BTreeSet<String>,
) -> HashMap<String, usize> {
    let agent = Agent::spawn(&server.url(), data, "");
    agent.healthy().await;
    eventually("the outbox delivered", || async {
        (agent.metric("qis_agent_outbox_depth", &[]).await? == 0.0).then_some(())
    })
    .await;
    let ids = stream_ids(server).await;
    let missing: Vec<_> = acked.iter().filter(|id| !ids.contains_key(*id)).collect();
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged packets lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(twice.is_empty(), "packets stored twice: {twice:?}");
    agent.kill();
    ids
}

/// A tmpfs of `kib` KiB, unmounted on drop.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(kib: u64) -> TinyDisk {
        let dir = tempfile::tempdir().expect("tmp");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k,mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "this test needs a real full disk: mounting a {kib} KiB tmpfs failed (run as root or \
             with CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TinyDisk { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Fills what is left with a file; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let block = [0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 1];
        while f.write_all(&small).is_ok() {}
        path
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Posts packets `range` one by one until `stop`; returns the acknowledged ids and the
/// refusals' bodies.
async fn post_all(intake: Http, range: std::ops::Range<usize>) -> (BTreeSet<String>, Vec<String>) {
    let mut acked = BTreeSet::new();
    let mut refused = Vec::new();
    for i in range {
        let Answer { status, body, .. } = intake.post("/v1/outcomes", outcome(i), &[]).await;
        match status {
            202 => {
                acked.insert(acked_id(&body).expect("202 names the id"));
            }
            0 => break,
            _ => refused.push(body),
        }
    }
    (acked, refused)
}

/// Proves acknowledged packets survive SIGKILL at random moments: NATS down, eight rounds of
/// four concurrent posters killed after 50-400 ms, then every 202 is in the stream once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_storm_loses_and_doubles_nothing() {
    let mut server = NatsServer::start();
    make_stream(&server).await;
    server.kill();
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let mut acked = BTreeSet::new();
    let mut seed = 0x9e37_79b9_u64;
    let started = Instant::now();
    for round in 0..8usize {
        let agent = Agent::spawn(&server.url(), &data, "");
        agent.healthy().await;
        let posters: Vec<_> = (0..4usize)
            .map(|p| {
                let base = (round * 4 + p) * 100_000;
                tokio::spawn(post_all(agent.http.clone(), base..base + 100_000))
            })
            .collect();
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let delay = 50 + (seed >> 33) % 350;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        agent.kill();
        for p in posters {
            let (ids, refused) = p.await.expect("poster");
            assert!(refused.is_empty(), "refused with NATS down: {refused:?}");
            acked.extend(ids);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "bounded");
    }
    assert!(
        acked.len() > 100,
        "the storm posted packets: {}",
        acked.len()
    );
    server.restart();
    deliver_and_count(&server, &data, &acked).await;
}

/// Proves a torn last line (bytes appended by hand, as a crash mid-append leaves them) costs
/// no packet: the packets posted after it, by the next run, are delivered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torn_tail_costs_no_packet() {
    let mut server = NatsServer::start();
    make_stream(&server).await;
    server.kill();
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let agent = Agent::spawn(&server.url(), &data, "");
    agent.healthy().await;
    let (mut acked, refused) = post_all(agent.http.clone(), 0..20).await;
    assert!(refused.is_empty() && acked.len() == 20);
    agent.kill();
    {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("outbox.jsonl"))
            .expect("outbox file")
            .write_all(br#"{"s":"qis.iot.predictive-maintenance.bearing-wear","id":"torn"#)
            .expect("torn bytes");
    }
    let agent = Agent::spawn(&server.url(), &data, "");
    agent.healthy().await;
    let (more, _) = post_all(agent.http.clone(), 20..40).await;
    assert_eq!(more.len(), 20);
    acked.extend(more);
    agent.kill();
    server.restart();
    let ids = deliver_and_count(&server, &data, &acked).await;
    assert_eq!(ids.len(), 40);
}

/// Proves a full disk during push refuses (503, rule `outbox_unwritable`, counted) instead of
/// acknowledging what it cannot keep: NATS down, a 192 KiB tmpfs, posts until refused, then
/// SIGKILL; with NATS up every acknowledged packet is delivered once and no refused one.
/// The agent takes packets again once the disk has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_full_during_push_refuses_and_keeps_what_it_acknowledged() {
    let mut server = NatsServer::start();
    make_stream(&server).await;
    server.kill();
    let disk = TinyDisk::mount(192);
    let data = disk.path().join("data");
    let agent = Agent::spawn(&server.url(), &data, "outbox: {fsync: always}\n");
    agent.healthy().await;
    let mut acked = BTreeSet::new();
    let mut refusals = Vec::new();
    for i in 0..2_000 {
        let Answer { status, body, .. } = agent.http.post("/v1/outcomes", outcome(i), &[]).await;
        match status {
            202 => {
                acked.insert(acked_id(&body).expect("id"));
            }
            503 => {
                refusals.push(body);
                if refusals.len() >= 5 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        !refusals.is_empty(),
        "the disk filled up within 2000 packets"
    );
    assert!(
        refusals.iter().all(|b| b.contains("outbox_unwritable")),
        "{refusals:?}"
    );
    let counted = agent
        .metric(
            "qis_agent_packets_refused_total",
            &[("rule", "outbox_unwritable")],
        )
        .await
        .expect("metrics");
    assert_eq!(counted, refusals.len() as f64);
    assert!(acked.len() > 50, "some packets fit: {}", acked.len());
    agent.kill();
    server.restart();
    let ids = deliver_and_count(&server, &data, &acked).await;
    assert_eq!(ids.len(), acked.len(), "no refused packet was delivered");
    // The delivered log was truncated: the disk has room again.
    let agent = Agent::spawn(&server.url(), &data, "");
    agent.healthy().await;
    assert_eq!(
        agent
            .http
            .post("/v1/outcomes", outcome(5_000), &[])
            .await
            .status,
        202
    );
}

/// Proves a full disk during delivery sends nothing twice: the outbox holds packets, the disk
/// is filled to the last byte, NATS comes back and the agent delivers them; killed and
/// started again, it does not send them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_full_during_delivery_sends_nothing_twice() {
    let mut server = NatsServer::start();
    make_stream(&server).await;
    server.kill();
    let disk = TinyDisk::mount(256);
    let data = disk.path().join("data");
    let agent = Agent::spawn(&server.url(), &data, "");
    agent.healthy().await;
    let (acked, refused) = post_all(agent.http.clone(), 0..200).await;
    assert!(refused.is_empty() && acked.len() == 200);
    let filler = disk.fill();
    server.restart();
    eventually("delivered on a full disk", || async {
        (agent.metric("qis_agent_outbox_depth", &[]).await? == 0.0).then_some(())
    })
    .await;
    agent.kill();
    let ids = deliver_and_count(&server, &data, &acked).await;
    assert_eq!(ids.len(), 200);
    drop(filler);
}
