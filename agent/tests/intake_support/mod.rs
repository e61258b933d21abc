//! What the intake tests and the attack bench share: the real `qis-agent` binary started
//! standalone against a real nats-server, requests through the testkit's client, raw sockets
//! only for what no HTTP client sends (trickled heads and bodies, bytes as they are), metrics,
//! peak RSS, and the attack itself.
#![allow(dead_code)]

use async_nats::jetstream;
use qis_testkit::KillOnDrop;
use qis_testkit::http::{Answer, Http};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const STREAM: &str = "QIS_INTAKE";
/// The subject of the well-behaved device's packets (the attack's go elsewhere).
pub const GOOD_SUBJECT: &str = "qis.iot.good-device.steady";

/// A running agent process.
pub struct AgentProc {
    pub port: u16,
    pub pid: u32,
    pub http: Http,
    _child: KillOnDrop,
}

impl AgentProc {
    /// Starts `bin` standalone on `nats` with `intake` as its `intake:` section (YAML flow
    /// map, e.g. `{headerTimeout: 1s}`), no subjects followed (nothing but the intake runs).
    pub async fn start(bin: &Path, nats: &str, dir: &Path, intake: &str) -> AgentProc {
        AgentProc::start_with(bin, nats, dir, intake, "").await
    }

    /// [`AgentProc::start`] with `extra` (whole YAML lines, e.g. `synthesis: {window: 10m}\n`)
    /// added to its file.
    pub async fn start_with(
        bin: &Path,
        nats: &str,
        dir: &Path,
        intake: &str,
        extra: &str,
    ) -> AgentProc {
        let port = qis_testkit::free_port();
        let config = dir.join(format!("agent-{port}.yaml"));
        std::fs::write(
            &config,
            format!(
                "agentId: attacked\nsite: a\nnats: {{url: '{nats}'}}\nsubjectPrefix: qis.iot\nstream: {STREAM}\nlisten: 127.0.0.1:{port}\ndataDir: {}\noutboxMax: 1000000\nintake: {intake}\n{extra}",
                dir.join(format!("data-{port}")).display()
            ),
        )
        .expect("config");
        let child = std::process::Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("agent");
        let pid = child.id();
        let agent = AgentProc {
            port,
            pid,
            http: Http::local(port),
            _child: KillOnDrop(child),
        };
        qis_testkit::eventually("agent ready", Duration::from_secs(30), || async {
            (agent.http.get("/readyz").await.status == 200).then_some(())
        })
        .await;
        agent
    }

    /// A counter or gauge named exactly `name`, summed over its label sets that carry every
    /// label of `filter` (`&[]`: all); 0 when absent or when `/metrics` did not answer.
    pub async fn metric(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.http
            .metrics()
            .await
            .map_or(0.0, |m| m.count_where(name, filter))
    }

    /// Refusals counted for `rule`.
    pub async fn refused(&self, rule: &str) -> u64 {
        self.metric("qis_agent_packets_refused_total", &[("rule", rule)])
            .await as u64
    }

    /// Waits (up to 10 s) until `n` refusals are counted for `rule`.
    pub async fn wait_refused(&self, rule: &str, n: u64) {
        qis_testkit::eventually(
            &format!("{n} refusals by {rule}"),
            std::time::Duration::from_secs(10),
            || async { (self.refused(rule).await == n).then_some(()) },
        )
        .await;
    }

    /// Peak resident memory (`VmHWM`) and current (`VmRSS`), KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

/// `bytes` as they are on a new connection, then the answer (status 0 for none). Raw on
/// purpose: for requests no HTTP client would send (a declared length with no body, a chunk
/// framing of the test's choosing).
pub async fn raw(port: u16, bytes: &[u8]) -> Answer {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return Answer::default();
    };
    let _ = s.write_all(bytes).await;
    read_answer(&mut s).await
}

/// Reads a raw connection until the server closes: the answer, or status 0 for none.
pub async fn read_answer(s: &mut TcpStream) -> Answer {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    Answer::parse(&out)
}

/// The agent's clock (seconds since the epoch).
pub fn now() -> f64 {
    qis_agent::subject_worker::now()
}

/// The time the packets of this test process are stamped from (its first call): the same
/// `i` gives the same packet throughout the process, and every one is within the window.
pub fn stamp_base() -> f64 {
    static BASE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| now().floor())
}

/// An outcome packet of `domain`/`class` stamped `timestamp`.
pub fn packet_at(domain: &str, class: &str, i: usize, timestamp: f64) -> String {
    json!({"agent_id": format!("dev-{}", i % 997), "domain": domain, "problem_class": class,
           "conclusion": format!("reading {i}"), "confidence": 0.7,
           "context_vector": [0.4, 0.7], "timestamp": timestamp, "source_node": "node-1"})
    .to_string()
}

/// An outcome packet of `domain`/`class`, distinct for every `i`.
pub fn packet(domain: &str, class: &str, i: usize) -> String {
    packet_at(domain, class, i, stamp_base() + (i % 1000) as f64 / 1000.0)
}

/// A 1 MiB batch of the worst shape for a parser that collects its lines: `a\n` × 512 Ki
/// (refused: over 1000 packets).
pub fn many_lines_batch() -> Vec<u8> {
    b"a\n".repeat(512 * 1024)
}

/// A 1 MiB batch that is accepted: 1000 valid packets padded with spaces to 1 MiB.
pub fn padded_batch(seed: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 << 20);
    for i in 0..1000 {
        let line = packet("attack", "batch", seed * 1000 + i);
        body.extend_from_slice(line.as_bytes());
        body.extend(std::iter::repeat_n(
            b' ',
            1047usize.saturating_sub(line.len()),
        ));
        body.push(b'\n');
    }
    body.resize(1 << 20, b' ');
    body
}

/// Packets in the stream on `subject`.
pub async fn stored(js: &jetstream::Context, subject: &str) -> u64 {
    let Ok(stream) = js.get_stream(STREAM).await else {
        return 0;
    };
    match stream.info_with_subjects(subject).await {
        Ok(mut info) => {
            use futures::TryStreamExt;
            let mut n = 0;
            while let Ok(Some((_, count))) = info.try_next().await {
                n += count as u64;
            }
            n
        }
        Err(_) => 0,
    }
}

/// What the well-behaved device saw: per packet, the post latency (last try) and tries.
#[derive(Debug, Default, Clone)]
pub struct Device {
    /// (sent at, since the start; latency of the accepted try; tries)
    pub posts: Vec<(Duration, Duration, u32)>,
    /// Packets never accepted within their deadline.
    pub given_up: usize,
}

/// Posts one packet every `every` until `until`, each on a new connection; a refused try
/// (503, connection closed) is tried again after `Retry-After` (at most 1 s) until the
/// packet's deadline of 20 s.
pub async fn device(port: u16, start: Instant, every: Duration, until: Instant) -> Device {
    let http = Http::local(port).with_timeout(Duration::from_secs(20));
    let mut out = Device::default();
    let mut i = 0;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        let body = packet("good-device", "steady", i);
        i += 1;
        let sent = Instant::now();
        let deadline = sent + Duration::from_secs(20);
        let mut tries = 0;
        loop {
            tries += 1;
            let t = Instant::now();
            let answer = http.post("/v1/outcomes", body.clone(), &[]).await;
            if answer.status == 202 {
                out.posts.push((sent - start, t.elapsed(), tries));
                break;
            }
            if Instant::now() > deadline {
                out.given_up += 1;
                break;
            }
            let wait = answer
                .header("retry-after")
                .trim()
                .parse::<u64>()
                .ok()
                .map_or(Duration::from_millis(100), |s| {
                    Duration::from_secs(s.min(1))
                });
            tokio::time::sleep(wait).await;
        }
    }
    out
}

/// How a slow connection ended: after how long the agent closed it, and the status it
/// answered (0: closed without an answer).
#[derive(Debug, Clone, Copy)]
pub struct Closed {
    pub after: Duration,
    pub status: u16,
}

/// A slowloris: a request head that never ends, one byte every `gap`, until the agent closes
/// the connection or `give_up` passes (then `None`). Raw on purpose: no HTTP client trickles
/// its head.
pub async fn slow_head(port: u16, gap: Duration, give_up: Duration) -> Option<Closed> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let _ = s
        .write_all(b"POST /v1/outcomes HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await;
    trickle(&mut s, t, gap, give_up).await
}

/// A slow body: a whole head declaring 512 bytes, then one byte every `gap`. Raw on purpose:
/// no HTTP client trickles its body.
pub async fn slow_body(port: u16, gap: Duration, give_up: Duration) -> Option<Closed> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let _ = s
        .write_all(b"POST /v1/outcomes HTTP/1.1\r\nHost: x\r\nContent-Length: 512\r\n\r\n{")
        .await;
    trickle(&mut s, t, gap, give_up).await
}

async fn trickle(
    s: &mut TcpStream,
    t: Instant,
    gap: Duration,
    give_up: Duration,
) -> Option<Closed> {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        if t.elapsed() > give_up {
            return None;
        }
        match tokio::time::timeout(gap, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {
                // Nothing from the agent for a gap: one more byte (an error means it closed).
                if s.write_all(b"x").await.is_err() {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Some(Closed {
        after: t.elapsed(),
        status,
    })
}

/// An attack on the intake, while the well-behaved device posts one packet every 20 ms.
#[derive(Debug, Clone, Copy)]
pub struct Attack {
    pub slow_heads: usize,
    pub slow_bodies: usize,
    pub batches: usize,
}

/// What an attack did.
#[derive(Debug)]
pub struct Outcome {
    pub device: Device,
    /// How each slow connection ended (`None`: still open at the give-up time).
    pub slow: Vec<Option<Closed>>,
    /// Status and rule of each batch.
    pub batches: Vec<(u16, String)>,
    /// From the start: when the last attacking connection ended.
    pub attack_ended: Duration,
    pub peak_rss_kib: u64,
    pub idle_rss_kib: u64,
    /// The device's packets stored on its subject, and how many it had accepted.
    pub stored: u64,
    pub accepted: usize,
    /// Refusals by rule, from `/metrics`.
    pub refusals: Vec<(String, u64)>,
}

fn median(it: impl Iterator<Item = Duration>) -> Option<Duration> {
    let mut v: Vec<Duration> = it.collect();
    v.sort();
    v.get(v.len() / 2).copied()
}

/// Runs `attack` against `agent` for the device's `span` (the attack starts 1 s in);
/// `give_up` bounds every slow connection.
pub async fn run_attack(
    agent: &AgentProc,
    js: &jetstream::Context,
    attack: Attack,
    span: Duration,
    give_up: Duration,
) -> Outcome {
    let (idle_rss_kib, _) = agent.memory_kib();
    let port = agent.port;
    // Bodies made before the clock starts: making them during the attack starved the slow
    // clients of this process (their heads went out after the agent's header timeout).
    let lines = bytes::Bytes::from(many_lines_batch());
    let bodies: Vec<bytes::Bytes> = (0..attack.batches)
        .map(|i| {
            if i % 2 == 0 {
                lines.clone()
            } else {
                padded_batch(i).into()
            }
        })
        .collect();
    // A batch may wait as long as a slow connection is allowed to last.
    let http = agent.http.with_timeout(give_up);
    let start = Instant::now();
    let device = tokio::spawn(device(port, start, Duration::from_millis(20), start + span));
    tokio::time::sleep_until((start + Duration::from_secs(1)).into()).await;
    let gap = Duration::from_millis(500);
    let slow: Vec<_> = (0..attack.slow_heads + attack.slow_bodies)
        .map(|i| {
            tokio::spawn(async move {
                let c = if i < attack.slow_heads {
                    slow_head(port, gap, give_up).await
                } else {
                    slow_body(port, gap, give_up).await
                };
                (c, start.elapsed())
            })
        })
        .collect();
    let batches: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let http = http.clone();
            tokio::spawn(async move {
                let answer = http.post("/v1/outcomes/batch", body, &[]).await;
                ((answer.status, answer.rule()), start.elapsed())
            })
        })
        .collect();
    let mut attack_ended = Duration::ZERO;
    let mut slow_out = Vec::new();
    for t in slow {
        let (c, at) = t.await.expect("slow connection");
        attack_ended = attack_ended.max(at);
        slow_out.push(c);
    }
    let mut batch_out = Vec::new();
    for t in batches {
        let (b, at) = t.await.expect("batch");
        attack_ended = attack_ended.max(at);
        batch_out.push(b);
    }
    let device = device.await.expect("device");
    let accepted = device.posts.len();
    let (peak_rss_kib, _) = agent.memory_kib();
    let stored = qis_testkit::eventually(
        "the device's accepted packets stored",
        Duration::from_secs(30),
        || async {
            let n = stored(js, GOOD_SUBJECT).await;
            (n >= accepted as u64).then_some(n)
        },
    )
    .await;
    let refusals = agent
        .http
        .metrics()
        .await
        .expect("the agent's metrics after the attack")
        .series("qis_agent_packets_refused_total")
        .filter_map(|s| Some((s.labels.get("rule")?.clone(), s.value as u64)))
        .collect();
    Outcome {
        device,
        slow: slow_out,
        batches: batch_out,
        attack_ended,
        peak_rss_kib,
        idle_rss_kib,
        stored,
        accepted,
        refusals,
    }
}

impl Outcome {
    /// The device's median post latency before the attack (its first second).
    pub fn normal(&self) -> Duration {
        median(
            self.device
                .posts
                .iter()
                .filter(|p| p.0 < Duration::from_secs(1))
                .map(|p| p.1),
        )
        .unwrap_or_default()
    }

    /// From the end of the attack until the device's posts are back to normal: the first
    /// post after which 10 in a row took at most 3× the normal latency (and 5 ms) on their
    /// first try. `None`: never within the run.
    pub fn recovered_after(&self) -> Option<Duration> {
        let bound = (self.normal() * 3).max(Duration::from_millis(5));
        let after: Vec<_> = self
            .device
            .posts
            .iter()
            .filter(|p| p.0 >= self.attack_ended)
            .collect();
        after
            .windows(10)
            .find(|w| w.iter().all(|p| p.1 <= bound && p.2 == 1))
            .map(|w| w[0].0 - self.attack_ended)
    }
}
