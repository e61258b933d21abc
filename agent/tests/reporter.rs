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
const WAIT: Duration = Duration::from_secs(20);

async fn client() -> Client {
    let cp = ControlPlane::shared();
    cp.namespace(NS, &[]);
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
    connected: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(client: &Client, identity: &str, views: Views) -> Running {
    let connected = Arc::new(AtomicBool::new(true));
    let reporter = Reporter {
        client: client.clone(),
        namespace: NS.into(),
        swarm: "campus".into(),
        identity: identity.into(),
        site: identity.into(),
        interval: Duration::from_millis(300),
        connected: connected.clone(),
    };
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(reporter.run(views, Arc::new(Metrics::default()), stop_rx));
    Running {
        connected,
        stop,
        task,
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
