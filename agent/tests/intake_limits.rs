//! Each limit of the intake on its own, against the real `qis-agent` binary (standalone) and
//! a real nats-server: the header and body deadlines, the connection cap, the body limit on
//! every route, the bounded wait for the deposit queue, and the memory a batch costs.

mod intake_support;

use async_nats::jetstream;
use intake_support::*;
use qis_testkit::NatsServer;
use std::time::{Duration, Instant};

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_qis-agent"))
}

/// Proves a request head trickled one byte at a time is cut at the header timeout (not
/// before, not long after), and a connection that sends nothing is closed at the same
/// deadline; each counted by its rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_and_a_silent_connection_are_closed_at_the_header_timeout() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentProc::start(bin(), &nats.url(), dir.path(), "{headerTimeout: 1s}").await;
    let silent = tokio::spawn({
        let port = agent.port;
        async move {
            let t = Instant::now();
            // Raw on purpose: a connection that sends nothing (no HTTP client opens one).
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let _ = read_answer(&mut s).await;
            t.elapsed()
        }
    });
    let closed = slow_head(
        agent.port,
        Duration::from_millis(100),
        Duration::from_secs(10),
    )
    .await
    .expect("the agent closed the trickled head");
    assert!(
        closed.after >= Duration::from_millis(900) && closed.after < Duration::from_secs(4),
        "closed after {:?}",
        closed.after
    );
    let silent = silent.await.expect("silent");
    assert!(
        silent >= Duration::from_millis(900) && silent < Duration::from_secs(4),
        "silent connection closed after {silent:?}"
    );
    agent.wait_refused("header_timeout", 1).await;
    agent.wait_refused("idle_timeout", 1).await;
}

/// Proves a body trickled one byte at a time is answered 408 `body_timeout` at the body
/// timeout, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_answered_408_at_the_body_timeout() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentProc::start(
        bin(),
        &nats.url(),
        dir.path(),
        "{headerTimeout: 10s, bodyTimeout: 1s}",
    )
    .await;
    let closed = slow_body(
        agent.port,
        Duration::from_millis(100),
        Duration::from_secs(10),
    )
    .await
    .expect("the agent closed the trickled body");
    assert_eq!(closed.status, 408);
    assert!(
        closed.after >= Duration::from_millis(900) && closed.after < Duration::from_secs(4),
        "answered after {:?}",
        closed.after
    );
    agent.wait_refused("body_timeout", 1).await;
}

/// Proves the connection over the cap is answered 503 `connection_limit` at once (not
/// queued), counted, and that the cap frees when connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_is_refused_at_once() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentProc::start(
        bin(),
        &nats.url(),
        dir.path(),
        "{maxConnections: 4, headerTimeout: 30s}",
    )
    .await;
    // Raw on purpose: connections held open without a request (no HTTP client opens one).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tokio::net::TcpStream::connect(("127.0.0.1", agent.port))
                .await
                .expect("connect"),
        );
    }
    // The fourth slot is the metrics request's own.
    qis_testkit::eventually("3 connections held", Duration::from_secs(10), || async {
        (agent.metric("qis_agent_intake_connections", &[]).await == 4.0).then_some(())
    })
    .await;
    // The metrics connection may not have been released yet when the fourth comes: then the
    // fourth is the one refused (it holds the 503), and another is held in its place.
    let mut seen = 0u64;
    let mut answer = None;
    for _ in 0..10 {
        held.push(
            tokio::net::TcpStream::connect(("127.0.0.1", agent.port))
                .await
                .expect("connect"),
        );
        let t = Instant::now();
        // Raw on purpose: the agent answers a connection over the cap as soon as it accepts
        // it, before any request; an HTTP client drops an answer that comes before its
        // request (status 0), the bytes on the wire are what this test asserts.
        let a = raw(
            agent.port,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if a.status == 503 {
            answer = Some((t.elapsed(), a));
            break;
        }
    }
    let (took, a) = answer.expect("a connection over the cap was refused");
    seen += 1;
    assert_eq!(a.rule(), "connection_limit", "{a:?}");
    assert_eq!(a.header("retry-after"), "1", "{a:?}");
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    let mut buf = [0u8; 64];
    for s in &mut held {
        // A refused one had its 503 written before the refusal above: it is there already.
        use tokio::io::AsyncReadExt;
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
            && n > 0
        {
            seen += 1;
        }
    }
    drop(held);
    // Until the agent has seen the held connections close, a try may still be refused.
    let refused = std::sync::atomic::AtomicU64::new(seen);
    qis_testkit::eventually("the cap freed", Duration::from_secs(10), || async {
        match agent.http.get("/healthz").await.status {
            200 => Some(()),
            _ => {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            }
        }
    })
    .await;
    assert_eq!(
        agent.refused("connection_limit").await,
        refused.into_inner(),
        "every refused connection counted"
    );
}

/// Proves every route (GET routes, the fallback and both POST routes) refuses a body over its
/// limit with 413 and the route's rule in JSON, declared or chunked, counted; and that an
/// unknown route is a counted 404 `no_route`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_body_over_its_limit() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentProc::start(bin(), &nats.url(), dir.path(), "{}").await;
    let big = vec![b'x'; 600];
    let mut expected = std::collections::BTreeMap::new();
    let routes = [
        ("GET", "/healthz", "body_too_large"),
        ("GET", "/readyz", "body_too_large"),
        ("GET", "/metrics", "body_too_large"),
        ("GET", "/v1/consensus", "body_too_large"),
        ("GET", "/v1/consensus/wear", "body_too_large"),
        ("POST", "/no/such/route", "body_too_large"),
        ("POST", "/v1/outcomes", "too_large"),
    ];
    for (method, path, rule) in routes {
        let a = agent.http.request(method, path, big.clone(), &[]).await;
        assert_eq!(
            (a.status, a.rule().as_str()),
            (413, rule),
            "{method} {path}: {}",
            a.body
        );
        *expected.entry(rule).or_insert(0u64) += 1;
    }
    // A chunked body is cut when it passes the limit. Raw: the test chooses the framing (one
    // 600-byte chunk), which a client's streamed body leaves to the client.
    let chunked = format!(
        "POST /v1/outcomes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{}\r\n0\r\n\r\n",
        "x".repeat(600)
    );
    let a = raw(agent.port, chunked.as_bytes()).await;
    assert_eq!((a.status, a.rule().as_str()), (413, "too_large"), "{a:?}");
    *expected.entry("too_large").or_insert(0) += 1;
    // A batch declared over 1 MiB is refused before a byte of it is read. Raw: a declared
    // length with no body behind it is nothing an HTTP client sends.
    let head = format!(
        "POST /v1/outcomes/batch HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        (1 << 20) + 1
    );
    let a = raw(agent.port, head.as_bytes()).await;
    assert_eq!(
        (a.status, a.rule().as_str()),
        (413, "batch_too_large"),
        "{a:?}"
    );
    *expected.entry("batch_too_large").or_insert(0) += 1;
    let a = agent.http.get("/no/such/route").await;
    assert_eq!((a.status, a.rule().as_str()), (404, "no_route"), "{a:?}");
    *expected.entry("no_route").or_insert(0) += 1;
    for (rule, n) in expected {
        assert_eq!(agent.refused(rule).await, n, "refusals by {rule}");
    }
    let ok = packet("predictive-maintenance", "bearing-wear", 1);
    assert_eq!(agent.http.post("/v1/outcomes", ok, &[]).await.status, 202);
}

/// Proves a full deposit queue (NATS hung: SIGSTOPped with its connection open, so each
/// deposit round waits for acknowledgements that never come) is answered 503 `queue_full` with
/// `Retry-After` within the configured wait, never an unbounded wait; that a refused batch
/// deposits nothing; and that every accepted packet arrives once NATS is back. (A NATS that is
/// merely away does not fill the queue: the pump writes to the outbox at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_answered_503_within_the_wait() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentProc::start(bin(), &nats.url(), dir.path(), "{queueWait: 500ms}").await;
    nats.pause();
    let posts: Vec<_> = (0..12usize)
        .map(|b| {
            // An accepted batch is answered once its deposit round gave up on the hung NATS
            // and wrote the outbox, one batch after another: 47 s for the last of 9 measured.
            let http = agent.http.with_timeout(Duration::from_secs(120));
            tokio::spawn(async move {
                let body: Vec<u8> = (0..1000)
                    .map(|i| packet("attack", "batch", b * 1000 + i))
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes();
                let t = Instant::now();
                let answer = http.post("/v1/outcomes/batch", body, &[]).await;
                (t.elapsed(), answer)
            })
        })
        .collect();
    let mut accepted = 0u64;
    let mut refusals = Vec::new();
    for p in posts {
        let (took, answer) = p.await.expect("post");
        match answer.status {
            202 => accepted += 1000,
            503 => refusals.push((took, answer)),
            _ => panic!("after {took:?}: {answer:?}"),
        }
    }
    let (took, answer) = refusals
        .first()
        .expect("the queue filled within 12 batches");
    assert_eq!(answer.rule(), "queue_full", "{answer:?}");
    assert_eq!(answer.header("retry-after"), "1", "{answer:?}");
    assert!(
        *took >= Duration::from_millis(450) && *took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    assert_eq!(agent.refused("queue_full").await, refusals.len() as u64);
    nats.resume();
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    qis_testkit::eventually(
        "every accepted packet in the stream",
        Duration::from_secs(60),
        || async { (stored(&js, "qis.iot.attack.batch").await >= accepted).then_some(()) },
    )
    .await;
    assert_eq!(
        stored(&js, "qis.iot.attack.batch").await,
        accepted,
        "the refused batches deposited nothing"
    );
}

/// Proves batch bodies cost the budget, not their number: 48 concurrent 1 MiB batches (the
/// shape that made the old parser collect half a million lines, and batches that are
/// accepted) keep the agent's peak RSS under the 64 MiB pod limit. A batch refused before its
/// body was read (`busy`) may see its connection reset instead of its 503 (status 0 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_stay_within_the_memory_limit() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentProc::start(bin(), &nats.url(), dir.path(), "{}").await;
    let (idle, _) = agent.memory_kib();
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let http = agent.http.clone();
            tokio::spawn(async move {
                let body = if i % 2 == 0 {
                    many_lines_batch()
                } else {
                    padded_batch(i)
                };
                let answer = http.post("/v1/outcomes/batch", body, &[]).await;
                (answer.status, answer.rule())
            })
        })
        .collect();
    let mut answers = std::collections::BTreeMap::new();
    for t in tasks {
        *answers.entry(t.await.expect("batch")).or_insert(0) += 1;
    }
    let (peak, _) = agent.memory_kib();
    eprintln!("idle {idle} KiB, peak {peak} KiB, answers {answers:?}");
    assert!(
        answers.keys().all(|(c, r)| *c == 202
            || (*c == 413 && r == "batch_too_large")
            || (*c == 503 && (r == "busy" || r == "queue_full"))
            || *c == 0),
        "{answers:?}"
    );
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB (idle {idle} KiB)");
}

/// Keeps the stream helper honest: a packet posted is counted on its subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_counts_a_subject() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentProc::start(bin(), &nats.url(), dir.path(), "{}").await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let body = packet("good-device", "steady", 7);
    assert_eq!(agent.http.post("/v1/outcomes", body, &[]).await.status, 202);
    qis_testkit::eventually("one packet stored", Duration::from_secs(10), || async {
        (stored(&js, GOOD_SUBJECT).await == 1).then_some(())
    })
    .await;
}

/// Proves a client that sends requests and never reads the answers is cut off once an
/// answer cannot be written for the body timeout (it would hold its connection for ever),
/// counted as `write_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_at_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentProc::start(
        bin(),
        &nats.url(),
        dir.path(),
        "{headerTimeout: 30s, bodyTimeout: 1s}",
    )
    .await;
    // Raw on purpose: 20,000 pipelined requests whose answers are never read (no HTTP client
    // sends a request before reading the last answer).
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", agent.port))
        .await
        .expect("connect");
    // 20,000 pipelined GET /metrics: far more answers than the socket buffers hold.
    let pipelined = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20_000);
    let writer = tokio::spawn(async move {
        let _ = s.write_all(&pipelined).await;
        s
    });
    qis_testkit::eventually(
        "the stalled connection cut",
        Duration::from_secs(30),
        || async { (agent.refused("write_timeout").await == 1).then_some(()) },
    )
    .await;
    drop(writer);
}
