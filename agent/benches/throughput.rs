//! Side-by-side throughput on one nats-server 2.15.1, in one run: raw async-nats JetStream (the
//! physical limit here), our agent's paths, and the seed article's client pattern (nats-py, one
//! awaited publish per packet, fetch batches of 50). Prints a Markdown table; with
//! `QIS_BENCH_WRITE=1` it also writes `docs/benchmarks.md`.
//!
//!   cargo bench -p qis-agent --bench throughput            (N=100000 packets by default)
//!   QIS_BENCH_N=20000 cargo bench -p qis-agent --bench throughput

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use qis_agent::deposit;
use qis_agent::metrics::Metrics;
use qis_agent::outbox::{Entry, Outbox};
use qis_agent::packet::{OutcomePacket, PacketMeta};
use qis_agent::synthesis::{Settings, Synthesizer};
use qis_testkit::NatsServer;
use qis_testkit::http::Http;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SUBJECT: &str = "qis.bench.predictive-maintenance.bearing-wear";
/// Every rate is the median of this many rounds (this shared machine varies run to run).
const ROUNDS: usize = 3;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

fn packet(i: usize) -> (Vec<u8>, PacketMeta) {
    // About 400 bytes, like a real outcome with a conclusion and a short context vector.
    let p = OutcomePacket {
        agent_id: format!("bench-agent-{}", i % 500),
        domain: "predictive-maintenance".into(),
        problem_class: "bearing-wear".into(),
        conclusion: format!(
            "harmonic at 47 Hz on the drive-end bearing, amplitude rising for the last 3 readings; inspect within 72 h; reading {i:08}"
        ),
        confidence: 0.5 + (i % 50) as f64 / 100.0,
        context_vector: vec![
            0.18, 0.92, 0.03, 0.71, 0.44, 0.12, 0.66, 0.5, 0.25, 0.75, 0.33, 0.21, 0.9,
        ],
        timestamp: 1_764_150_000.0 + i as f64 / 1000.0,
        source_node: format!("hall-{}-press-{}", i % 3, i % 17),
    };
    let body = p.encode().expect("valid");
    let meta = PacketMeta::outcome(&body);
    (body, meta)
}

async fn fresh_stream(js: &jetstream::Context, name: &str) {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec!["qis.bench.>".into()],
        max_message_size: 607,
        ..Default::default()
    })
    .await
    .expect("stream");
}

fn headers(meta: &PacketMeta) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in meta.headers() {
        h.insert(k, v.as_str());
    }
    h
}

async fn raw_publish(js: &jetstream::Context, packets: &[(Vec<u8>, PacketMeta)]) -> f64 {
    let start = Instant::now();
    for chunk in packets.chunks(deposit::WINDOW) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (body, meta) in chunk {
            acks.push(
                js.publish_with_headers(SUBJECT, headers(meta), body.clone().into())
                    .await
                    .expect("publish"),
            );
        }
        for a in acks {
            a.await.expect("ack");
        }
    }
    packets.len() as f64 / start.elapsed().as_secs_f64()
}

async fn raw_consume(js: &jetstream::Context, n: usize) -> f64 {
    let s = js.get_stream("BENCH").await.expect("stream");
    let c = s
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut msgs = c
        .stream()
        .max_messages_per_batch(500)
        .messages()
        .await
        .expect("messages");
    let start = Instant::now();
    for _ in 0..n {
        let m = msgs.next().await.expect("message").expect("ok");
        m.ack().await.expect("ack");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn agent_consume(js: &jetstream::Context, n: usize) -> f64 {
    let s = js.get_stream("BENCH").await.expect("stream");
    let c = s
        .create_consumer(pull::Config {
            durable_name: Some("agent".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut msgs = c
        .stream()
        .max_messages_per_batch(500)
        .messages()
        .await
        .expect("messages");
    let mut synth = Synthesizer::new(Settings {
        window: 1e12,
        ..Settings::default()
    });
    let start = Instant::now();
    for _ in 0..n {
        let m = msgs.next().await.expect("message").expect("ok");
        let h = m.headers.as_ref();
        let meta =
            PacketMeta::from_headers(|k| h.and_then(|h| h.get(k)).map(|v| v.as_str()), &m.payload)
                .expect("meta");
        let p = OutcomePacket::decode(&m.payload).expect("packet");
        synth.ingest(&p, &meta, 1_764_160_000.0);
        m.ack().await.expect("ack");
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert!(synth.snapshot(1_764_160_000.0).is_some());
    rate
}

async fn agent_deposit(js: &jetstream::Context, packets: &[(Vec<u8>, PacketMeta)]) -> f64 {
    let dir = tempfile::tempdir().expect("tmp");
    let metrics = Arc::new(Metrics::default());
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let d = deposit::start(
        js.clone(),
        Outbox::open(dir.path(), 1_000_000).expect("outbox"),
        metrics.clone(),
        stop,
    );
    let start = Instant::now();
    for (body, meta) in packets {
        d.send(Entry::new(SUBJECT.into(), body, meta))
            .await
            .expect("queued");
    }
    let left = d.flush(Duration::from_secs(120)).await;
    assert_eq!(left, Some(0), "everything deposited");
    packets.len() as f64 / start.elapsed().as_secs_f64()
}

/// POSTs over `conns` keep-alive connections to the agent's intake.
async fn agent_intake(port: u16, packets: &[(Vec<u8>, PacketMeta)], conns: usize) {
    let per = packets.len().div_ceil(conns);
    let mut tasks = Vec::new();
    for chunk in packets.chunks(per) {
        let bodies: Vec<Vec<u8>> = chunk.iter().map(|(b, _)| b.clone()).collect();
        // One client per task: its requests, one after another, keep one connection.
        let http = Http::local(port).keep_alive();
        tasks.push(tokio::spawn(async move {
            for b in bodies {
                let a = http.post("/v1/outcomes", b, &[]).await;
                assert_eq!(a.status, 202, "{a:?}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

/// POSTs JSON-lines batches of `batch` packets over `conns` keep-alive connections to the
/// agent's batch intake.
async fn agent_intake_batch(
    port: u16,
    packets: &[(Vec<u8>, PacketMeta)],
    conns: usize,
    batch: usize,
) {
    let per = packets.len().div_ceil(conns);
    let mut tasks = Vec::new();
    for chunk in packets.chunks(per) {
        let bodies: Vec<Vec<u8>> = chunk
            .chunks(batch)
            .map(|b| {
                b.iter()
                    .flat_map(|(p, _)| p.iter().copied().chain([b'\n']))
                    .collect()
            })
            .collect();
        let http = Http::local(port).keep_alive();
        tasks.push(tokio::spawn(async move {
            for b in bodies {
                // Sent as application/json (the testkit's), which the intake does not check.
                let a = http.post("/v1/outcomes/batch", b, &[]).await;
                assert_eq!(a.status, 202, "{a:?}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

/// Waits until the stream holds `count` messages (what the intake accepted is deposited).
async fn wait_stored(js: &jetstream::Context, name: &str, count: u64) {
    loop {
        let mut stream = js.get_stream(name).await.expect("stream");
        if stream.info().await.expect("info").state.messages >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn seed_baseline(url: &str, n: usize) -> Option<(f64, f64)> {
    let python = qis_testkit::workspace_root().join(".tools/venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/seed_pattern.py");
    let out = std::process::Command::new(python)
        .args([script, url, &n.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .filter_map(|x| x.parse::<f64>().ok());
    Some((it.next()?, it.next()?))
}

fn main() {
    let n: usize = std::env::var("QIS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = NatsServer::start();
    let packets: Vec<_> = (0..n).map(packet).collect();
    let body_len = packets[0].0.len();
    // Packet ids must be fresh for every publish (the stream's duplicate window would drop a
    // repeated id): each measurement takes the next range of `n`.
    let mut next = n;
    let mut fresh = |count: usize| -> Vec<(Vec<u8>, PacketMeta)> {
        let range = next..next + count;
        next += count;
        range.map(packet).collect()
    };
    let m = n.min(50_000);
    let rounds: Vec<_> = (0..ROUNDS)
        .map(|_| (fresh(n), fresh(m), fresh(m)))
        .collect();
    let mut raw_pub = Vec::new();
    let mut dep = Vec::new();
    let mut raw_con = Vec::new();
    let mut twin = Vec::new();
    let mut intake = Vec::new();
    let mut batch = Vec::new();
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
        // Raw and agent alternate which goes first, round by round (a cold or warm server
        // favours neither).
        for (round, (deposits, _, _)) in rounds.iter().enumerate() {
            let swap = round % 2 == 1;
            fresh_stream(&js, "BENCH").await;
            if swap {
                dep.push(agent_deposit(&js, deposits).await);
                fresh_stream(&js, "BENCH").await;
                raw_pub.push(raw_publish(&js, &packets).await);
                twin.push(agent_consume(&js, n).await);
                raw_con.push(raw_consume(&js, n).await);
            } else {
                raw_pub.push(raw_publish(&js, &packets).await);
                raw_con.push(raw_consume(&js, n).await);
                twin.push(agent_consume(&js, n).await);
                fresh_stream(&js, "BENCH").await;
                dep.push(agent_deposit(&js, deposits).await);
            }
        }
        fresh_stream(&js, "BENCH").await;
        let port = qis_testkit::free_port();
        let config = qis_agent::config::Config::from_file_config(qis_agent::config::FileConfig {
            agent_id: "bench".into(),
            site: "bench".into(),
            nats: qis_agent::config::NatsConfig {
                url: server.url(),
                ..Default::default()
            },
            subject_prefix: "qis.bench".into(),
            stream: "BENCH".into(),
            manage_jetstream: false,
            subjects: vec![],
            synthesis: Default::default(),
            listen: ([127, 0, 0, 1], port).into(),
            data_dir: tempfile::tempdir().expect("tmp").keep(),
            outbox_max: 1_000_000,
            intake: Default::default(),
            outbox: Default::default(),
        })
        .expect("config");
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(qis_agent::run::run(config, Some(stop)));
        while !Http::local(port).get("/healthz").await.answered() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Intake rates run until the stream holds every accepted packet.
        let mut stored = 0u64;
        for (_, singles, batches) in &rounds {
            let start = Instant::now();
            agent_intake(port, singles, 8).await;
            stored += singles.len() as u64;
            wait_stored(&js, "BENCH", stored).await;
            intake.push(singles.len() as f64 / start.elapsed().as_secs_f64());
            let start = Instant::now();
            agent_intake_batch(port, batches, 2, 256).await;
            stored += batches.len() as u64;
            wait_stored(&js, "BENCH", stored).await;
            batch.push(batches.len() as f64 / start.elapsed().as_secs_f64());
        }
    });
    let (raw_pub, dep, raw_con, twin, intake, batch) = (
        median(raw_pub),
        median(dep),
        median(raw_con),
        median(twin),
        median(intake),
        median(batch),
    );
    // What the intake's firewall costs per packet on one core, without HTTP or NATS.
    let checks = {
        let start = Instant::now();
        let mut bytes = 0usize;
        for (body, _) in &packets {
            let p = qis_agent::packet::OutcomePacket::decode(body).expect("valid");
            let canonical = p.encode().expect("encodes");
            bytes += qis_agent::packet::packet_id(&canonical).len() + canonical.len();
        }
        assert!(bytes > 0);
        n as f64 / start.elapsed().as_secs_f64()
    };
    let seed_n = n.min(20_000);
    let seed = seed_baseline(&server.url(), seed_n);
    let ratio = |a: f64, b: f64| format!("{:.0}%", 100.0 * a / b);
    let x = |a: f64, b: Option<f64>| {
        b.map(|b| format!("{:.1}×", a / b))
            .unwrap_or_else(|| "n/a".into())
    };
    let (seed_pub, seed_fetch) = seed
        .map(|(p, f)| (Some(p), Some(f)))
        .unwrap_or((None, None));
    let mut table = String::new();
    table.push_str(&format!("{n} packets of {body_len} bytes per round (intake: {m}; seed pattern: {seed_n}); one nats-server 2.15.1 on loopback; each rate the median of {ROUNDS} rounds, raw and agent alternating which goes first.\n\n"));
    table.push_str("| Path | packets/s | vs raw | vs seed pattern |\n|---|---:|---:|---:|\n");
    table.push_str(&format!("| raw async-nats: pipelined publish, acks awaited per window of {} | {raw_pub:.0} | 100% | {} |\n", deposit::WINDOW, x(raw_pub, seed_pub)));
    table.push_str(&format!(
        "| agent deposit pipeline (queue → window → outbox on failure) | {dep:.0} | {} | {} |\n",
        ratio(dep, raw_pub),
        x(dep, seed_pub)
    ));
    table.push_str(&format!("| agent intake → stream: HTTP POST /v1/outcomes, one packet per request, 8 keep-alive clients | {intake:.0} | {} | {} |\n", ratio(intake, raw_pub), x(intake, seed_pub)));
    table.push_str(&format!("| agent intake → stream: HTTP POST /v1/outcomes/batch, 256 per request, 2 clients | {batch:.0} | {} | {} |\n", ratio(batch, raw_pub), x(batch, seed_pub)));
    table.push_str(&format!(
        "| (for reference) the intake's checks alone: strict decode + re-encode + id, one core, no I/O | {checks:.0} | {} | |\n",
        ratio(checks, raw_pub)
    ));
    table.push_str(&format!(
        "| seed pattern: one awaited js.publish per packet (nats-py) | {} | {} | 1.0× |\n",
        seed_pub.map(|v| format!("{v:.0}")).unwrap_or("n/a".into()),
        seed_pub.map(|v| ratio(v, raw_pub)).unwrap_or("n/a".into())
    ));
    table.push_str(&format!(
        "| raw async-nats: pull consume with acks (batch 500) | {raw_con:.0} | 100% | {} |\n",
        x(raw_con, seed_fetch)
    ));
    table.push_str(&format!("| agent twins: pull, headers + strict decode + synthesis ingest + ack | {twin:.0} | {} | {} |\n", ratio(twin, raw_con), x(twin, seed_fetch)));
    table.push_str(&format!(
        "| seed pattern: fetch(50) + OutcomePacket(**data) + ack (nats-py) | {} | {} | 1.0× |\n",
        seed_fetch
            .map(|v| format!("{v:.0}"))
            .unwrap_or("n/a".into()),
        seed_fetch
            .map(|v| ratio(v, raw_con))
            .unwrap_or("n/a".into())
    ));
    println!("{table}");
    if std::env::var_os("QIS_BENCH_WRITE").is_some() {
        let path = qis_testkit::workspace_root().join("target/benchmarks-throughput.md");
        std::fs::write(&path, format!("<!-- written by: QIS_BENCH_WRITE=1 cargo bench -p qis-agent --bench throughput -->\n{table}")).expect("write");
        println!("wrote {}", path.display());
    }
}
