//! Operator scale: 1,000 QisSubjects on one swarm with 3 sites (3,000 consumers) against the
//! real control plane (kube-apiserver, etcd, controller manager, scheduler;
//! `qis_testkit::controlplane`) and a real nats-server, the operator running as its
//! ServiceAccount under the chart's RBAC: time until all are Ready, API requests (counted from
//! the API server's audit log) per reconcile, requests and writes per minute at rest and under
//! traffic (packets flowing into the stream), operator RSS. Prints a Markdown table;
//! `QIS_BENCH_WRITE=1` writes `target/benchmarks-scale-<n>.md`.
//!
//!   cargo bench -p qis-operator --bench scale          (QIS_SCALE_SUBJECTS=1000 by default)

use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use qis_crds::{QisSubject, QisSubjectSpec, QisSwarm, QisSwarmSpec, SiteSpec, SwarmRef};
use qis_testkit::NatsServer;
use qis_testkit::controlplane::ControlPlane;
use qis_testkit::http::Http;
use qis_testkit::metrics::Metrics;
use std::time::{Duration, Instant};

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// The operator's metrics on `port`, empty when it did not answer (the bench reports what it
/// got; a metric nothing has incremented yet counts 0).
async fn scrape(port: u16) -> Metrics {
    Http::local(port).metrics().await.unwrap_or_default()
}

/// The operator's requests and writes so far, from the API server's audit log (it is written
/// in batches: wait until it has caught up).
fn requests(cp: &ControlPlane, user: &str) -> (u64, u64) {
    std::thread::sleep(Duration::from_millis(500));
    let (all, writes) = cp.request_counts(user);
    (all as u64, writes as u64)
}

fn main() {
    let n: usize = std::env::var("QIS_SCALE_SUBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let cp = ControlPlane::start();
    cp.namespace("scale", &[]);
    let (kubeconfig, user) = cp.operator_identity("qis-operator", "qis-system", &[], dir.path());
    let port = qis_testkit::free_port();
    let resync = 60u64;
    let operator = std::process::Command::new(env!("CARGO_BIN_EXE_qis-operator"))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "qis-system")
        .env(
            "RUST_LOG",
            std::env::var("QIS_SCALE_LOG").unwrap_or_else(|_| "error".into()),
        )
        .args([
            "--nats-url",
            &nats.url(),
            "--resync",
            &format!("{resync}s"),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--scratch-dir")
        .arg(dir.path().join("scratch"))
        .stdout(std::process::Stdio::null())
        .stderr(if std::env::var_os("QIS_SCALE_LOG").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .spawn()
        .expect("operator");
    // Killed on every exit, a failed assertion included.
    let mut operator = qis_testkit::KillOnDrop(operator);
    let client = rt.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("config");
        Client::try_from(config).expect("client")
    });
    let (ready_after, requests_to_ready, nats_to_ready, reconciles) = rt.block_on(async {
        let swarms: Api<QisSwarm> = Api::namespaced(client.clone(), "scale");
        let subjects: Api<QisSubject> = Api::namespaced(client.clone(), "scale");
        let spec = QisSwarmSpec {
            sites: ["a", "b", "c"]
                .iter()
                .map(|s| SiteSpec {
                    name: (*s).into(),
                    replicas: 1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        swarms
            .create(&PostParams::default(), &QisSwarm::new("plant", spec))
            .await
            .expect("swarm");
        let start = Instant::now();
        let before = requests(&cp, &user).0;
        let nats_before = scrape(port).await.count("qis_operator_nats_requests_total");
        for i in 0..n {
            let s = QisSubjectSpec {
                swarm_ref: SwarmRef {
                    name: "plant".into(),
                },
                domain: "predictive-maintenance".into(),
                problem_class: Some(format!("class-{i}")),
                ..Default::default()
            };
            subjects
                .create(
                    &PostParams::default(),
                    &QisSubject::new(&format!("s{i:04}"), s),
                )
                .await
                .expect("subject");
        }
        loop {
            let ready = subjects
                .list(&ListParams::default())
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
                .unwrap_or(0);
            if ready == n {
                break;
            }
            if start.elapsed()
                > Duration::from_secs(
                    std::env::var("QIS_SCALE_DEADLINE")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(600),
                )
            {
                let mut reasons = std::collections::BTreeMap::new();
                for s in subjects
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                {
                    let r = s
                        .status
                        .and_then(|st| {
                            st.conditions
                                .into_iter()
                                .find(|c| c.type_ == "Ready")
                                .map(|c| {
                                    format!(
                                        "{} {}: {}",
                                        c.status,
                                        c.reason,
                                        c.message.chars().take(80).collect::<String>()
                                    )
                                })
                        })
                        .unwrap_or("no status".into());
                    *reasons.entry(r).or_insert(0) += 1;
                }
                eprintln!("{reasons:#?}");
            }
            assert!(
                start.elapsed()
                    < Duration::from_secs(
                        std::env::var("QIS_SCALE_DEADLINE")
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(600)
                    ),
                "not all Ready after 10 min ({ready}/{n})"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (
            start.elapsed(),
            requests(&cp, &user).0 - before,
            scrape(port).await.count("qis_operator_nats_requests_total") - nats_before,
            scrape(port).await.count("qis_operator_reconciles_total"),
        )
    });
    let rss_ready = rss_mib(operator.0.id());
    // Warm-up: the first resync after convergence still records live state that changed while
    // converging (the stream's consumer count in the swarm status). Steady state is the one
    // full resync period after it.
    std::thread::sleep(Duration::from_secs(resync + 5));
    const WRITES: &str = "qis_operator_api_writes_total";
    let steady_before = rt.block_on(scrape(port));
    let (req_before, api_writes_before) = requests(&cp, &user);
    std::thread::sleep(Duration::from_secs(resync + 5));
    let steady_after = rt.block_on(scrape(port));
    let nats_steady = steady_after.count("qis_operator_nats_requests_total")
        - steady_before.count("qis_operator_nats_requests_total");
    let writes = steady_after.count(WRITES) - steady_before.count(WRITES);
    if writes > 0.0 {
        let series = |m: &Metrics| m.series(WRITES).cloned().collect::<Vec<_>>();
        eprintln!(
            "writes at steady state: before {:?}, after {:?}",
            series(&steady_before),
            series(&steady_after)
        );
    }
    let (req_after, api_writes_after) = requests(&cp, &user);
    let steady_requests = req_after - req_before;
    let steady_api_writes = api_writes_after - api_writes_before;
    // Under traffic: 20 packets a second into the stream for one resync period (bounded).
    let traffic_secs = resync + 5;
    let (req_before, api_writes_before) = requests(&cp, &user);
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
        let start = tokio::time::Instant::now();
        for i in 0..(traffic_secs * 20) as u32 {
            let ack = js
                .publish(
                    "qis.scale.plant.predictive-maintenance.class-0",
                    format!("p{i}").into(),
                )
                .await
                .expect("publish");
            ack.await.expect("ack");
            tokio::time::sleep_until(start + Duration::from_millis(50) * (i + 1)).await;
        }
    });
    let (req_after, api_writes_after) = requests(&cp, &user);
    let traffic_requests = req_after - req_before;
    let traffic_writes = api_writes_after - api_writes_before;
    let rss_steady = rss_mib(operator.0.id());
    let _ = operator.0.kill();

    let per_reconcile = requests_to_ready as f64 / reconciles.max(1.0);
    let nats_per_reconcile = nats_to_ready / reconciles.max(1.0);
    let check = |ok: bool| if ok { "met" } else { "**missed**" };
    let mut t = format!(
        "{n} QisSubjects × 3 sites = {} consumers, one swarm; real kube-apiserver 1.35.4 (etcd, controller manager, scheduler) + nats-server 2.15.1 on loopback; the operator as its ServiceAccount.\n\n| Measure | Value | Target | |\n|---|---:|---:|---|\n",
        3 * n
    );
    t.push_str(&format!(
        "| created → all subjects Ready | {:.1} s | ≤ 20 s | {} |\n",
        ready_after.as_secs_f64(),
        check(ready_after <= Duration::from_secs(20))
    ));
    t.push_str(&format!(
        "| API requests per reconcile (while converging) | {per_reconcile:.1} | | |\n"
    ));
    t.push_str(&format!(
        "| NATS (JetStream API) requests per reconcile (while converging) | {nats_per_reconcile:.1} | | |\n"
    ));
    t.push_str(&format!(
        "| reconciles until all Ready | {reconciles:.0} | | |\n"
    ));
    t.push_str(&format!(
        "| API / NATS requests during one steady resync period ({resync} s) | {steady_requests} / {nats_steady:.0} | | |\n"
    ));
    let per_min = |v: f64, secs: u64| v * 60.0 / secs as f64;
    t.push_str(&format!(
        "| writes per minute at rest (operator metric / API server audit) | {:.0} / {:.0} | 0 | {} |\n",
        per_min(writes, resync + 5),
        per_min(steady_api_writes as f64, resync + 5),
        check(writes == 0.0 && steady_api_writes == 0)
    ));
    t.push_str(&format!(
        "| API requests / writes per minute under traffic (20 packets/s) | {:.0} / {:.0} | writes ≤ 2 | {} |\n",
        per_min(traffic_requests as f64, traffic_secs),
        per_min(traffic_writes as f64, traffic_secs),
        check(per_min(traffic_writes as f64, traffic_secs) <= 2.0)
    ));
    t.push_str(&format!("| operator RSS (all Ready / after a resync) | {rss_ready:.1} / {rss_steady:.1} MiB | ≤ 64 MiB | {} |\n", check(rss_steady.max(rss_ready) <= 64.0)));
    println!("{t}");
    if std::env::var_os("QIS_BENCH_WRITE").is_some() {
        let path = qis_testkit::workspace_root().join(format!("target/benchmarks-scale-{n}.md"));
        std::fs::write(&path, format!("<!-- written by: QIS_BENCH_WRITE=1 cargo bench -p qis-operator --bench scale -->\n{t}")).expect("write");
    }
}
