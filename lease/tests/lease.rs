//! The lease on the real API server: expiry judged by our own clock from observed renewals (a
//! holder whose clock is wrong neither keeps a lease it stopped renewing nor loses one it
//! renews), attempts that fail within their deadline when the API server hangs, and a release
//! that lets another take over at once.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use qis_lease::{Attempt, LeaseError, LeaseLock};
use qis_testkit::controlplane::ControlPlane;
use std::time::Duration;
use tokio::time::Instant;

const NS: &str = "leases";
const LEASE: Duration = Duration::from_secs(2);

async fn client() -> Client {
    static NAMESPACE: std::sync::Once = std::sync::Once::new();
    let cp = ControlPlane::shared();
    NAMESPACE.call_once(|| cp.namespace(NS, &[]));
    let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn lock(name: &str, identity: &str) -> LeaseLock {
    LeaseLock::new(NS, name, identity, LEASE, Duration::from_millis(200))
}

/// Writes the lease as `holder` would, with `renew_time` from that holder's clock.
async fn renew_as(client: &Client, name: &str, holder: &str, renew_time: Timestamp) {
    let api: Api<Lease> = Api::namespaced(client.clone(), NS);
    let spec = LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(2),
        renew_time: Some(MicroTime(renew_time)),
        acquire_time: Some(MicroTime(renew_time)),
        lease_transitions: Some(1),
        ..Default::default()
    };
    match api.get_opt(name).await.expect("get") {
        Some(mut lease) => {
            lease.spec = Some(spec);
            api.replace(name, &PostParams::default(), &lease)
                .await
                .expect("replace");
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease)
                .await
                .expect("create");
        }
    }
}

async fn holder(client: &Client, name: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), NS);
    api.get(name)
        .await
        .expect("get")
        .spec
        .and_then(|s| s.holder_identity)
}

/// Proves a lease last renewed "an hour from now" (the holder's clock is ahead, then it died)
/// is taken once it has gone unrenewed for its duration by our clock. Comparing wall clocks, it
/// was never taken.
#[tokio::test]
async fn a_lease_renewed_into_the_future_expires_by_our_clock() {
    let client = client().await;
    let future = Timestamp::now() + SignedDuration::from_hours(1);
    renew_as(&client, "ahead", "dead-holder", future).await;
    let me = lock("ahead", "me");
    assert_eq!(
        me.try_once(&client).await.expect("attempt"),
        Attempt::HeldByOther("dead-holder".into()),
        "a lease seen for the first time is not expired yet"
    );
    let deadline = Instant::now() + LEASE * 5;
    loop {
        if me.try_once(&client).await.expect("attempt") == Attempt::Held {
            break;
        }
        assert!(Instant::now() < deadline, "never took the abandoned lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(holder(&client, "ahead").await.as_deref(), Some("me"));
}

/// Proves a holder whose clock is an hour behind keeps its lease while it renews: every renewal
/// changes the record we observe. Comparing wall clocks, its lease looked expired at once and
/// was taken from a live holder.
#[tokio::test]
async fn a_holder_whose_clock_is_behind_keeps_its_lease_while_it_renews() {
    let client = client().await;
    let past = || Timestamp::now() - SignedDuration::from_hours(1);
    renew_as(&client, "behind", "live-holder", past()).await;
    let me = lock("behind", "me");
    let until = Instant::now() + LEASE * 3;
    let mut attempts = 0;
    while Instant::now() < until {
        renew_as(&client, "behind", "live-holder", past()).await;
        assert_eq!(
            me.try_once(&client).await.expect("attempt"),
            Attempt::HeldByOther("live-holder".into()),
            "took a lease its holder renews (attempt {attempts})"
        );
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        attempts >= 5,
        "only {attempts} attempts in three lease durations"
    );
    // Once the holder stops renewing, the lease is ours within a few lease durations.
    let deadline = Instant::now() + LEASE * 5;
    while me.try_once(&client).await.expect("attempt") != Attempt::Held {
        assert!(
            Instant::now() < deadline,
            "never took the lease once renewals stopped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Proves an attempt against an API server that accepts connections and never answers fails
/// within the lock's deadline, well inside the lease. Without a deadline it waited for the
/// client's read timeout (295 s), past the lease it was meant to renew.
#[tokio::test]
async fn an_api_server_that_hangs_fails_the_attempt_within_its_deadline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let held = std::thread::spawn(move || {
        // Accept and keep the connections open, saying nothing.
        let mut open = Vec::new();
        for conn in listener.incoming().take(2) {
            open.push(conn);
        }
        open
    });
    let config = kube::Config::new(url.parse().expect("url"));
    let silent = Client::try_from(config).expect("client");
    let me = lock("hung", "me");
    let started = Instant::now();
    let outcome = tokio::time::timeout(LEASE, me.try_once(&silent)).await;
    let took = started.elapsed();
    match outcome {
        Ok(Err(LeaseError::Deadline(d))) => assert_eq!(d, me.deadline()),
        Ok(other) => panic!("expected the deadline, got {other:?}"),
        Err(_) => panic!("the attempt was still waiting after a whole lease ({LEASE:?})"),
    }
    assert!(took < LEASE, "took {took:?}");
    drop(held);
}

/// Proves a released lease is taken by the next contender at once, not a lease duration later.
#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let client = client().await;
    let a = lock("handover", "a");
    let b = lock("handover", "b");
    assert_eq!(a.try_once(&client).await.expect("a"), Attempt::Held);
    assert_eq!(
        b.try_once(&client).await.expect("b"),
        Attempt::HeldByOther("a".into())
    );
    a.release(&client).await.expect("release");
    assert_eq!(holder(&client, "handover").await, None);
    assert_eq!(b.try_once(&client).await.expect("b"), Attempt::Held);
    // Releasing a lease one does not hold changes nothing.
    a.release(&client).await.expect("release");
    assert_eq!(holder(&client, "handover").await.as_deref(), Some("b"));
}
