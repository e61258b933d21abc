//! The agent permissions `qis-operator nats-permissions` renders, enforced by a real
//! nats-server 2.15.1: two agents (processes, two sites) deposit, rebuild, pull, ack and reach
//! consensus with nothing but those permissions, and the same user is refused everything
//! outside its swarm (another prefix, stream administration, other clients' inboxes).

use async_nats::jetstream;
use qis_crds::{QisSubjectSpec, QisSwarmSpec, SwarmRef};
use qis_operator::{consumer_config, jetstream as js_apply, nats_permissions, stream_config};
use qis_testkit::http::Http;
use qis_testkit::{KillOnDrop, NatsServer, eventually};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// How nats-server 2.15 logs a refused publish or subscription (`Publish Violation - Subject
/// "..."`, `Subscription Violation - Subject "..."`).
const VIOLATION: &str = "Violation - Subject";

fn start_agent(dir: &Path, nats: &str, site: &str, port: u16) -> KillOnDrop {
    let config = dir.join(format!("{site}.yaml"));
    std::fs::write(
        &config,
        format!(
            "agentId: agent-{site}\nsite: {site}\n\
             nats: {{url: '{nats}', user: agents, passwordFile: '{}'}}\n\
             subjectPrefix: qis.campus\nstream: qis_factory_campus\nmanageJetstream: false\n\
             subjects:\n- {{name: wear, domain: predictive-maintenance, problemClass: bearing-wear}}\n\
             listen: '127.0.0.1:{port}'\ndataDir: '{}'\n",
            dir.join("agents.password").display(),
            dir.join(site).display()
        ),
    )
    .expect("agent config");
    KillOnDrop(
        Command::new(qis_testkit::workspace_binary("qis-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("QIS_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("agent"),
    )
}

#[tokio::test]
async fn rendered_agent_permissions_suffice_and_confine() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("agents.password"), "agent-secret").expect("password");
    let perms = nats_permissions::agent("qis.campus", "qis_factory_campus");
    let conf = dir.path().join("auth.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{\n  users = [\n    {{ user: operator, password: operator-secret }}\n    \
             {{ user: agents, password: agent-secret\n{}    }}\n  ]\n}}\n",
            perms.nats_conf()
        ),
    )
    .expect("server config");
    let server = NatsServer::start_with_config(Some(conf));
    let nats = server.url();

    // The operator's part, as its own (unrestricted) user: the stream and one consumer per site.
    let admin = async_nats::ConnectOptions::with_user_and_password(
        "operator".into(),
        "operator-secret".into(),
    )
    .connect(&nats)
    .await
    .expect("operator connects");
    let admin_js = jetstream::new(admin);
    let swarm = QisSwarmSpec {
        subject_prefix: Some("qis.campus".into()),
        ..Default::default()
    };
    let stream = stream_config::desired("factory", "campus", &swarm);
    js_apply::ensure_stream(&admin_js, &stream)
        .await
        .expect("stream");
    let subject = QisSubjectSpec {
        swarm_ref: SwarmRef {
            name: "campus".into(),
        },
        domain: "predictive-maintenance".into(),
        problem_class: Some("bearing-wear".into()),
        ..Default::default()
    };
    let address = consumer_config::address("qis.campus", &subject);
    for site in ["hall-a", "hall-b"] {
        let c = consumer_config::desired("factory", "wear", site, &address, &subject);
        js_apply::ensure_consumer(&admin_js, &stream.name, &c)
            .await
            .expect("consumer");
    }

    // Two agents with the rendered permissions only.
    let ports = [qis_testkit::free_port(), qis_testkit::free_port()];
    let _agents: Vec<KillOnDrop> = ["hall-a", "hall-b"]
        .iter()
        .zip(ports)
        .map(|(site, port)| start_agent(dir.path(), &nats, site, port))
        .collect();
    for port in ports {
        eventually(
            "agent ready (connected, consumers bound)",
            WAIT,
            || async move { (Http::local(port).get("/readyz").await.status == 200).then_some(()) },
        )
        .await;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for (i, port) in ports.iter().enumerate() {
        let packet = json!({"agent_id": format!("pump-{i}"), "domain": "predictive-maintenance",
            "problem_class": "bearing-wear", "conclusion": "47 Hz harmonic", "confidence": 0.8,
            "context_vector": [0.4, 0.7], "timestamp": now, "source_node": format!("node-{i}")});
        assert_eq!(
            Http::local(*port)
                .post_json("/v1/outcomes", &packet)
                .await
                .status,
            202
        );
    }
    for port in ports {
        eventually("both sites see both agents' packets", WAIT, || async move {
            let v = Http::local(port).get_json("/v1/consensus/wear").await?;
            (v["consensus"]["agents"].as_u64() == Some(2)).then_some(())
        })
        .await;
    }
    assert!(
        !server.log().contains(VIOLATION),
        "the agents' work needed more than the rendered permissions:\n{}",
        server.log()
    );

    // The same user, outside its swarm.
    let inbox = qis_crds::addressing::agent_inbox_prefix("qis_factory_campus");
    let intruder =
        async_nats::ConnectOptions::with_user_and_password("agents".into(), "agent-secret".into())
            .custom_inbox_prefix(&inbox)
            .request_timeout(Some(Duration::from_millis(500)))
            .connect(&nats)
            .await
            .expect("agent user connects");
    intruder
        .publish("qis.other.predictive-maintenance.bearing-wear", "x".into())
        .await
        .expect("sent (the server refuses it)");
    let created = intruder
        .request(
            "$JS.API.STREAM.CREATE.stolen",
            json!({"name": "stolen", "subjects": ["stolen.>"]})
                .to_string()
                .into(),
        )
        .await;
    assert!(created.is_err(), "stream administration must be refused");
    let _ = intruder.subscribe("_INBOX.>").await;
    let _ = intruder.subscribe("qis.campus.>").await;
    intruder.flush().await.expect("flush");
    for refused in [
        "Publish Violation - Subject \"qis.other.predictive-maintenance.bearing-wear\"",
        "Publish Violation - Subject \"$JS.API.STREAM.CREATE.stolen\"",
        "Subscription Violation - Subject \"_INBOX.>\"",
        "Subscription Violation - Subject \"qis.campus.>\"",
    ] {
        let needle = refused.to_owned();
        eventually(&format!("the server logs: {needle}"), WAIT, || {
            let found = server.log().contains(&needle);
            async move { found.then_some(()) }
        })
        .await;
    }
    assert!(
        admin_js.get_stream("stolen").await.is_err(),
        "no stream was made"
    );
}
