//! The reporter's lease on the real API server: an agent that lost NATS or serves no subject
//! gives the lease up, so an agent that can report takes over; one that stops releases it.

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use qis_agent::metrics::Metrics;
use qis_agent::report::Reporter;
use qis_agent::subject_worker::{View, Views};
use qis_testkit::controlplane::ControlPlane;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

const NS: &str = "reporters";
/// The namespace of the Events test.
const EVENTS_NS: &str = "reporter-events";
const WAIT: Duration = Duration::from_secs(20);

async fn client() -> Client {
    client_in(NS).await
}

/// An admin client, `namespace` made first (each test its own).
async fn client_in(namespace: &str) -> Client {
    let cp = ControlPlane::shared();
    cp.namespace(namespace, &[]);
    let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

/// Views with one bound subject.
fn serving() -> Views {
    let views = Views::default();
    views.write().expect("views").insert(
        "bearing-wear".into(),
        View {
            bound: true,
            ..Default::default()
        },
    );
    views
}

struct Running {
    metrics: Arc<Metrics>,
    connected: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(client: &Client, identity: &str, views: Views) -> Running {
    start_for(client, NS, "campus", identity, views)
}

fn start_for(client: &Client, ns: &str, swarm: &str, identity: &str, views: Views) -> Running {
    let connected = Arc::new(AtomicBool::new(true));
    let reporter = Reporter {
        client: client.clone(),
        namespace: ns.into(),
        swarm: swarm.into(),
        identity: identity.into(),
        site: identity.into(),
        interval: Duration::from_millis(300),
        connected: connected.clone(),
        event_gap: Duration::from_secs(2),
    };
    let metrics = Arc::new(Metrics::default());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(reporter.run(views, metrics.clone(), stop_rx));
    Running {
        connected,
        stop,
        task,
        metrics,
    }
}

async fn holder(client: &Client) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), NS);
    api.get_opt("qis-reporter-campus")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

async fn held_by(client: &Client, want: Option<&str>) {
    qis_testkit::eventually(
        &format!("the reporter lease held by {want:?}"),
        WAIT,
        || async { (holder(client).await.as_deref() == want).then_some(()) },
    )
    .await;
}

/// Proves a reporter that lost NATS gives the lease up and another agent takes over while the
/// first is still running; one that lost it takes it back when fit again only if free; a
/// reporter that stops releases the lease. Before, a disconnected reporter kept renewing and
/// no other agent could report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reporter_without_nats_or_subjects_gives_the_lease_up() {
    let client = client().await;
    let a = start(&client, "agent-a", serving());
    held_by(&client, Some("agent-a")).await;

    // An agent with nothing bound never takes the lease, even when it is free.
    let idle = start(&client, "agent-idle", Views::default());
    a.connected.store(false, Ordering::Relaxed);
    held_by(&client, None).await;

    let b = start(&client, "agent-b", serving());
    held_by(&client, Some("agent-b")).await;
    a.connected.store(true, Ordering::Relaxed);

    // Stopping the holder releases the lease; the reconnected agent takes it.
    b.stop.send(true).expect("stop");
    b.task.await.expect("reporter");
    held_by(&client, Some("agent-a")).await;
    assert_ne!(holder(&client).await.as_deref(), Some("agent-idle"));
    for r in [a, idle] {
        r.stop.send(true).expect("stop");
        r.task.await.expect("reporter");
    }
    held_by(&client, None).await;
}

/// A bound view of `subject` whose consensus alerts or not.
fn consensus_view(alert: bool) -> View {
    View {
        bound: true,
        snapshot: Some(qis_agent::synthesis::Snapshot {
            problem: "iot.bearing-wear".into(),
            strength: if alert { 0.9 } else { 0.2 },
            weighted_confidence: 0.84,
            agents: 3,
            agreeing_agents: if alert { 3 } else { 1 },
            newest: 1_764_150_000.0,
            packets: 3,
            synthesis_pairs: 3,
            dispersion: 0.1,
            effective_n: 3.0,
            alert,
            recommendation: if alert {
                "ALERT: inspect the bearings".into()
            } else {
                "monitor".into()
            },
        }),
        ..Default::default()
    }
}

/// The (reason, note) of the Events recorded on subject `name`, oldest first.
async fn subject_events(client: &Client, name: &str) -> Vec<(String, String)> {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = Api::namespaced(client.clone(), EVENTS_NS);
    let mut out: Vec<_> = api
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            let at = e.event_time.map(|t| t.0.to_string()).unwrap_or_default();
            (at, e.reason.unwrap_or_default(), e.note.unwrap_or_default())
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, r, n)| (r, n)).collect()
}

/// Proves the reporter announces an alert flip on the subject with the recommendation in the
/// note (ConsensusAlert when it starts, ConsensusCleared when it ends), exports the consensus
/// gauges only while it holds the lease, and that a reporter taking over a standing alert
/// announces nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_flips_become_events_and_a_takeover_repeats_none() {
    let client = client_in(EVENTS_NS).await;
    let name = "bearing-events";
    let subjects: Api<qis_crds::QisSubject> = Api::namespaced(client.clone(), EVENTS_NS);
    let subject: qis_crds::QisSubject = serde_json::from_value(serde_json::json!({
        "apiVersion": "qis.dev/v1alpha1", "kind": "QisSubject",
        "metadata": {"name": name},
        "spec": {"swarmRef": {"name": "events"}, "domain": "iot", "problemClass": "bearing-wear"}
    }))
    .expect("subject");
    subjects
        .create(&Default::default(), &subject)
        .await
        .expect("create subject");
    let views = Views::default();
    views
        .write()
        .expect("views")
        .insert(name.into(), consensus_view(true));
    let mut reporter = start_for(&client, EVENTS_NS, "events", "agent-a", views.clone());
    qis_testkit::eventually("a ConsensusAlert event", WAIT, || async {
        let evs = subject_events(&client, name).await;
        (evs.len() == 1 && evs[0].0 == "ConsensusAlert").then_some(evs)
    })
    .await;
    let evs = subject_events(&client, name).await;
    assert!(evs[0].1.contains("ALERT: inspect the bearings"), "{evs:?}");
    // What the agent's /metrics does: the gauges brought up to the views, then rendered.
    reporter
        .metrics
        .consensus
        .sync(&views.read().expect("views"));
    let exported = reporter.metrics.render();
    // kubectl shows it: the wide columns, and describe the recommendation.
    let cp = ControlPlane::shared();
    let wide = cp.kubectl(&["get", "qsub", "-n", EVENTS_NS, name, "-o", "wide"]);
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for column in ["AGREEING", "DISPERSION", "SITE", "UPDATED"] {
        assert!(header.contains(&column), "{wide}");
    }
    let described = cp.kubectl(&["describe", "qsub", "-n", EVENTS_NS, name]);
    assert!(
        described.contains("ALERT: inspect the bearings"),
        "{described}"
    );
    assert!(described.contains("ConsensusAlert"), "{described}");
    assert!(
        exported.contains(&format!(
            "qis_agent_consensus_alert{{subject=\"{name}\"}} 1"
        )),
        "{exported}"
    );

    // Another reporter takes over the standing alert: no second ConsensusAlert; the first one
    // stops exporting.
    reporter.stop.send(true).expect("stop");
    (&mut reporter.task).await.expect("reporter");
    reporter
        .metrics
        .consensus
        .sync(&views.read().expect("views"));
    assert!(!reporter.metrics.render().contains("subject="));
    let b = start_for(&client, EVENTS_NS, "events", "agent-b", views.clone());
    qis_testkit::eventually("agent-b exporting the consensus", WAIT, || async {
        b.metrics.consensus.sync(&views.read().expect("views"));
        b.metrics
            .render()
            .contains("consensus_alert{")
            .then_some(())
    })
    .await;
    // The alert clears: one ConsensusCleared, after which nothing more.
    views
        .write()
        .expect("views")
        .insert(name.into(), consensus_view(false));
    qis_testkit::eventually("a ConsensusCleared event", WAIT, || async {
        let evs = subject_events(&client, name).await;
        (evs.len() == 2).then_some(evs)
    })
    .await;
    let reasons: Vec<String> = subject_events(&client, name)
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(reasons, ["ConsensusAlert", "ConsensusCleared"]);
    b.stop.send(true).expect("stop");
    b.task.await.expect("reporter");
}
