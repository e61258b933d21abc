//! The agent loop against a real nats-server 2.15.1, standalone (the same loop as in a
//! cluster): agents run in-process, each with its own site, intake port and outbox.

use async_nats::jetstream;
use qis_agent::config::{Config, FileConfig, NatsConfig, SubjectConfig};
use qis_testkit::NatsServer;
use qis_testkit::http::Http;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);
const STREAM: &str = "QIS_OUTCOMES";

struct Agent {
    port: u16,
    http: Http,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Agent {
    async fn start(nats: &str, site: &str, data: &Path) -> Agent {
        Agent::start_as(nats, site, &format!("agent-{site}"), data).await
    }

    /// A replica: `agent_id` names it, `site` is shared with its peers.
    async fn start_as(nats: &str, site: &str, agent_id: &str, data: &Path) -> Agent {
        Agent::start_with(nats, site, agent_id, data, Vec::new()).await
    }

    /// An agent following `wear` and the `extra` subjects.
    async fn start_with(
        nats: &str,
        site: &str,
        agent_id: &str,
        data: &Path,
        extra: Vec<SubjectConfig>,
    ) -> Agent {
        if std::env::var_os("QIS_TEST_LOGS").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("debug,hyper=info,kube=info")
                .try_init();
        }
        let port = qis_testkit::free_port();
        let file = FileConfig {
            agent_id: agent_id.into(),
            site: site.into(),
            nats: NatsConfig {
                url: nats.into(),
                ..Default::default()
            },
            subject_prefix: "qis.iot".into(),
            stream: STREAM.into(),
            manage_jetstream: true,
            subjects: vec![SubjectConfig {
                name: "wear".into(),
                domain: "predictive-maintenance".into(),
                problem_class: Some("bearing-wear".into()),
                addressing: None,
                synthesis: Default::default(),
            }]
            .into_iter()
            .chain(extra)
            .collect(),
            synthesis: Default::default(),
            listen: ([127, 0, 0, 1], port).into(),
            data_dir: data.to_owned(),
            outbox_max: 10_000,
            intake: Default::default(),
            outbox: Default::default(),
        };
        let config = Config::from_file_config(file).expect("config");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(qis_agent::run::run(config, Some(rx)));
        let agent = Agent {
            port,
            http: Http::local(port),
            stop,
            task,
        };
        eventually("agent ready", || async {
            (agent.http.get("/readyz").await.status == 200).then_some(())
        })
        .await;
        agent
    }

    /// Stops gracefully (intake closed, outbox flushed for up to 5 s).
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }

    async fn view(&self) -> Option<Value> {
        self.http.get_json("/v1/consensus/wear").await
    }

    async fn consensus(&self) -> Option<Value> {
        self.view()
            .await?
            .get("consensus")
            .cloned()
            .filter(|c| !c.is_null())
    }

    /// A metric named exactly `name`, summed over the label sets carrying `filter`; 0 when
    /// absent.
    async fn metric(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.http
            .metrics()
            .await
            .map_or(0.0, |m| m.count_where(name, filter))
    }
}

/// Polls `f` until it returns `Some`, or fails the test after `WAIT` saying what it waited for.
async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    qis_testkit::eventually(what, WAIT, f).await
}

fn now() -> f64 {
    qis_agent::subject_worker::now()
}

fn outcome(agent: &str, confidence: f64, ts: f64) -> String {
    json!({"agent_id": agent, "domain": "predictive-maintenance", "problem_class": "bearing-wear",
           "conclusion": "47 Hz harmonic in the bearing housing", "confidence": confidence,
           "context_vector": [0.4, 0.7], "timestamp": ts, "source_node": format!("{agent}-node")})
    .to_string()
}

async fn post(a: &Agent, body: &str) -> u16 {
    a.http
        .post("/v1/outcomes", body.to_owned(), &[])
        .await
        .status
}

async fn agents_seen(a: &Agent) -> Option<u64> {
    a.consensus().await?.get("agents")?.as_u64()
}

/// Outcome packets in the stream (synthesis packets left out) and how many distinct ids.
/// Reads until the consumer has nothing pending; the per-message timeout is only a guard (a
/// short one cut reads short on a loaded machine).
async fn outcomes(js: &jetstream::Context) -> (usize, usize) {
    use futures::StreamExt;
    let Ok(stream) = js.get_stream(STREAM).await else {
        return (0, 0);
    };
    if stream.cached_info().state.messages == 0 {
        return (0, 0);
    }
    let Ok(c) = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
    else {
        return (0, 0);
    };
    let Ok(mut msgs) = c.messages().await else {
        return (0, 0);
    };
    let mut ids = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), msgs.next()).await {
        let h = m.headers.clone().unwrap_or_default();
        if h.get("Qis-Kind").map(|v| v.as_str()) != Some("synthesis") {
            ids.push(
                h.get("Nats-Msg-Id")
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default(),
            );
        }
        if m.info().map(|i| i.pending == 0).unwrap_or(true) {
            break;
        }
    }
    let n = ids.len();
    ids.sort();
    ids.dedup();
    (n, ids.len())
}

async fn stream_messages(js: &jetstream::Context) -> u64 {
    match js.get_stream(STREAM).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Proves one subject the agent cannot use (a window the old schema admitted and that used to
/// panic the agent while parsing) is refused and reported, and the agent serves the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subject_with_an_unusable_setting_is_refused_and_the_others_served() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let bad: SubjectConfig = serde_yaml::from_str(
        "{name: bad, domain: hvac, synthesis: {window: 99999999999999999999s}}",
    )
    .expect("the agent reads the subject; using it is refused later");
    let agent = Agent::start_with(&server.url(), "a", "agent-a", dir.path(), vec![bad]).await;
    let refused = eventually("the bad subject reported as refused", || async {
        let v = agent.http.get_json("/v1/consensus/bad").await?;
        v["refused"].as_str().map(str::to_owned)
    })
    .await;
    assert!(
        refused.contains("synthesis.window"),
        "names the field: {refused}"
    );
    assert_eq!(
        agent.metric("qis_agent_subjects_refused_total", &[]).await,
        1.0
    );
    assert_eq!(post(&agent, &outcome("pump-1", 0.9, now())).await, 202);
    eventually("the good subject still synthesizes", || async {
        (agents_seen(&agent).await? == 1).then_some(())
    })
    .await;
    assert!(!agent.task.is_finished(), "the agent is still running");
    agent.stop().await;
}

/// Proves three agents on three sites converge on the same consensus, and a fourth that joins
/// later sees the twins deposited before it joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_sites_converge_and_a_late_joiner_catches_up() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let mut agents = Vec::new();
    for site in ["a", "b", "c"] {
        agents.push(Agent::start(&server.url(), site, &dir.path().join(site)).await);
    }
    let t = now();
    for (i, a) in agents.iter().enumerate() {
        assert_eq!(
            post(a, &outcome(&format!("pump-{i}"), 0.8 + i as f64 * 0.05, t)).await,
            202
        );
    }
    for a in &agents {
        eventually("3 agents in every view", || async {
            (agents_seen(a).await? == 3).then_some(())
        })
        .await;
    }
    let views: Vec<Value> = futures::future::join_all(agents.iter().map(|a| a.consensus()))
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        views.windows(2).all(|w| w[0] == w[1]),
        "same consensus everywhere: {views:?}"
    );
    assert_eq!(views[0]["alert"], true);

    let late = Agent::start(&server.url(), "d", &dir.path().join("d")).await;
    eventually("the late joiner sees the earlier twins", || async {
        (agents_seen(&late).await? == 3).then_some(())
    })
    .await;
    for a in agents.into_iter().chain([late]) {
        a.stop().await;
    }
}

/// Proves duplicates and floods change nothing: the same packet twice is one packet, one
/// agent sending many is one vote, and synthesis packets (which the agents publish on
/// change, and which we inject too) never count as votes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_floods_and_synthesis_packets_do_not_vote() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let a = Agent::start(&server.url(), "a", &dir.path().join("a")).await;
    let t = now();
    let same = outcome("pump-1", 0.9, t);
    assert_eq!(post(&a, &same).await, 202);
    assert_eq!(post(&a, &same).await, 202);
    for i in 0..20 {
        assert_eq!(
            post(&a, &outcome("pump-2", 0.5, t - f64::from(i))).await,
            202
        );
    }
    let synth = outcome("synth-agent", 0.99, t);
    let answer = a
        .http
        .post(
            "/v1/outcomes",
            synth,
            &[("Qis-Kind", "synthesis"), ("Qis-Hops", "1")],
        )
        .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    let c = eventually("22 packets synthesized", || async {
        let c = a.consensus().await?;
        (c["packets"].as_u64()? == 21).then_some(c)
    })
    .await;
    assert_eq!(
        c["agents"], 2,
        "pump-1 once, pump-2 once, the synthesis packet never: {c}"
    );
    let js = jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    assert_eq!(
        outcomes(&js).await,
        (21, 21),
        "the repeated packet was stored once (Nats-Msg-Id)"
    );
    // A redelivery JetStream cannot dedupe: the same body again without headers (as the seed
    // publishes). Synthesis recognises it by the id of its body and changes nothing.
    let canonical = qis_agent::packet::OutcomePacket::decode(same.as_bytes())
        .expect("valid")
        .encode()
        .expect("encodes");
    js.publish(
        "qis.iot.predictive-maintenance.bearing-wear",
        canonical.into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    eventually("the redelivery was seen and ignored", || async {
        (a.metric("qis_agent_twins_duplicate_total", &[]).await >= 1.0).then_some(())
    })
    .await;
    let c = a.consensus().await.expect("consensus");
    assert_eq!(
        (c["packets"].as_u64(), c["agents"].as_u64()),
        (Some(21), Some(2)),
        "{c}"
    );
    a.stop().await;
}

/// Proves every intake refusal: oversize, unknown key, NaN, bad token, more than one hop,
/// each with its status code and rule, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_refuses_bad_packets() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let a = Agent::start(&server.url(), "a", &dir.path().join("a")).await;
    let good: Value = serde_json::from_str(&outcome("pump", 0.5, now())).expect("json");
    let with = |k: &str, v: Value| {
        let mut g = good.clone();
        g[k] = v;
        g.to_string()
    };
    let nan = good
        .to_string()
        .replace("\"confidence\":0.5", "\"confidence\":NaN");
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            with("conclusion", json!("x".repeat(600))),
            vec![],
            413,
            "too_large",
        ),
        (with("extra", json!(1)), vec![], 400, "unknown_field"),
        (nan, vec![], 422, "non_finite"),
        (
            with("domain", json!("predictive-maintenance.>")),
            vec![],
            422,
            "invalid_token",
        ),
        (
            good.to_string(),
            vec![("Qis-Kind", "synthesis"), ("Qis-Hops", "2")],
            422,
            "hop_limit",
        ),
        (
            good.to_string(),
            vec![("Qis-Kind", "outcome"), ("Qis-Hops", "1")],
            422,
            "bad_header",
        ),
    ];
    for (body, headers, code, rule) in cases {
        let reply = a.http.post("/v1/outcomes", body, &headers).await;
        assert_eq!(reply.status, code, "{rule}: {reply:?}");
        assert_eq!(reply.rule(), rule, "{reply:?}");
        assert!(
            a.metric("qis_agent_packets_refused_total", &[("rule", rule)])
                .await
                >= 1.0
        );
    }
    let js = jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    assert_eq!(
        stream_messages(&js).await,
        0,
        "nothing refused reached NATS"
    );
    a.stop().await;
}

/// Proves the outbox across a nats-server kill and restart: packets accepted while NATS is
/// down are all deposited once it is back, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_survives_a_nats_outage() {
    let mut server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let a = Agent::start(&server.url(), "a", &dir.path().join("a")).await;
    server.kill();
    let t = now();
    for i in 0..50 {
        assert_eq!(post(&a, &outcome(&format!("pump-{i}"), 0.7, t)).await, 202);
    }
    eventually("packets wait in the outbox", || async {
        (a.metric("qis_agent_outbox_depth", &[]).await >= 50.0).then_some(())
    })
    .await;
    server.restart();
    let js = jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    eventually("all 50 deposited", || async {
        (outcomes(&js).await.0 >= 50).then_some(())
    })
    .await;
    eventually("outbox empty", || async {
        (a.metric("qis_agent_outbox_depth", &[]).await == 0.0).then_some(())
    })
    .await;
    assert_eq!(outcomes(&js).await, (50, 50), "all 50 stored, none twice");
    a.stop().await;
}

/// Proves the outbox across an agent restart: an agent stopped with a full outbox delivers it
/// after it starts again (same data dir), nothing twice; and its consensus after the restart
/// covers the same window as before (rebuilt from the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_and_window_survive_an_agent_restart() {
    let mut server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let a = Agent::start(&server.url(), "a", &dir.path().join("a")).await;
    let t = now();
    for i in 0..5 {
        assert_eq!(post(&a, &outcome(&format!("early-{i}"), 0.8, t)).await, 202);
    }
    eventually("5 agents seen", || async {
        (agents_seen(&a).await? == 5).then_some(())
    })
    .await;
    server.kill();
    for i in 0..30 {
        assert_eq!(post(&a, &outcome(&format!("late-{i}"), 0.8, t)).await, 202);
    }
    eventually("outbox holds the late ones", || async {
        (a.metric("qis_agent_outbox_depth", &[]).await >= 30.0).then_some(())
    })
    .await;
    a.stop().await;
    let lines = std::fs::read_to_string(dir.path().join("a/outbox.jsonl")).expect("outbox file");
    assert!(lines.lines().count() >= 30, "the outbox is on disk");

    server.restart();
    let again = Agent::start(&server.url(), "a", &dir.path().join("a")).await;
    let js = jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    eventually("outbox delivered after the restart", || async {
        (outcomes(&js).await.0 >= 35).then_some(())
    })
    .await;
    eventually("the restarted agent sees all 35 agents", || async {
        (agents_seen(&again).await? == 35).then_some(())
    })
    .await;
    assert_eq!(outcomes(&js).await, (35, 35), "every outcome stored once");
    again.stop().await;
}

/// Runs the seed-style Python peer (nats-py from the project's tools) and returns its JSON.
fn seed_peer(args: &[&str]) -> Value {
    let python = qis_testkit::workspace_root().join(".tools/venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/seed_peer.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/install-tools.sh)", python.display()));
    assert!(
        out.status.success(),
        "seed peer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json from the seed peer")
}

/// Proves interop with the seed article's client both ways: packets it deposits (one awaited
/// publish each, no headers) are synthesized by our agent, and packets our agent deposits are
/// read by its `query_twins` (durable pull consumer, `OutcomePacket(**data)`) without error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_client_interop_both_ways() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let a = Agent::start(&server.url(), "a", &dir.path().join("a")).await;
    let subject = "qis.iot.predictive-maintenance.bearing-wear";
    let url = server.url();
    let (u, s) = (url.clone(), subject.to_owned());
    tokio::task::spawn_blocking(move || seed_peer(&["deposit", &u, &s, "2"]))
        .await
        .expect("peer");
    eventually("our agent synthesizes the seed's packets", || async {
        (agents_seen(&a).await? == 2).then_some(())
    })
    .await;

    let (u, s) = (url.clone(), subject.to_owned());
    tokio::task::spawn_blocking(move || seed_peer(&["subscribe", &u, &s, "seed-reader"]))
        .await
        .expect("peer");
    let t = now();
    for i in 0..3 {
        assert_eq!(post(&a, &outcome(&format!("ours-{i}"), 0.9, t)).await, 202);
    }
    let (u, s) = (url.clone(), subject.to_owned());
    let read = eventually("the seed reads our packets", || {
        let (u, s) = (u.clone(), s.clone());
        async move {
            let got =
                tokio::task::spawn_blocking(move || seed_peer(&["fetch", &u, &s, "seed-reader"]))
                    .await
                    .ok()?;
            let ids: Vec<String> = got
                .as_array()?
                .iter()
                .filter_map(|p| p["agent_id"].as_str().map(str::to_owned))
                .collect();
            ids.iter().any(|i| i.starts_with("ours-")).then_some(ids)
        }
    })
    .await;
    assert!(
        read.iter()
            .all(|i| i.starts_with("ours-") || i == "agent-a"),
        "only our outcomes and our synthesis packets: {read:?}"
    );
    a.stop().await;
}

/// Proves no loss and no double count across a nats-server SIGKILL and restart in the middle
/// of a 10k-packet run with three agents: every agent's consensus covers exactly the 10,000
/// deposited outcomes, and the stream holds each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_killed_mid_run_loses_and_doubles_nothing() {
    let mut server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let mut agents = Vec::new();
    for site in ["a", "b", "c"] {
        agents.push(Agent::start(&server.url(), site, &dir.path().join(site)).await);
    }
    let t = now();
    let total = 10_000usize;
    let intakes: Vec<Http> = agents.iter().map(|a| a.http.clone()).collect();
    let sender = tokio::spawn(async move {
        for i in 0..total {
            // 100 sensors, 100 readings each, spread over the three sites' intakes.
            let body = outcome(
                &format!("sensor-{}", i % 100),
                0.6 + (i % 30) as f64 / 100.0,
                t - (i / 100) as f64,
            );
            let intake = &intakes[i % intakes.len()];
            loop {
                match intake.post("/v1/outcomes", body.clone(), &[]).await.status {
                    202 => break,
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }
    });
    eventually("the run is under way", || async {
        let mut n = 0.0;
        for a in &agents {
            n += a.metric("qis_agent_packets_in_total", &[]).await;
        }
        (n >= 3000.0).then_some(())
    })
    .await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    sender.await.expect("all packets handed to the intakes");
    let js = jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    eventually("all 10,000 outcomes stored", || async {
        (outcomes(&js).await.0 >= total).then_some(())
    })
    .await;
    assert_eq!(
        outcomes(&js).await,
        (total, total),
        "each outcome stored exactly once"
    );
    for a in &agents {
        eventually(
            "every agent counts exactly the deposited packets",
            || async {
                let c = a.consensus().await?;
                (c["packets"].as_u64()? == total as u64 && c["agents"].as_u64()? == 100)
                    .then_some(())
            },
        )
        .await;
    }
    for a in agents {
        a.stop().await;
    }
}

/// Proves an agent killed (SIGKILL, no graceful flush) with a full outbox delivers it after
/// it starts again on the same data directory, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_survives_sigkill() {
    let mut server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().expect("tmp");
    let config = |port: u16| {
        let path = dir.path().join(format!("agent-{port}.yaml"));
        std::fs::write(
            &path,
            format!(
                "agentId: killed\nsite: a\nnats: {{url: '{}'}}\nsubjectPrefix: qis.iot\nstream: {STREAM}\nlisten: 127.0.0.1:{port}\ndataDir: {}\nsubjects:\n- {{name: wear, domain: predictive-maintenance, problemClass: bearing-wear}}\n",
                url,
                dir.path().join("data").display()
            ),
        )
        .expect("config");
        path
    };
    let spawn = |path: std::path::PathBuf| {
        std::process::Command::new(env!("CARGO_BIN_EXE_qis-agent"))
            .args(["run", "--config"])
            .arg(path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("agent")
    };
    let port = qis_testkit::free_port();
    let first_http = Http::local(port);
    let mut first = spawn(config(port));
    eventually("first agent ready", || async {
        (first_http.get("/readyz").await.status == 200).then_some(())
    })
    .await;
    server.kill();
    let t = now();
    for i in 0..40 {
        let body = outcome(&format!("pump-{i}"), 0.7, t);
        assert_eq!(first_http.post("/v1/outcomes", body, &[]).await.status, 202);
    }
    let depth = || async { first_http.metrics().await?.value("qis_agent_outbox_depth") };
    eventually("40 packets in the outbox", || async {
        (depth().await? >= 40.0).then_some(())
    })
    .await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    server.restart();
    let port2 = qis_testkit::free_port();
    let mut second = spawn(config(port2));
    let js = jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    eventually("the killed agent's outbox delivered", || async {
        (outcomes(&js).await.0 >= 40).then_some(())
    })
    .await;
    assert_eq!(outcomes(&js).await, (40, 40), "every packet once");
    let _ = second.kill();
    let _ = second.wait();
}

/// Proves replicas of one site do not split the site's consumer, and that the standby's local
/// view stays current: two replicas of site `a`, one pinned; outcomes posted to either reach
/// both views (the standby follows the stream), and only the active replica publishes
/// synthesis packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_replica_keeps_its_view_current() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let r1 = Agent::start_as(&server.url(), "a", "a-1", &dir.path().join("a-1")).await;
    let r2 = Agent::start_as(&server.url(), "a", "a-2", &dir.path().join("a-2")).await;
    let t = now();
    for (i, target) in [&r1, &r2, &r1].iter().enumerate() {
        assert_eq!(
            post(target, &outcome(&format!("pump-{i}"), 0.8, t)).await,
            202
        );
    }
    for r in [&r1, &r2] {
        eventually("3 agents in both replicas' views", || async {
            (agents_seen(r).await? == 3).then_some(())
        })
        .await;
    }
    let standby: Vec<bool> = futures::future::join_all([&r1, &r2].map(|r| r.view()))
        .await
        .into_iter()
        .map(|v| v.and_then(|v| v["standby"].as_bool()).unwrap_or(false))
        .collect();
    // Once a packet was delivered, one replica holds the pin; the other must have noticed
    // (consumer info every 2 s) to have caught up at all.
    assert_eq!(
        standby.iter().filter(|s| **s).count(),
        1,
        "exactly one standby: {standby:?}"
    );
    // A packet after the standby started following still reaches it.
    assert_eq!(post(&r2, &outcome("pump-9", 0.8, now())).await, 202);
    for r in [&r1, &r2] {
        eventually("4 agents in both replicas' views", || async {
            (agents_seen(r).await? == 4).then_some(())
        })
        .await;
    }
    let (active, passive) = if standby[0] { (&r2, &r1) } else { (&r1, &r2) };
    assert_eq!(
        passive.metric("qis_agent_synthesis_out_total", &[]).await,
        0.0
    );
    assert!(active.metric("qis_agent_synthesis_out_total", &[]).await >= 1.0);

    // The active replica goes away: the standby takes the pin (within the pin TTL, 30 s) and
    // becomes active, and what arrives from then on is delivered to it by the site consumer.
    let (active, passive) = if standby[0] { (r2, r1) } else { (r1, r2) };
    active.stop().await;
    assert_eq!(post(&passive, &outcome("pump-10", 0.8, now())).await, 202);
    qis_testkit::eventually(
        "the standby takes over",
        Duration::from_secs(60),
        || async {
            let v = passive.view().await?;
            (v["standby"] == false && v["consensus"]["agents"] == 5).then_some(())
        },
    )
    .await;
    passive.stop().await;
}

/// Proves the batch intake is all or nothing: a good batch is deposited whole; a batch with
/// one bad line deposits nothing and names the line; an oversized batch is refused. And
/// `qis-agent publish` (which sends batches, and a refused batch line by line) delivers every
/// good line of a file once and names the bad one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_intake_is_all_or_nothing() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let a = Agent::start(&server.url(), "a", &dir.path().join("a")).await;
    let t = now();
    let batch = |agents: std::ops::Range<usize>| -> String {
        agents
            .map(|i| outcome(&format!("pump-{i}"), 0.8, t) + "\n")
            .collect()
    };
    let reply = a.http.post("/v1/outcomes/batch", batch(0..3), &[]).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let reply = reply.json();
    assert_eq!(reply["accepted"], 3);
    assert_eq!(reply["ids"].as_array().map(Vec::len), Some(3));
    eventually("3 agents", || async {
        (agents_seen(&a).await? == 3).then_some(())
    })
    .await;

    let bad = format!(
        "{}\n{}\n{}\n",
        outcome("pump-7", 0.8, t),
        outcome("pump-8", 0.8, t).replace("\"domain\"", "\"extra\":1,\"domain\""),
        outcome("pump-9", 0.8, t)
    );
    let reply = a.http.post("/v1/outcomes/batch", bad, &[]).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let reply = reply.json();
    assert_eq!(reply["rule"], "unknown_field");
    assert_eq!(reply["refused"][0]["line"], 2);
    assert_eq!(
        a.metric("qis_agent_packets_in_total", &[]).await,
        3.0,
        "nothing of the refused batch was taken in"
    );

    let reply = a.http.post("/v1/outcomes/batch", batch(0..1001), &[]).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(reply.rule(), "batch_too_large", "{reply:?}");

    // The CLI: 300 lines (two batches), the 150th bad.
    let file = dir.path().join("outcomes.jsonl");
    let mut lines: Vec<String> = (100..400)
        .map(|i| outcome(&format!("pump-{i}"), 0.8, t))
        .collect();
    lines[149] = lines[149].replace("\"confidence\":0.8", "\"confidence\":1.8");
    std::fs::write(&file, lines.join("\n")).expect("file");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qis-agent"))
        .args(["publish", "--agent", &format!("127.0.0.1:{}", a.port)])
        .arg(&file)
        .output()
        .expect("qis-agent publish");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout} {stderr}");
    assert!(stdout.contains("299 accepted, 1 refused"), "{stdout}");
    assert!(stderr.contains("outcomes.jsonl:150"), "{stderr}");
    eventually("3 + 299 agents", || async {
        (agents_seen(&a).await? == 302).then_some(())
    })
    .await;
    a.stop().await;
}
