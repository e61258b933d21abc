//! Footprint of the agent binary (the release profile: size-optimized, LTO, stripped): file
//! size, RSS idle, RSS with a 100k-packet window, and the time from process start to
//! consumers bound (`/readyz` 200). Prints a Markdown table; `QIS_BENCH_WRITE=1` writes
//! `target/benchmarks-footprint.md`.
//!
//!   cargo bench -p qis-agent --bench footprint

use async_nats::jetstream;
use qis_agent::packet::{OutcomePacket, PacketMeta};
use qis_testkit::NatsServer;
use qis_testkit::http::blocking::Http;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let bin = env!("CARGO_BIN_EXE_qis-agent");
    let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let port = qis_testkit::free_port();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "agentId: footprint\nsite: a\nnats: {{url: '{}'}}\nsubjectPrefix: qis.fp\nstream: FP\nlisten: 127.0.0.1:{port}\ndataDir: {}\nsubjects:\n- {{name: wear, domain: predictive-maintenance, problemClass: bearing-wear, synthesis: {{window: 1000000h}}}}\n",
            server.url(),
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let started = Instant::now();
    let mut child = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("agent");
    // Blocking: every request here is made outside the runtime below.
    let http = Http::with_timeout(port, Duration::from_secs(2));
    let bound = qis_testkit::wait_for(Duration::from_secs(20), || {
        (http.get("/readyz").status == 200).then(|| started.elapsed())
    })
    .expect("agent ready");
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(child.id());

    let n = 100_000usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let mut acks = Vec::new();
            for i in chunk {
                let p = OutcomePacket {
                    agent_id: format!("sensor-{}", i % 1000),
                    domain: "predictive-maintenance".into(),
                    problem_class: "bearing-wear".into(),
                    conclusion: format!("reading {i}"),
                    confidence: 0.7,
                    context_vector: vec![0.1, 0.2, 0.3],
                    timestamp: 1_764_150_000.0 + *i as f64 / 100.0,
                    source_node: "n".into(),
                };
                let body = p.encode().expect("valid");
                let mut h = async_nats::HeaderMap::new();
                for (k, v) in PacketMeta::outcome(&body).headers() {
                    h.insert(k, v.as_str());
                }
                acks.push(
                    js.publish_with_headers(
                        "qis.fp.predictive-maintenance.bearing-wear",
                        h,
                        body.into(),
                    )
                    .await
                    .expect("publish"),
                );
            }
            for a in acks {
                a.await.expect("ack");
            }
        }
    });
    qis_testkit::wait_for(Duration::from_secs(120), || {
        let taken = http.metrics()?.count("qis_agent_twins_in_total");
        (taken >= n as f64).then_some(())
    })
    .expect("window ingested");
    std::thread::sleep(Duration::from_secs(1));
    let loaded = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();

    let mib = |k: u64| k as f64 / 1024.0;
    let check = |ok: bool| if ok { "met" } else { "**missed**" };
    let mut t = String::from("| Measure | Value | Target | |\n|---|---:|---:|---|\n");
    t.push_str(&format!(
        "| release binary (`{}`) | {:.1} MiB | ≤ 12 MiB | {} |\n",
        std::path::Path::new(bin)
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or(""),
        size as f64 / 1048576.0,
        check(size <= 12 << 20)
    ));
    t.push_str(&format!(
        "| RSS idle (1 subject, bound) | {:.1} MiB | ≤ 16 MiB | {} |\n",
        mib(idle),
        check(idle <= 16 * 1024)
    ));
    t.push_str(&format!(
        "| RSS with a 100k-packet window (1000 agents) | {:.1} MiB | ≤ 48 MiB | {} |\n",
        mib(loaded),
        check(loaded <= 48 * 1024)
    ));
    t.push_str(&format!(
        "| start → consumers bound (`/readyz` 200) | {} ms | ≤ 100 ms | {} |\n",
        bound.as_millis(),
        check(bound <= Duration::from_millis(100))
    ));
    println!("{t}");
    if std::env::var_os("QIS_BENCH_WRITE").is_some() {
        let path = qis_testkit::workspace_root().join("target/benchmarks-footprint.md");
        std::fs::write(&path, format!("<!-- written by: QIS_BENCH_WRITE=1 cargo bench -p qis-agent --bench footprint -->\n{t}")).expect("write");
    }
}
