//! Attacks on the outbox, against the real `qis-agent` binary and a real nats-server, and the
//! cost of each fsync policy. Prints two markdown tables.
//!
//! `cargo bench -p qis-agent --bench attack_outbox` (root or CAP_SYS_ADMIN for the disk-full
//! row: it mounts a tmpfs of 512 KiB; without, the row says it was not run).
//!
//! - kill storm: NATS down, 4 concurrent posters, the agent SIGKILLed at a pseudo-random moment
//!   (50-400 ms) in each of 20 rounds;
//! - torn tail: 1000 packets, SIGKILL, a torn half line appended by hand, 1000 more;
//! - disk full: NATS down, the outbox on a full tmpfs, posts until 20 refusals, SIGKILL.
//!
//! Then NATS comes back, a fresh agent starts on the same data, and the stream is counted by
//! `Nats-Msg-Id` (duplicate window 100 ms, so a double send shows). "Packets lost" counts
//! acknowledged (202) packets missing from the stream; "time to recover" runs from the fresh
//! agent's start to an empty outbox.

use async_nats::jetstream;
use qis_agent::outbox::{Entry, Fsync, Limits, Outbox};
use qis_testkit::NatsServer;
use qis_testkit::http::Http;
use qis_testkit::metrics::Metrics;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STREAM: &str = "QIS_ATTACK";
const BOUND: Duration = Duration::from_secs(120);

/// When this process stamps its packets from (its first call): the same `i` gives the same
/// packet throughout the run, each within the intake's time bounds.
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

struct Agent {
    child: Child,
    http: Http,
    _config: tempfile::NamedTempFile,
}

impl Agent {
    async fn start(nats: &str, data: &Path) -> Agent {
        let port = qis_testkit::free_port();
        let config = tempfile::NamedTempFile::new().expect("config");
        std::fs::write(
            config.path(),
            format!(
                "agentId: attacked\nsite: a\nnats: {{url: '{nats}'}}\nsubjectPrefix: qis.iot\nstream: {STREAM}\nmanageJetstream: false\nlisten: 127.0.0.1:{port}\ndataDir: {}\noutboxMax: 1000000\noutbox: {{maxBytes: 1Gi}}\n",
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
        let a = Agent {
            child,
            http: Http::local(port),
            _config: config,
        };
        qis_testkit::eventually("the agent started", BOUND, || async {
            (a.http.get("/healthz").await.status == 200).then_some(())
        })
        .await;
        a
    }

    /// Peak RSS so far (VmHWM), KiB.
    fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// The agent's metrics, empty when it did not answer.
    async fn metrics(&self) -> Metrics {
        self.http.metrics().await.unwrap_or_default()
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

async fn post_all(intake: Http, range: std::ops::Range<usize>) -> (BTreeSet<String>, usize) {
    let mut acked = BTreeSet::new();
    let mut refused = 0;
    for i in range {
        let answer = intake.post("/v1/outcomes", outcome(i), &[]).await;
        let (code, body) = (answer.status, answer.body);
        match code {
            202 => {
                if let Some(id) = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
                {
                    acked.insert(id);
                }
            }
            0 => break,
            _ => refused += 1,
        }
    }
    (acked, refused)
}

async fn fresh_stream() -> NatsServer {
    let server = NatsServer::start();
    let js = jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["qis.iot.>".into()],
        duplicate_window: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .expect("stream");
    server
}

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
    for _ in 0..total {
        let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), msgs.next()).await
        else {
            break;
        };
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}

/// Restarts NATS, starts a fresh agent on `data`, waits until its outbox is empty; returns
/// (time to recover, packets lost, packets twice).
async fn recover(
    server: &mut NatsServer,
    data: &Path,
    acked: &BTreeSet<String>,
) -> (Duration, usize, usize) {
    server.restart();
    let t = Instant::now();
    let agent = Agent::start(&server.url(), data).await;
    // Polled every 20 ms (not `eventually`'s 100): this is the measured time to recover.
    while agent.metrics().await.value("qis_agent_outbox_depth") != Some(0.0) {
        assert!(t.elapsed() < BOUND, "outbox not delivered within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t.elapsed();
    agent.kill();
    let ids = stream_ids(server).await;
    let lost = acked.iter().filter(|id| !ids.contains_key(*id)).count();
    let twice = ids.values().filter(|n| **n > 1).count();
    (took, lost, twice)
}

struct Row {
    attack: &'static str,
    tried: String,
    peak_rss_kib: u64,
    refusals: String,
    lost: String,
    recover: String,
}

async fn kill_storm() -> Row {
    let mut server = fresh_stream().await;
    server.kill();
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let mut acked = BTreeSet::new();
    let (mut refused, mut peak) = (0, 0);
    let mut seed = 0x9e37_79b9_u64;
    let rounds = 20;
    for round in 0..rounds {
        let agent = Agent::start(&server.url(), &data).await;
        let posters: Vec<_> = (0..4usize)
            .map(|p| {
                let base = (round * 4 + p) * 1_000_000;
                tokio::spawn(post_all(agent.http.clone(), base..base + 1_000_000))
            })
            .collect();
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(50 + (seed >> 33) % 350)).await;
        peak = peak.max(agent.peak_rss_kib());
        agent.kill();
        for p in posters {
            let (ids, r) = p.await.expect("poster");
            acked.extend(ids);
            refused += r;
        }
    }
    let (took, lost, twice) = recover(&mut server, &data, &acked).await;
    Row {
        attack: "kill storm",
        tried: format!(
            "{rounds} SIGKILLs at 50-400 ms under 4 posters, NATS down; {} packets acknowledged",
            acked.len()
        ),
        peak_rss_kib: peak,
        refusals: format!("{refused} (none expected)"),
        lost: format!("{lost} lost, {twice} twice"),
        recover: format!("{:.2} s", took.as_secs_f64()),
    }
}

async fn torn_tail() -> Row {
    let mut server = fresh_stream().await;
    server.kill();
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let agent = Agent::start(&server.url(), &data).await;
    let (mut acked, mut refused) = post_all(agent.http.clone(), 0..1000).await;
    let mut peak = agent.peak_rss_kib();
    agent.kill();
    {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("outbox.jsonl"))
            .expect("outbox")
            .write_all(br#"{"s":"qis.iot.predictive-maintenance.bearing-wear","id":"to"#)
            .expect("torn");
    }
    let agent = Agent::start(&server.url(), &data).await;
    let (more, r) = post_all(agent.http.clone(), 1000..2000).await;
    acked.extend(more);
    refused += r;
    peak = peak.max(agent.peak_rss_kib());
    agent.kill();
    let (took, lost, twice) = recover(&mut server, &data, &acked).await;
    Row {
        attack: "torn tail",
        tried: format!(
            "1000 packets, SIGKILL, half a line appended by hand, 1000 more; {} acknowledged",
            acked.len()
        ),
        peak_rss_kib: peak,
        refusals: format!("{refused} (none expected)"),
        lost: format!("{lost} lost, {twice} twice"),
        recover: format!("{:.2} s", took.as_secs_f64()),
    }
}

struct Tmpfs(tempfile::TempDir);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

async fn disk_full() -> Row {
    let not_run = |why: String| Row {
        attack: "disk full",
        tried: format!("not run: {why}"),
        peak_rss_kib: 0,
        refusals: "-".into(),
        lost: "-".into(),
        recover: "-".into(),
    };
    let mount = tempfile::tempdir().expect("tmp");
    match Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(mount.path())
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => return not_run(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => return not_run(e.to_string()),
    }
    let disk = Tmpfs(mount);
    let data: PathBuf = disk.0.path().join("data");
    let mut server = fresh_stream().await;
    server.kill();
    let agent = Agent::start(&server.url(), &data).await;
    let mut acked = BTreeSet::new();
    let mut refusals = 0;
    let mut i = 0;
    while refusals < 20 && i < 100_000 {
        let answer = agent.http.post("/v1/outcomes", outcome(i), &[]).await;
        let (code, body) = (answer.status, answer.body);
        if code == 202 {
            if let Some(id) = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned))
            {
                acked.insert(id);
            }
        } else {
            refusals += 1;
        }
        i += 1;
    }
    let by_rule: Vec<String> = agent
        .metrics()
        .await
        .series("qis_agent_packets_refused_total")
        .map(|s| {
            let rule = s.labels.get("rule").map_or("?", String::as_str);
            format!("{rule}: {}", s.value)
        })
        .collect();
    let peak = agent.peak_rss_kib();
    agent.kill();
    let (took, lost, twice) = recover(&mut server, &data, &acked).await;
    Row {
        attack: "disk full",
        tried: format!(
            "outbox on a 512 KiB tmpfs, NATS down, posted until 20 refusals ({i} posts, {} acknowledged), SIGKILL",
            acked.len()
        ),
        peak_rss_kib: peak,
        refusals: by_rule.join(", "),
        lost: format!("{lost} lost, {twice} twice"),
        recover: format!("{:.2} s", took.as_secs_f64()),
    }
}

fn entry(i: usize) -> Entry {
    Entry {
        subject: "qis.iot.predictive-maintenance.bearing-wear".into(),
        id: format!("{i:032x}"),
        kind: "outcome".into(),
        hops: 0,
        body: outcome(i),
    }
}

/// Packets/s into the outbox with one packet per push and 64 per push, and to deliver them.
fn fsync_cost(fsync: Fsync, dir: &Path) -> (f64, f64, f64) {
    let limits = Limits {
        max_packets: 1_000_000,
        max_bytes: 1 << 30,
    };
    let singles = if fsync == Fsync::Always { 500 } else { 5_000 };
    let d = tempfile::tempdir_in(dir).expect("tmp");
    let mut o = Outbox::open_with(d.path(), limits, fsync).expect("outbox");
    let t = Instant::now();
    for i in 0..singles {
        o.push([entry(i)]).expect("push");
        o.sync_if_due();
    }
    let one = singles as f64 / t.elapsed().as_secs_f64();
    let batches = if fsync == Fsync::Always { 100 } else { 500 };
    let t = Instant::now();
    for b in 0..batches {
        o.push((0..64).map(|i| entry(singles + b * 64 + i)))
            .expect("push");
        o.sync_if_due();
    }
    let sixty_four = (batches * 64) as f64 / t.elapsed().as_secs_f64();
    let total = o.len();
    let t = Instant::now();
    while !o.is_empty() {
        o.pop(1024).expect("pop");
        o.sync_if_due();
    }
    let pop = total as f64 / t.elapsed().as_secs_f64();
    (one, sixty_four, pop)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows =
        rt.block_on(async { vec![kill_storm().await, torn_tail().await, disk_full().await] });
    println!(
        "| attack | what was tried | peak RSS | refusals by rule | packets lost | time to recover |"
    );
    println!("|---|---|---:|---|---|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} MiB | {} | {} | {} |",
            r.attack,
            r.tried,
            r.peak_rss_kib as f64 / 1024.0,
            r.refusals,
            r.lost,
            r.recover
        );
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!();
    println!("Outbox cost by fsync policy (in-process, {fs} under the target directory):");
    println!();
    println!(
        "| fsync | packets/s, 1 per write | packets/s, 64 per write | delivered packets/s (mark writes) |"
    );
    println!("|---|---:|---:|---:|");
    for (name, f) in [
        ("always", Fsync::Always),
        (
            "interval 1s (default)",
            Fsync::Interval(Duration::from_secs(1)),
        ),
        ("never", Fsync::Never),
    ] {
        let (one, many, pop) = fsync_cost(f, &dir);
        println!("| {name} | {one:.0} | {many:.0} | {pop:.0} |");
    }
}
