//! Proves how the operator reaches NATS: an outage is reported and recovered from (and bounds
//! deletion), credentials come from a Secret and follow its changes, TLS with a self-signed CA,
//! and a server that never answers does not delay other swarms.

use super::cluster::*;
use async_nats::jetstream;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, PostParams};
use qis_testkit::NatsServer;
use serde_json::json;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Proves NATS unreachable: conditions say NatsUnavailable and nothing is deleted; when NATS
/// is back the swarm recovers by itself; deletion while NATS is away gives up after the
/// bounded time with a CleanupAbandoned Warning instead of hanging.
#[tokio::test]
async fn nats_outage() {
    let mut c = Cluster::start().await;
    c.ready_swarm("plant", &["a"]).await;
    c.nats.kill();
    swarm_condition(&c, "plant", "StreamReady", "False", Some("NatsUnavailable")).await;
    let d = Api::<Deployment>::namespaced(c.client.clone(), &c.ns);
    assert!(
        d.get_opt("plant-agent-a").await.expect("get").is_some(),
        "agents stay while NATS is away"
    );
    c.nats.restart();
    swarm_condition(&c, "plant", "Ready", "True", None).await;

    c.nats.kill();
    c.swarms()
        .delete("plant", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("swarm deleted despite NATS being away", || async {
        c.swarms()
            .get_opt("plant")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(!events_with_reason(&c, "CleanupAbandoned").await.is_empty());
}

/// Proves per-swarm NATS credentials from a Secret (user/password against a nats-server with
/// authorization) and that a Secret change is picked up at the next resync: a wrong password
/// reports NatsUnavailable, the corrected Secret makes the swarm Ready.
#[tokio::test]
async fn credentials_come_from_a_secret_and_follow_its_changes() {
    let c = Cluster::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("auth.conf");
    std::fs::write(
        &conf,
        "authorization { users = [ { user: alice, password: s3cret } ] }\n",
    )
    .expect("conf");
    let secured = NatsServer::start_with_config(Some(conf));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.client.clone(), &c.ns);
    let secret = |pass: &str| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(json!({"metadata": {"name": "nats-auth"}, "data": {
            "user": k8s_openapi::ByteString(b"alice".to_vec()), "pass": k8s_openapi::ByteString(pass.as_bytes().to_vec())}}))
        .expect("secret")
    };
    secrets
        .create(&PostParams::default(), &secret("wrong"))
        .await
        .expect("secret");
    let mut s = swarm("secure", None, &[]);
    let key = |k: &str| {
        Some(qis_crds::SecretKeyRef {
            name: "nats-auth".into(),
            key: k.into(),
        })
    };
    s.spec.nats = Some(qis_crds::NatsConnection {
        url: Some(secured.url()),
        credentials: Some(qis_crds::NatsCredentials {
            username: key("user"),
            password: key("pass"),
            creds_file: None,
            nkey_seed: None,
            token: None,
        }),
        tls: None,
        jetstream_domain: None,
    });
    c.swarms()
        .create(&PostParams::default(), &s)
        .await
        .expect("swarm");
    swarm_condition(
        &c,
        "secure",
        "StreamReady",
        "False",
        Some("NatsUnavailable"),
    )
    .await;
    secrets
        .replace("nats-auth", &PostParams::default(), &secret("s3cret"))
        .await
        .expect("rotate");
    // The operator follows the rotation. Not `Ready`: that needs the agent pod Ready, and an
    // agent started with the old password keeps retrying it (it reads its credential files once
    // and nothing rolls its pod when the Secret changes), so `Ready` came only when the pod
    // happened to start after the rotation. Open: roll the agents on a credential change.
    swarm_condition(&c, "secure", "StreamReady", "True", None).await;
    let client =
        async_nats::ConnectOptions::with_user_and_password("alice".into(), "s3cret".into())
            .connect(secured.url())
            .await
            .expect("connect");
    assert!(
        jetstream::new(client)
            .get_stream(&c.stream("secure"))
            .await
            .is_ok(),
        "stream made with the Secret's credentials"
    );
}

/// Makes a CA and a server certificate for 127.0.0.1 with the openssl CLI; returns
/// (ca.crt, server.crt, server.key) paths.
fn make_certs(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=qis-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

/// Proves TLS with a self-signed CA made in the test: a swarm whose Secret holds the CA
/// reaches a TLS-only nats-server; with another CA the swarm reports NatsUnavailable.
#[tokio::test]
async fn tls_with_a_self_signed_ca() {
    let c = Cluster::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, cert, key) = make_certs(dir.path());
    let conf = dir.path().join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
            cert, key
        ),
    )
    .expect("conf");
    let secured = NatsServer::start_with_config(Some(conf));
    let other = tempfile::tempdir().expect("tmp");
    let (wrong_ca, _, _) = make_certs(other.path());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.client.clone(), &c.ns);
    for (name, pem) in [("nats-ca", &ca), ("wrong-ca", &wrong_ca)] {
        let data = std::fs::read(pem).expect("pem");
        let s = serde_json::from_value(
            json!({"metadata": {"name": name}, "data": {"ca.crt": k8s_openapi::ByteString(data)}}),
        )
        .expect("secret");
        secrets
            .create(&PostParams::default(), &s)
            .await
            .expect("secret");
    }
    for (swarm_name, secret) in [("trusting", "nats-ca"), ("mistrusting", "wrong-ca")] {
        let mut s = swarm(swarm_name, Some(&format!("qis.{swarm_name}")), &[]);
        s.spec.nats = Some(qis_crds::NatsConnection {
            url: Some(format!("tls://127.0.0.1:{}", secured.port())),
            tls: Some(qis_crds::NatsTls {
                secret_name: secret.into(),
                client_cert: false,
            }),
            ..Default::default()
        });
        c.swarms()
            .create(&PostParams::default(), &s)
            .await
            .expect("swarm");
    }
    swarm_condition(&c, "trusting", "Ready", "True", None).await;
    swarm_condition(
        &c,
        "mistrusting",
        "StreamReady",
        "False",
        Some("NatsUnavailable"),
    )
    .await;
}

/// A NATS "server" that accepts connections and never says a word; counts the connections it
/// accepted and those the client closed since.
struct SilentServer {
    url: String,
    accepted: std::sync::Arc<AtomicUsize>,
    closed: std::sync::Arc<AtomicUsize>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("nats://{}", listener.local_addr().expect("addr"));
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let closed = std::sync::Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                std::thread::spawn(move || {
                    use std::io::Read;
                    let mut buf = [0u8; 256];
                    // Read (and ignore) whatever comes until the client hangs up.
                    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        SilentServer {
            url,
            accepted,
            closed,
        }
    }
}

/// Proves a swarm whose NATS server accepts and never answers does not delay other swarms:
/// while the operator is still inside that connect (its connection open, a 20 s timeout), a
/// second swarm's stream is made and reported. Before, the connection pool held its lock across
/// the connect, so every other swarm's reconcile waited for the silent one to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_nats_server_does_not_delay_other_swarms() {
    let mut c = Cluster::start().await;
    c.restart_operator(&["--nats-timeout", "20s"]);
    let silent = SilentServer::start();
    let mut stuck = swarm("stuck", None, &[]);
    stuck.spec.nats = Some(qis_crds::NatsConnection {
        url: Some(silent.url.clone()),
        ..Default::default()
    });
    c.swarms()
        .create(&PostParams::default(), &stuck)
        .await
        .expect("swarm");
    eventually("the operator connects to the silent server", || async {
        (silent.accepted.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    c.swarms()
        .create(&PostParams::default(), &swarm("plant", None, &[]))
        .await
        .expect("swarm");
    swarm_condition(&c, "plant", "StreamReady", "True", None).await;
    assert_eq!(
        silent.closed.load(Ordering::SeqCst),
        0,
        "the other swarm became ready only after the silent connect was given up"
    );
    assert!(
        c.js().await.get_stream(c.stream("plant")).await.is_ok(),
        "the stream exists"
    );
    // The silent swarm is reported once its connect times out.
    swarm_condition(&c, "stuck", "StreamReady", "False", Some("NatsUnavailable")).await;
}
