//! The apply layer against a real nats-server 2.15.1 (one per test, on a free loopback port).

use async_nats::HeaderMap;
use async_nats::jetstream::{self, Context};
use futures::StreamExt;
use qis_crds::constants::{
    DEFAULT_MAX_MSG_SIZE, HEADER_HOPS, HEADER_KIND, HEADER_MSG_ID, MAX_BODY_BYTES,
};
use qis_crds::{QisSubjectSpec, QisSwarmSpec, StorageType, SwarmRef};
use qis_operator::error::{Category, Error};
use qis_operator::nats_connections::{Pool, Settings};
use qis_operator::{consumer_config, jetstream as js_apply, stream_config};
use qis_testkit::NatsServer;
use std::time::Duration;

async fn context(server: &NatsServer) -> Context {
    let client = async_nats::connect(server.url()).await.expect("connect");
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    js
}

fn swarm(prefix: Option<&str>) -> QisSwarmSpec {
    QisSwarmSpec {
        subject_prefix: prefix.map(Into::into),
        ..Default::default()
    }
}

/// Proves create → unchanged → drift reverted (naming the fields) → delete → already gone.
#[tokio::test]
async fn stream_lifecycle_and_drift_revert() {
    let server = NatsServer::start();
    let js = context(&server).await;
    let want = stream_config::desired("factory", "plant", &swarm(Some("qis.iot")));
    let first = js_apply::ensure_stream(&js, &want).await.expect("created");
    assert!(first.created);
    let again = js_apply::ensure_stream(&js, &want)
        .await
        .expect("unchanged");
    assert_eq!((again.created, again.reverted.len()), (false, 0));

    // Someone edits the stream with another client.
    let mut edited = want.clone();
    edited.max_age = Duration::from_secs(60);
    edited.duplicate_window = Duration::from_secs(30);
    edited.max_bytes = 1024 * 1024;
    js.update_stream(&edited)
        .await
        .expect("edit behind our back");
    let fixed = js_apply::ensure_stream(&js, &want).await.expect("reverted");
    assert_eq!(fixed.reverted, ["maxAge", "maxBytes", "duplicateWindow"]);
    let live = js
        .get_stream(&want.name)
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    assert_eq!(live.max_age, Duration::from_secs(86400));
    assert!(stream_config::drift(&live, &want).is_empty());

    assert!(
        js_apply::delete_stream(&js, &want.name)
            .await
            .expect("deleted")
    );
    assert!(
        !js_apply::delete_stream(&js, &want.name)
            .await
            .expect("already gone")
    );
    assert!(
        js_apply::stream_state(&js, &want.name)
            .await
            .expect("info")
            .is_none()
    );
}

/// Proves a change the server cannot make (storage) is NotSupported and destroys nothing.
#[tokio::test]
async fn storage_change_is_not_supported() {
    let server = NatsServer::start();
    let js = context(&server).await;
    let file = stream_config::desired("ns", "s", &swarm(None));
    js_apply::ensure_stream(&js, &file).await.expect("created");
    js.publish("qis.ns.s.hvac.x", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let mut spec = swarm(None);
    spec.stream.storage = StorageType::Memory;
    let memory = stream_config::desired("ns", "s", &spec);
    let err = js_apply::ensure_stream(&js, &memory)
        .await
        .expect_err("refused");
    assert_eq!(err.category(), Category::NotSupported, "{err}");
    assert!(err.to_string().contains("storage"), "{err}");
    let state = js_apply::stream_state(&js, &file.name)
        .await
        .expect("info")
        .expect("still there")
        .state;
    assert_eq!(state.messages, 1, "nothing destroyed");
}

/// Proves a change the server refuses (replicas > 1 on a single server) is NotSupported with
/// the server's reason.
#[tokio::test]
async fn server_refusal_is_not_supported() {
    let server = NatsServer::start();
    let js = context(&server).await;
    js_apply::ensure_stream(&js, &stream_config::desired("ns", "s", &swarm(None)))
        .await
        .expect("created");
    let mut spec = swarm(None);
    spec.stream.replicas = 3;
    let err = js_apply::ensure_stream(&js, &stream_config::desired("ns", "s", &spec))
        .await
        .expect_err("refused");
    assert_eq!(err.category(), Category::NotSupported, "{err}");
}

/// Proves overlapping subject spaces: the later swarm gets a conflict naming the earlier, which
/// keeps working.
#[tokio::test]
async fn overlapping_swarms_conflict() {
    let server = NatsServer::start();
    let js = context(&server).await;
    let earlier = stream_config::desired("ns", "a", &swarm(Some("qis.iot")));
    js_apply::ensure_stream(&js, &earlier)
        .await
        .expect("created");
    for later_prefix in ["qis.iot.hvac", "qis.iot", "qis"] {
        let later = stream_config::desired("ns", "b", &swarm(Some(later_prefix)));
        let err = js_apply::ensure_stream(&js, &later)
            .await
            .expect_err("conflict");
        assert_eq!(err.category(), Category::Conflict, "{err}");
        assert!(
            err.to_string().contains("qis_ns_a") && err.to_string().contains("ns/a"),
            "{err}"
        );
    }
    let disjoint = stream_config::desired("ns", "c", &swarm(Some("qis.iot2")));
    assert!(
        js_apply::ensure_stream(&js, &disjoint)
            .await
            .expect("no overlap")
            .created
    );
    assert!(
        js_apply::ensure_stream(&js, &earlier)
            .await
            .expect("earlier still fine")
            .reverted
            .is_empty()
    );
}

/// Proves NATS down → NatsUnavailable (transient, nothing lost), and recovery when it is back.
#[tokio::test]
async fn nats_down_then_up() {
    let mut server = NatsServer::start();
    let pool = Pool::new(Duration::from_secs(1), std::env::temp_dir());
    let settings = Settings {
        url: server.url(),
        ..Default::default()
    };
    let js = pool.jetstream("ns/s", &settings).await.expect("connect");
    let want = stream_config::desired("ns", "s", &swarm(None));
    js_apply::ensure_stream(&js, &want).await.expect("created");
    server.kill();
    let err = js_apply::ensure_stream(&js, &want).await.expect_err("down");
    assert_eq!(err.category(), Category::Transient, "{err}");
    assert!(matches!(err, Error::Nats { .. }));
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let back = loop {
        match js_apply::ensure_stream(&js, &want).await {
            Ok(outcome) => break outcome,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("did not recover: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(!back.created, "the file store kept the stream");
}

/// Proves connections are shared by equal settings, replaced when settings change (a rotated
/// Secret) and closed when their last user goes.
#[tokio::test]
async fn pool_reuses_and_releases() {
    let server = NatsServer::start();
    let pool = Pool::new(Duration::from_secs(2), std::env::temp_dir());
    let settings = Settings {
        url: server.url(),
        ..Default::default()
    };
    pool.jetstream("ns/a", &settings).await.expect("a");
    pool.jetstream("ns/b", &settings).await.expect("b");
    assert_eq!(pool.open_connections().await, 1);
    let rotated = Settings {
        url: format!("{}, {}", server.url(), server.url()),
        ..Default::default()
    };
    pool.jetstream("ns/a", &rotated).await.expect("a rotated");
    assert_eq!(pool.open_connections().await, 2);
    pool.jetstream("ns/b", &rotated).await.expect("b rotated");
    assert_eq!(
        pool.open_connections().await,
        1,
        "old settings unused: closed"
    );
    pool.release("ns/a").await;
    pool.release("ns/b").await;
    assert_eq!(pool.open_connections().await, 0);
    let refused = Pool::new(Duration::from_millis(500), std::env::temp_dir());
    let nowhere = Settings {
        url: format!("nats://127.0.0.1:{}", qis_testkit::free_port()),
        ..Default::default()
    };
    assert_eq!(
        refused
            .jetstream("x", &nowhere)
            .await
            .expect_err("no server")
            .category(),
        Category::Transient
    );
}

fn subject(problem_class: &str) -> QisSubjectSpec {
    QisSubjectSpec {
        swarm_ref: SwarmRef { name: "s".into() },
        domain: "hvac".into(),
        problem_class: Some(problem_class.into()),
        ..Default::default()
    }
}

/// Proves consumers: one per site, drift reverted, immutable change NotSupported, orphans
/// listed and deleted.
#[tokio::test]
async fn consumer_lifecycle() {
    let server = NatsServer::start();
    let js = context(&server).await;
    let stream = stream_config::desired("ns", "s", &swarm(None));
    js_apply::ensure_stream(&js, &stream).await.expect("stream");
    let spec = subject("energy-anomaly");
    let addr = consumer_config::address("qis.ns.s", &spec);
    for site in ["a", "b", "c"] {
        let c = consumer_config::desired("ns", "hvac", site, &addr, &spec);
        assert!(
            js_apply::ensure_consumer(&js, &stream.name, &c)
                .await
                .expect("created")
                .created
        );
    }
    let a = consumer_config::desired("ns", "hvac", "a", &addr, &spec);
    let mut edited = a.clone();
    edited.max_ack_pending = 3;
    js.update_consumer_on_stream(edited, &stream.name)
        .await
        .expect("edit behind our back");
    let fixed = js_apply::ensure_consumer(&js, &stream.name, &a)
        .await
        .expect("reverted");
    assert_eq!(fixed.reverted, ["maxAckPending"]);
    assert!(
        js_apply::ensure_consumer(&js, &stream.name, &a)
            .await
            .expect("steady")
            .reverted
            .is_empty()
    );

    let mut new_policy = spec.clone();
    new_policy.consumer.deliver_policy = qis_crds::DeliverPolicy::New;
    let changed = consumer_config::desired("ns", "hvac", "a", &addr, &new_policy);
    let err = js_apply::ensure_consumer(&js, &stream.name, &changed)
        .await
        .expect_err("immutable");
    assert_eq!(err.category(), Category::NotSupported, "{err}");

    let all = js_apply::list_consumers(&js, &stream.name)
        .await
        .expect("list");
    assert_eq!(all.len(), 3);
    assert!(
        js_apply::delete_consumer(&js, &stream.name, "hvac_c")
            .await
            .expect("deleted")
    );
    assert!(
        !js_apply::delete_consumer(&js, &stream.name, "hvac_c")
            .await
            .expect("gone")
    );
    assert_eq!(
        js_apply::list_consumers(&js, &stream.name)
            .await
            .expect("list")
            .len(),
        2
    );
    let orphan_stream = js_apply::ensure_consumer(&js, "qis_ns_missing", &a)
        .await
        .expect_err("no stream");
    assert_eq!(orphan_stream.category(), Category::Transient);
}

fn headers(id: &str, kind: &str, hops: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HEADER_MSG_ID, id);
    h.insert(HEADER_KIND, kind);
    h.insert(HEADER_HOPS, hops);
    h
}

/// Measures how nats-server 2.15 counts `max_msg_size`: headers and body together. The default
/// (`DEFAULT_MAX_MSG_SIZE`) admits a 512-byte body with the largest header block agents send,
/// refuses a 513-byte one, and one byte less refuses the 512-byte packet: it is the smallest.
#[tokio::test]
async fn default_max_msg_size_is_exactly_a_full_packet() {
    let server = NatsServer::start();
    let js = context(&server).await;
    let stream = stream_config::desired("ns", "s", &swarm(None));
    assert_eq!(
        usize::try_from(stream.max_message_size).expect("positive"),
        DEFAULT_MAX_MSG_SIZE
    );
    js_apply::ensure_stream(&js, &stream).await.expect("stream");
    let id = "0123456789abcdef0123456789abcdef";
    let publish = |body: usize, id: &'static str| {
        let js = js.clone();
        async move {
            let ack = js
                .publish_with_headers(
                    "qis.ns.s.hvac.x",
                    headers(id, "synthesis", "255"),
                    vec![b'x'; body].into(),
                )
                .await?;
            ack.await.map(|_| ())
        }
    };
    publish(MAX_BODY_BYTES, id)
        .await
        .expect("a full packet fits");
    let too_big = publish(MAX_BODY_BYTES + 1, "1123456789abcdef0123456789abcdef").await;
    assert!(
        too_big.is_err(),
        "a 513-byte body must be refused by the server"
    );

    let mut tight = stream.clone();
    tight.name = "tight".into();
    tight.subjects = vec!["tight.>".into()];
    tight.max_message_size -= 1;
    js.create_stream(tight).await.expect("tight stream");
    let ack = js
        .publish_with_headers(
            "tight.x",
            headers(id, "synthesis", "255"),
            vec![b'x'; MAX_BODY_BYTES].into(),
        )
        .await
        .expect("sent");
    assert!(
        ack.await.is_err(),
        "one byte less refuses a full packet: the server counts headers"
    );
}

/// Proves a full stream reports `ConsumerLimitReached` (a retryable conflict naming the swarm
/// field to raise), keeps the consumers it has, and takes the next consumer once the swarm's
/// `maxConsumers` is raised (the server changes it in place).
#[tokio::test]
async fn consumer_limit_is_reported_and_raisable() {
    let server = NatsServer::start();
    let js = context(&server).await;
    let mut spec = swarm(None);
    spec.stream.max_consumers = 2;
    let stream = stream_config::desired("ns", "s", &spec);
    js_apply::ensure_stream(&js, &stream).await.expect("stream");
    let sub = subject("energy-anomaly");
    let addr = consumer_config::address("qis.ns.s", &sub);
    let site = |s: &str| consumer_config::desired("ns", "hvac", s, &addr, &sub);
    for s in ["a", "b"] {
        js_apply::ensure_consumer(&js, &stream.name, &site(s))
            .await
            .expect("within the limit");
    }
    let err = js_apply::ensure_consumer(&js, &stream.name, &site("c"))
        .await
        .expect_err("over the limit");
    assert_eq!(err.category(), Category::Conflict, "{err}");
    assert_eq!(err.reason(), "ConsumerLimitReached");
    assert!(
        err.to_string().contains("spec.stream.maxConsumers"),
        "{err}"
    );
    assert_eq!(
        js_apply::list_consumers(&js, &stream.name)
            .await
            .expect("list")
            .len(),
        2
    );

    spec.stream.max_consumers = 3;
    let raised = stream_config::desired("ns", "s", &spec);
    let outcome = js_apply::ensure_stream(&js, &raised).await.expect("raised");
    assert_eq!(outcome.reverted, ["maxConsumers"]);
    js_apply::ensure_consumer(&js, &stream.name, &site("c"))
        .await
        .expect("room now");
}

/// Proves the default stream admits more consumers than nats-server 2.15's implicit per-stream
/// limit of 1000 (which a stream without an explicit limit gets): 1,001 site consumers.
#[tokio::test]
async fn default_stream_admits_more_than_the_servers_implicit_limit() {
    let server = NatsServer::start();
    let js = context(&server).await;
    let stream = stream_config::desired("ns", "s", &swarm(None));
    js_apply::ensure_stream(&js, &stream).await.expect("stream");
    let sub = subject("energy-anomaly");
    let addr = consumer_config::address("qis.ns.s", &sub);
    let names: Vec<String> = (0..1001).map(|i| format!("site-{i}")).collect();
    // 32 at a time, as the operator's reconciles go (`--concurrency`): 1,001 creates at once
    // on one connection can outlast the 2 s request timeout on a loaded 2-core machine.
    let results: Vec<_> = futures::stream::iter(names.iter().map(|s| {
        let js = js.clone();
        let c = consumer_config::desired("ns", "hvac", s, &addr, &sub);
        let stream = stream.name.clone();
        async move { js_apply::ensure_consumer(&js, &stream, &c).await }
    }))
    .buffer_unordered(32)
    .collect()
    .await;
    let refused: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    assert!(refused.is_empty(), "refused: {:?}", refused.first());
    assert_eq!(
        js_apply::list_consumers(&js, &stream.name)
            .await
            .expect("list")
            .len(),
        1001
    );
}
