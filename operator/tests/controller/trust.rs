//! Proves the trust boundaries of a swarm's spec on the real control plane: a security
//! override that would make agent pods privileged is refused by the API server (the CRD's CEL
//! rules), and a NATS URL's user-info never shows in a condition or an Event.

use super::cluster::*;
use k8s_openapi::api::core::v1::SecurityContext;
use kube::api::{DeleteParams, PostParams};

/// Proves a privileged agent override never reaches the operator: the API server refuses the
/// swarm at admission, naming the field; the same swarm without the override is admitted.
#[tokio::test]
async fn trust_a_privileged_agent_override_is_refused_at_admission() {
    let c = Cluster::start().await;
    let mut s = swarm("plant", None, &["a"]);
    s.spec.agent.security_context = Some(SecurityContext {
        privileged: Some(true),
        ..Default::default()
    });
    let refused = c
        .swarms()
        .create(&PostParams::default(), &s)
        .await
        .expect_err("a privileged override is refused");
    assert!(
        refused
            .to_string()
            .contains("spec.agent.securityContext.privileged must not be true"),
        "{refused}"
    );
    s.spec.agent.security_context = Some(SecurityContext {
        privileged: Some(false),
        ..Default::default()
    });
    c.swarms()
        .create(&PostParams::default(), &s)
        .await
        .expect("privileged: false is admitted");
}

/// Proves a swarm whose URL carries `user:password` and whose server is unreachable reports
/// NatsUnavailable with the URL redacted in its conditions, and the Event of its abandoned
/// deletion names the redacted URL too: the password appears in neither.
#[tokio::test]
async fn trust_nats_url_user_info_is_redacted_from_conditions_and_events() {
    let c = Cluster::start().await;
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut s = swarm("plant", None, &[]);
    s.spec.nats = Some(qis_crds::NatsConnection {
        url: Some(format!("nats://qis:hunter2@127.0.0.1:{port}")),
        ..Default::default()
    });
    c.swarms()
        .create(&PostParams::default(), &s)
        .await
        .expect("swarm");
    let shown = swarm_condition(&c, "plant", "StreamReady", "False", Some("NatsUnavailable")).await;
    let conditions = shown.status.expect("status").conditions;
    let stream = condition(&conditions, "StreamReady").expect("StreamReady");
    assert!(
        stream
            .message
            .contains(&format!("nats://***@127.0.0.1:{port}")),
        "the message names the redacted URL: {}",
        stream.message
    );
    for cond in &conditions {
        assert!(!cond.message.contains("hunter2"), "{cond:?}");
    }
    c.swarms()
        .delete("plant", &DeleteParams::default())
        .await
        .expect("delete");
    let events = eventually("the abandoned deletion is reported", || async {
        let e = events_with_reason(&c, "CleanupAbandoned").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    for e in &events {
        let note = e.note.as_deref().unwrap_or_default();
        assert!(note.contains("nats://***@127.0.0.1"), "{note}");
        assert!(!note.contains("hunter2"), "{note}");
    }
}
