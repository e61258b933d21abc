//! The intake under attack, against the release agent and a real nats-server: per scenario,
//! a well-behaved device posts one packet every 20 ms for 10 s (each on a new connection,
//! retrying after `Retry-After`), the attack starts 1 s in. Prints one Markdown row per
//! scenario. The agent runs with `headerTimeout: 2s, bodyTimeout: 2s`, other limits default.
//!
//!   cargo bench -p qis-agent --bench attack_intake
//!
//! "time to recover": from the end of the attack (its last connection closed or answered)
//! until the first of 10 posts in a row that each took at most 3× the device's median latency
//! before the attack (and at most 5 ms) on the first try.

#[path = "../tests/intake_support/mod.rs"]
mod intake_support;

use async_nats::jetstream;
use intake_support::*;
use qis_testkit::NatsServer;
use std::time::Duration;

fn main() {
    let _ = rlimit::increase_nofile_limit(4096);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let scenarios = [
        (
            "slowloris heads",
            "1,000 connections trickling a request head, 1 byte / 500 ms",
            Attack {
                slow_heads: 1000,
                slow_bodies: 0,
                batches: 0,
            },
        ),
        (
            "slow bodies",
            "1,000 connections trickling a 512-byte body, 1 byte / 500 ms",
            Attack {
                slow_heads: 0,
                slow_bodies: 1000,
                batches: 0,
            },
        ),
        (
            "big batches",
            "100 concurrent 1 MiB batches (half 512 Ki lines, half 1,000 padded packets)",
            Attack {
                slow_heads: 0,
                slow_bodies: 0,
                batches: 100,
            },
        ),
        (
            "all at once",
            "500 slow heads + 500 slow bodies + 100 concurrent 1 MiB batches",
            Attack {
                slow_heads: 500,
                slow_bodies: 500,
                batches: 100,
            },
        ),
    ];
    println!(
        "| attack | what was tried | peak RSS | refusals by rule | packets lost | time to recover |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, what, attack) in scenarios {
        let row = rt.block_on(async {
            let nats = NatsServer::start();
            let dir = tempfile::tempdir().expect("tmp");
            let bin = std::path::Path::new(env!("CARGO_BIN_EXE_qis-agent"));
            let agent = AgentProc::start(bin, &nats.url(), dir.path(), "{headerTimeout: 2s, bodyTimeout: 2s}").await;
            let js = jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
            let out = run_attack(&agent, &js, attack, Duration::from_secs(10), Duration::from_secs(20)).await;
            let refusals: Vec<String> = out.refusals.iter().map(|(r, n)| format!("{r} {n}")).collect();
            let lost = out.accepted as u64 + out.device.given_up as u64 - out.stored.min(out.accepted as u64);
            let recover = out.recovered_after().map_or("not within the run".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
            format!(
                "| {name} | {what} | {:.1} MiB (idle {:.1}) | {} | {lost} of {} | {recover} (normal post {:.1} ms) |",
                out.peak_rss_kib as f64 / 1024.0,
                out.idle_rss_kib as f64 / 1024.0,
                refusals.join(", "),
                out.accepted + out.device.given_up,
                out.normal().as_secs_f64() * 1000.0,
            )
        });
        println!("{row}");
    }
}
