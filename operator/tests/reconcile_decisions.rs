//! The reconcile decisions, in process and in milliseconds: conditions and reasons, events,
//! which objects are applied or deleted, and when to look again. A mocked API server (a
//! [`Scenario`] of expected requests, each answered in turn, on `tower_test::mock`) stands in
//! for the control plane, and NATS is a closed port (unreachable, as it is when it is down);
//! the pure status and build steps are called directly. What only a real control plane and a
//! real nats-server can show stays in `controller/` (one module per feature), `jetstream.rs`
//! and `full_loop.rs`.

use http::{Request, Response};
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::watcher;
use qis_crds::{QisSubject, QisSwarm};
use qis_operator::context::{Config, Context};
use qis_operator::error::{Error, Refusal};
use qis_operator::metrics::Metrics;
use qis_operator::nats_connections::Settings;
use qis_operator::reconcile::entry::reconcile;
use qis_operator::workload::Defaults;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const RESYNC: Duration = Duration::from_secs(300);

/// How the mocked API server answers one request.
enum Reply {
    /// This status and body.
    With(u16, Value),
    /// 200 with the request's own body (a create that the server took as it is).
    Echo,
}

/// One expected request: method, path (without the query) and the answer.
struct Step {
    method: &'static str,
    path: String,
    reply: Reply,
}

fn step(method: &'static str, path: impl Into<String>, reply: Reply) -> Step {
    Step {
        method,
        path: path.into(),
        reply,
    }
}

fn not_found() -> Reply {
    Reply::With(
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

fn ok(body: Value) -> Reply {
    Reply::With(200, body)
}

/// A request the reconcile sent: method, URI with query, JSON body.
#[derive(Debug)]
struct Seen {
    method: String,
    uri: String,
    body: Value,
}

/// The API server of one reconcile: it expects `steps` in order, answers each, and fails on
/// a request out of order or one too many (checked once the reconcile dropped its client).
struct Scenario {
    done: tokio::task::JoinHandle<Vec<Seen>>,
}

impl Scenario {
    fn start(
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        steps: Vec<Step>,
    ) -> Scenario {
        let done = tokio::spawn(async move {
            let mut seen = Vec::new();
            for s in steps {
                let Some((request, respond)) = handle.next_request().await else {
                    panic!(
                        "expected {} {}, the reconcile sent nothing more; saw {seen:#?}",
                        s.method, s.path
                    );
                };
                let (method, uri) = (request.method().to_string(), request.uri().clone());
                assert_eq!(
                    (method.as_str(), uri.path()),
                    (s.method, s.path.as_str()),
                    "request {} out of order; saw before: {seen:#?}",
                    seen.len()
                );
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .expect("request body");
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (code, answer) = match s.reply {
                    Reply::With(code, v) => (code, v),
                    Reply::Echo => (200, body.clone()),
                };
                let response = Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                    .expect("response");
                respond.send_response(response);
                seen.push(Seen {
                    method,
                    uri: uri.to_string(),
                    body,
                });
            }
            if let Some((request, _)) = handle.next_request().await {
                panic!(
                    "unexpected {} {}; saw {seen:#?}",
                    request.method(),
                    request.uri()
                );
            }
            seen
        });
        Scenario { done }
    }

    /// The requests seen, once `ctx` (which holds the client) is dropped.
    async fn finish(self, ctx: Arc<Context>) -> Vec<Seen> {
        drop(ctx);
        tokio::time::timeout(Duration::from_secs(5), self.done)
            .await
            .expect("the client was not dropped")
            .expect("scenario")
    }
}

/// A context on a mocked API server, NATS on a closed port, and the swarms in `swarms` cached.
fn context(steps: Vec<Step>, swarms: Vec<QisSwarm>) -> (Arc<Context>, Scenario) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let (store, mut writer) = reflector::store::<DeserializeGuard<QisSwarm>>();
    for s in swarms {
        writer.apply_watcher_event(&watcher::Event::InitApply(DeserializeGuard(Ok(s))));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let config = Config {
        default_nats: Settings {
            url: "nats://127.0.0.1:1".into(),
            ..Settings::default()
        },
        defaults: Defaults {
            agent_image: "qis-agent:test".into(),
            nats_url: "nats://127.0.0.1:1".into(),
        },
        resync: RESYNC,
        deletion_timeout: Duration::from_secs(60),
        nats_timeout: Duration::from_millis(200),
        scratch_dir: std::env::temp_dir(),
        site_discovery: false,
    };
    let ctx = Context::new(client, config, Arc::new(Metrics::default()), None, store);
    (Arc::new(ctx), Scenario::start(handle, steps))
}

fn swarm(spec: Value, status: Value) -> QisSwarm {
    serde_json::from_value(json!({
        "apiVersion": "qis.dev/v1alpha1", "kind": "QisSwarm",
        "metadata": {"name": "plant", "namespace": "plant", "uid": "u-1", "generation": 2,
                     "finalizers": ["qis.dev/stream"]},
        "spec": spec, "status": status,
    }))
    .expect("swarm")
}

fn subject(extra_meta: Value, status: Value) -> QisSubject {
    let mut metadata = json!({"name": "hvac", "namespace": "plant", "uid": "u-2",
                              "generation": 1, "finalizers": ["qis.dev/consumers"]});
    if let (Some(m), Some(extra)) = (metadata.as_object_mut(), extra_meta.as_object()) {
        m.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "qis.dev/v1alpha1", "kind": "QisSubject", "metadata": metadata,
        "spec": {"swarmRef": {"name": "plant"}, "domain": "hvac"}, "status": status,
    }))
    .expect("subject")
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no condition {type_} in {status}"))
}

fn events(seen: &[Seen]) -> Vec<(&str, &str)> {
    seen.iter()
        .filter(|s| s.uri.contains("/events"))
        .map(|s| {
            (
                s.body["reason"].as_str().unwrap_or_default(),
                s.body["note"].as_str().unwrap_or_default(),
            )
        })
        .collect()
}

const NS: &str = "/api/v1/namespaces/plant";
const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/plant";
const APPS: &str = "/apis/apps/v1/namespaces/plant/deployments";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/plant/events";
const SWARMS: &str = "/apis/qis.dev/v1alpha1/namespaces/plant/qisswarms";
const SUBJECTS: &str = "/apis/qis.dev/v1alpha1/namespaces/plant/qissubjects";

fn deployment(site: &str, ready: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": format!("plant-agent-{site}"), "namespace": "plant",
                        "generation": 1,
                        "labels": {"qis.dev/swarm": "plant", "qis.dev/site": site,
                                   "app.kubernetes.io/managed-by": "qis-operator"}},
           "spec": {"selector": {}, "template": {}},
           "status": {"readyReplicas": ready}})
}

#[tokio::test]
async fn a_refused_spec_names_its_field_and_touches_nothing_else() {
    let s = swarm(
        json!({"subjectPrefix": "has space"}),
        json!({"sites": [
        {"name": "a", "deployment": "plant-agent-a", "desiredReplicas": 1, "readyReplicas": 1}]}),
    );
    let steps = vec![
        step("POST", EVENTS, Reply::Echo),
        step(
            "PATCH",
            format!("{SWARMS}/plant/status"),
            ok(serde_json::to_value(&s).expect("json")),
        ),
    ];
    let (ctx, scenario) = context(steps, vec![]);
    let result = reconcile(Arc::new(DeserializeGuard(Ok(s))), ctx.clone()).await;
    let field = match result {
        Err(Error::InvalidSpec { field, .. }) => field,
        other => panic!("not InvalidSpec: {other:?}"),
    };
    assert_eq!(field, "spec.subjectPrefix");
    let seen = scenario.finish(ctx).await;
    let status = &seen[1].body;
    for t in ["Ready", "StreamReady", "AgentsReady"] {
        let c = condition(status, t);
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("False"), Some("InvalidSpec"))
        );
        assert!(
            c["message"]
                .as_str()
                .unwrap_or_default()
                .contains("spec.subjectPrefix"),
            "{c}"
        );
    }
    // A failure never shrinks the sites subjects keep their consumers by.
    assert_eq!(status["status"]["sites"][0]["name"], "a");
    assert_eq!(
        events(&seen),
        vec![(
            "InvalidSpec",
            condition(status, "Ready")["message"]
                .as_str()
                .unwrap_or_default()
        )]
    );
}

#[tokio::test]
async fn nats_down_and_a_failed_site_keep_the_others_and_delete_a_removed_site() {
    let s = swarm(
        json!({"sites": [{"name": "a"}, {"name": "b", "replicas": 2}]}),
        json!({"sites": [{"name": "a", "deployment": "plant-agent-a", "desiredReplicas": 1, "readyReplicas": 1}]}),
    );
    let forbidden = Reply::With(
        403,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "Forbidden", "code": 403, "message": "exceeded quota: pods"}),
    );
    let list = json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {},
                      "items": [deployment("a", 1), deployment("b", 0), deployment("c", 1)]});
    let claims = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {}, "items": []});
    let role_ref =
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "plant-agent"});
    let steps = vec![
        step(
            "GET",
            format!("{NS}/serviceaccounts/plant-agent"),
            not_found(),
        ),
        step(
            "PATCH",
            format!("{NS}/serviceaccounts/plant-agent"),
            Reply::Echo,
        ),
        step("GET", format!("{RBAC}/roles/plant-agent"), not_found()),
        step("PATCH", format!("{RBAC}/roles/plant-agent"), Reply::Echo),
        step(
            "GET",
            format!("{RBAC}/rolebindings/plant-agent"),
            not_found(),
        ),
        step(
            "PATCH",
            format!("{RBAC}/rolebindings/plant-agent"),
            ok(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "plant-agent", "namespace": "plant"}, "roleRef": role_ref})),
        ),
        step("GET", format!("{APPS}/plant-agent-a"), not_found()),
        step("PATCH", format!("{APPS}/plant-agent-a"), forbidden),
        step("GET", format!("{APPS}/plant-agent-b"), not_found()),
        step(
            "PATCH",
            format!("{APPS}/plant-agent-b"),
            ok(deployment("b", 2)),
        ),
        step("GET", APPS, ok(list)),
        step(
            "DELETE",
            format!("{APPS}/plant-agent-c"),
            ok(deployment("c", 1)),
        ),
        step("POST", EVENTS, Reply::Echo),
        step("GET", format!("{NS}/persistentvolumeclaims"), ok(claims)),
        step("POST", EVENTS, Reply::Echo),
        step(
            "PATCH",
            format!("{SWARMS}/plant/status"),
            ok(serde_json::to_value(&s).expect("json")),
        ),
    ];
    let (ctx, scenario) = context(steps, vec![]);
    let result = reconcile(Arc::new(DeserializeGuard(Ok(s))), ctx.clone()).await;
    assert!(matches!(result, Err(Error::Nats { .. })), "{result:?}");
    let seen = scenario.finish(ctx).await;
    let deleted: Vec<(&str, &Value)> = seen
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| (s.uri.trim_end_matches('?'), &s.body["propagationPolicy"]))
        .collect();
    assert_eq!(
        deleted,
        vec![(
            format!("{APPS}/plant-agent-c").as_str(),
            &json!("Background")
        )]
    );
    let status = &seen.last().expect("status").body;
    let stream = condition(status, "StreamReady");
    assert_eq!(
        (stream["status"].as_str(), stream["reason"].as_str()),
        (Some("False"), Some("NatsUnavailable"))
    );
    let ready = condition(status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("NatsUnavailable"))
    );
    let agents = condition(status, "AgentsReady");
    assert_eq!(
        (agents["status"].as_str(), agents["reason"].as_str()),
        (Some("False"), Some("KubeApiError"))
    );
    let message = agents["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("1 of 2 site(s) failed; site a:") && message.contains("exceeded quota"),
        "{message}"
    );
    // The failed site keeps its place with the replicas last seen; b is as applied.
    let sites: Vec<(&str, i64, i64)> = status["status"]["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default(),
                s["desiredReplicas"].as_i64().unwrap_or(-1),
                s["readyReplicas"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(sites, vec![("a", 1, 1), ("b", 2, 2)]);
    let reasons: Vec<&str> = events(&seen).into_iter().map(|(r, _)| r).collect();
    assert_eq!(reasons, vec!["SiteRemoved", "NatsUnavailable"]);
    assert!(
        events(&seen)[0].1.contains("site c is gone"),
        "{:?}",
        events(&seen)
    );
}

#[tokio::test]
async fn a_subject_of_a_missing_swarm_waits_for_it() {
    let s = subject(
        json!({}),
        json!({"address": "qis.plant.plant.hvac", "consumers": [{"site": "a", "name": "hvac-a"}]}),
    );
    let steps = vec![
        step("POST", EVENTS, Reply::Echo),
        step(
            "PATCH",
            format!("{SUBJECTS}/hvac/status"),
            ok(serde_json::to_value(&s).expect("json")),
        ),
    ];
    let (ctx, scenario) = context(steps, vec![]);
    let result = reconcile(Arc::new(DeserializeGuard(Ok(s))), ctx.clone()).await;
    assert_eq!(
        result.expect("waits, not an error"),
        Action::requeue(RESYNC)
    );
    let seen = scenario.finish(ctx).await;
    let status = &seen[1].body;
    for t in ["Ready", "ConsumersReady"] {
        let c = condition(status, t);
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("False"), Some("SwarmNotFound")),
            "{t}"
        );
    }
    // What the subject made stays known, so that its deletion still finds it.
    assert_eq!(status["status"]["consumers"][0]["name"], "hvac-a");
    assert_eq!(status["status"]["address"], "qis.plant.plant.hvac");
    assert_eq!(events(&seen)[0].0, "SwarmNotFound");
}

fn deleting_subject(deleted_ago: Duration) -> QisSubject {
    let at = k8s_openapi::jiff::Timestamp::now() - deleted_ago;
    subject(
        json!({"deletionTimestamp": at.to_string()}),
        json!({"consumers": [{"site": "a", "name": "hvac-a"}]}),
    )
}

fn ready_swarm() -> QisSwarm {
    swarm(
        json!({}),
        json!({"conditions": [], "sites": [{"name": "a", "deployment": "plant-agent-a", "desiredReplicas": 1, "readyReplicas": 1}]}),
    )
}

#[tokio::test]
async fn a_deletion_is_blocked_while_nats_is_away_within_the_deadline() {
    let s = deleting_subject(Duration::from_secs(5));
    let steps = vec![step(
        "GET",
        format!("{SWARMS}/plant"),
        ok(serde_json::to_value(ready_swarm()).expect("json")),
    )];
    let (ctx, scenario) = context(steps, vec![]);
    let result = reconcile(Arc::new(DeserializeGuard(Ok(s))), ctx.clone()).await;
    assert!(matches!(result, Err(Error::Nats { .. })), "{result:?}");
    // No finalizer removal, no event: the request list is exactly the swarm read.
    assert_eq!(scenario.finish(ctx).await.len(), 1);
}

#[tokio::test]
async fn a_deletion_past_the_deadline_is_abandoned_with_a_warning() {
    let s = deleting_subject(Duration::from_secs(120));
    let steps = vec![
        step(
            "GET",
            format!("{SWARMS}/plant"),
            ok(serde_json::to_value(ready_swarm()).expect("json")),
        ),
        step("POST", EVENTS, Reply::Echo),
        step(
            "PATCH",
            format!("{SUBJECTS}/hvac"),
            ok(serde_json::to_value(&s).expect("json")),
        ),
    ];
    let (ctx, scenario) = context(steps, vec![]);
    let result = reconcile(Arc::new(DeserializeGuard(Ok(s))), ctx.clone()).await;
    assert_eq!(result.expect("abandoned"), Action::await_change());
    let seen = scenario.finish(ctx).await;
    assert_eq!(seen[1].body["reason"], "CleanupAbandoned");
    assert_eq!(seen[1].body["type"], "Warning");
    // The finalizer removal names ours.
    assert!(
        seen[2].body.to_string().contains("qis.dev/consumers"),
        "{:?}",
        seen[2].body
    );
}

mod pure {
    use super::*;
    use async_nats::jetstream::stream::State;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use qis_crds::{ConsumerStatus, SiteStatus};
    use qis_operator::jetstream::StreamOutcome;
    use qis_operator::subject::build::DesiredConsumers;
    use qis_operator::subject::status as subject_status;
    use qis_operator::swarm::apply::{Applied, AppliedAgents};
    use qis_operator::swarm::status as swarm_status;

    fn now() -> Time {
        Time("2026-06-01T12:00:00Z".parse().expect("timestamp"))
    }

    fn stream_ok() -> Result<StreamOutcome, Error> {
        let state: State = serde_json::from_value(json!({
            "messages": 7, "bytes": 700, "first_seq": 1, "first_ts": "2026-06-01T00:00:00Z",
            "last_seq": 7, "last_ts": "2026-06-01T01:00:00Z", "consumer_count": 2}))
        .expect("state");
        Ok(StreamOutcome {
            created: false,
            reverted: vec![],
            state,
        })
    }

    fn site(name: &str, desired: i32, ready: i32) -> SiteStatus {
        SiteStatus {
            name: name.into(),
            deployment: format!("plant-agent-{name}"),
            desired_replicas: desired,
            ready_replicas: ready,
        }
    }

    fn applied(sites: Vec<SiteStatus>, failures: Vec<(String, Error)>) -> Applied {
        Applied {
            stream_name: "qis_plant_plant".into(),
            stream: stream_ok(),
            agents: Ok(AppliedAgents {
                sites,
                skipped: vec![],
                failures,
            }),
        }
    }

    fn reason_of(status: &qis_crds::QisSwarmStatus, t: &str) -> (String, String) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition");
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn stream_and_every_site_ready_is_ready_and_then_unchanged() {
        let s = swarm(json!({}), json!({}));
        let new = swarm_status::next(
            &s,
            "qis.plant",
            false,
            &applied(vec![site("a", 1, 1)], vec![]),
            now(),
        )
        .expect("changed");
        assert_eq!(
            reason_of(&new, "Ready"),
            ("True".into(), "Reconciled".into())
        );
        assert_eq!(
            reason_of(&new, "StreamReady"),
            ("True".into(), "Reconciled".into())
        );
        assert_eq!(
            new.stream.as_ref().map(|s| (s.messages, s.consumers)),
            Some((7, 2))
        );
        assert_eq!(new.subject_prefix.as_deref(), Some("qis.plant"));
        // The same outcome an hour later changes nothing: no write.
        let mut again = s.clone();
        again.status = Some(new);
        let later = Time("2026-06-01T13:00:00Z".parse().expect("timestamp"));
        assert!(
            swarm_status::next(
                &again,
                "qis.plant",
                false,
                &applied(vec![site("a", 1, 1)], vec![]),
                later
            )
            .is_none()
        );
    }

    #[test]
    fn agents_not_ready_yet_are_progressing() {
        let s = swarm(json!({}), json!({}));
        let new = swarm_status::next(
            &s,
            "qis.plant",
            false,
            &applied(vec![site("a", 2, 1), site("b", 1, 1)], vec![]),
            now(),
        )
        .expect("changed");
        assert_eq!(
            reason_of(&new, "AgentsReady"),
            ("False".into(), "Progressing".into())
        );
        assert_eq!(
            reason_of(&new, "Ready"),
            ("False".into(), "Progressing".into())
        );
        let message = &new
            .conditions
            .iter()
            .find(|c| c.type_ == "AgentsReady")
            .expect("agents")
            .message;
        assert!(message.starts_with("1/2 sites"), "{message}");
    }

    #[test]
    fn discovery_without_node_access_is_said_unless_a_site_failed() {
        let s = swarm(json!({}), json!({}));
        let new = swarm_status::next(
            &s,
            "p",
            true,
            &applied(vec![site("a", 1, 1)], vec![]),
            now(),
        )
        .expect("changed");
        assert_eq!(
            reason_of(&new, "AgentsReady"),
            ("False".into(), "SiteDiscoveryDisabled".into())
        );
        let failed = vec![("a".to_owned(), not_supported("claim"))];
        let new = swarm_status::next(
            &s,
            "p",
            true,
            &applied(vec![site("a", 1, 0)], failed),
            now(),
        )
        .expect("changed");
        assert_eq!(
            reason_of(&new, "AgentsReady"),
            ("False".into(), "NotSupported".into())
        );
    }

    #[test]
    fn a_stream_owned_elsewhere_is_a_conflict_and_keeps_the_sites() {
        let s = swarm(
            json!({}),
            json!({"sites": [{"name": "a", "deployment": "plant-agent-a", "desiredReplicas": 1, "readyReplicas": 1}]}),
        );
        let a = Applied {
            stream_name: "qis_plant_plant".into(),
            stream: Err(conflict("other")),
            agents: Err(conflict("other")),
        };
        let new = swarm_status::next(&s, "p", false, &a, now()).expect("changed");
        assert_eq!(
            reason_of(&new, "Ready"),
            ("False".into(), "ResourceConflict".into())
        );
        assert_eq!(new.sites.len(), 1);
        assert!(new.stream.is_none());
        match qis_operator::swarm::outcome(a, RESYNC) {
            Err(e) => assert_eq!(e.requeue_after(0), Some(Duration::from_secs(60))),
            Ok(a) => panic!("{a:?}"),
        }
    }

    #[test]
    fn the_outcome_is_the_first_failure_or_the_resync() {
        assert_eq!(
            qis_operator::swarm::outcome(applied(vec![], vec![]), RESYNC).expect("ok"),
            Action::requeue(RESYNC)
        );
        let failed = vec![
            ("a".to_owned(), nats("x")),
            ("b".to_owned(), not_supported("y")),
        ];
        assert!(matches!(
            qis_operator::swarm::outcome(applied(vec![], failed), RESYNC),
            Err(Error::Nats { .. })
        ));
        assert_eq!(
            qis_operator::subject::waiting(Error::SwarmNotFound { swarm: "s".into() }, RESYNC)
                .expect("waits"),
            Action::requeue(RESYNC)
        );
        assert!(qis_operator::subject::waiting(nats("x"), RESYNC).is_err());
    }

    fn desired(sites: &[&str]) -> DesiredConsumers {
        DesiredConsumers {
            address: "qis.plant.plant.hvac".into(),
            stream: "qis_plant_plant".into(),
            configs: vec![],
            consumers: sites
                .iter()
                .map(|s| ConsumerStatus {
                    site: (*s).into(),
                    name: format!("hvac-{s}"),
                })
                .collect(),
            gone: vec![],
        }
    }

    #[test]
    fn consumers_in_place_are_ready_and_a_failure_remembers_the_old_ones() {
        let now = k8s_openapi::jiff::Timestamp::now();
        let s = subject(
            json!({}),
            json!({"consumers": [{"site": "old", "name": "hvac-old"}]}),
        );
        let new =
            subject_status::next(&s, &desired(&["a"]), "plant", &Ok(vec![]), now).expect("changed");
        let ready = new
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.message.as_str()),
            (
                "True",
                "1 site(s) of swarm plant consume qis.plant.plant.hvac"
            )
        );
        assert_eq!(
            new.consumers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            vec!["hvac-a"]
        );
        let failed = subject_status::next(
            &s,
            &desired(&["a"]),
            "plant",
            &Err(Error::ConsumerLimit {
                context: "consumer plant".into(),
                source: Refusal {
                    code: 10026,
                    description: "maximum consumers limit reached".into(),
                },
            }),
            now,
        )
        .expect("changed");
        let ready = failed
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ConsumerLimitReached")
        );
        assert_eq!(
            failed
                .consumers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            vec!["hvac-a", "hvac-old"]
        );
        assert!(
            failed.consensus.is_none(),
            "consensus belongs to the agents"
        );
    }

    #[test]
    fn synthesizing_follows_the_age_of_the_last_consensus() {
        let now: k8s_openapi::jiff::Timestamp = "2026-06-01T12:00:00Z".parse().expect("timestamp");
        let with = |at: &str| {
            subject(
                json!({}),
                json!({"consensus": {
            "problem": "p", "strength": 0.9, "weightedConfidence": 0.8, "agents": 3, "packets": 9,
            "synthesisPairs": 3, "dispersion": 0.1, "effectiveN": 2.5, "alert": false,
            "recommendation": "r", "updatedAt": at, "reportingSite": "a"}}),
            )
        };
        let syn = |s: &QisSubject| {
            let st = subject_status::next(s, &desired(&["a"]), "plant", &Ok(vec![]), now)
                .expect("changed");
            let c = st
                .conditions
                .iter()
                .find(|c| c.type_ == "Synthesizing")
                .expect("synthesizing")
                .clone();
            (c.status, c.reason)
        };
        assert_eq!(
            syn(&with("2026-06-01T11:55:00Z")),
            ("True".into(), "ConsensusReported".into())
        );
        assert_eq!(
            syn(&with("2026-06-01T11:49:00Z")),
            ("False".into(), "NoReport".into())
        );
        assert_eq!(
            syn(&subject(json!({}), json!({}))),
            ("False".into(), "NoReport".into())
        );
    }

    #[test]
    fn a_gone_site_s_consumer_is_deleted_and_no_other() {
        let s = subject(
            json!({}),
            json!({"consumers": [{"site": "a", "name": "hvac-a"}, {"site": "c", "name": "hvac-c"}]}),
        );
        let v = qis_operator::subject::validate::subject(&s).expect("valid");
        let mut sw = ready_swarm();
        sw.status = Some(serde_json::from_value(json!({
            "conditions": [{"type": "StreamReady", "status": "True", "reason": "Reconciled", "message": "",
                            "lastTransitionTime": "2026-06-01T00:00:00Z"}],
            "subjectPrefix": "qis.plant",
            "sites": [{"name": "a", "deployment": "plant-agent-a", "desiredReplicas": 1, "readyReplicas": 1},
                      {"name": "b", "deployment": "plant-agent-b", "desiredReplicas": 1, "readyReplicas": 1}]})).expect("status"));
        let view =
            qis_operator::subject::dereference::view("plant", Arc::new(sw)).expect("stream ready");
        let d = qis_operator::subject::build::subject(&v, &view);
        assert_eq!(
            d.gone.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            vec!["hvac-c"]
        );
        assert_eq!(
            d.consumers
                .iter()
                .map(|c| c.site.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(d.configs.len(), 2);
        assert!(d.address.starts_with("qis.plant."), "{}", d.address);
        // A swarm without its stream ready yet: the subject waits.
        let not_ready = qis_operator::subject::dereference::view("plant", Arc::new(ready_swarm()));
        assert!(matches!(not_ready, Err(Error::Waiting(_))));
    }

    #[test]
    fn a_refused_subject_keeps_what_it_had() {
        let s = subject(
            json!({}),
            json!({"address": "x.y", "consumers": [{"site": "a", "name": "hvac-a"}]}),
        );
        let e = Error::InvalidSpec {
            field: "spec.domain".into(),
            message: "bad".into(),
        };
        let new =
            subject_status::blocked(&s, &e, k8s_openapi::jiff::Timestamp::now()).expect("changed");
        assert_eq!(new.address.as_deref(), Some("x.y"));
        assert_eq!(new.consumers.len(), 1);
        let ready = new
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("ready");
        assert_eq!(ready.reason, "InvalidSpec");
        assert!(ready.message.contains("spec.domain"));
    }

    #[test]
    fn deleting_names_every_consumer_the_subject_may_have_made() {
        let name = |site| qis_crds::addressing::consumer_name("hvac", site);
        let s = subject(
            json!({}),
            json!({"consumers": [
            {"site": "old", "name": name("old")}, {"site": "a", "name": name("a")}]}),
        );
        // The swarm's site a is known from the status already; site b only from the swarm.
        let mut sw = ready_swarm();
        if let Some(st) = sw.status.as_mut() {
            st.sites.push(st.sites[0].clone());
            st.sites[1].name = "b".into();
        }
        let names = qis_operator::subject::cleanup::made(&s, &sw);
        assert_eq!(names, vec![name("old"), name("a"), name("b")]);
    }
}

/// A NATS failure with `context` (the cause: a refused connection).
fn nats(context: &str) -> Error {
    Error::Nats {
        context: context.into(),
        source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
    }
}

fn not_supported(context: &str) -> Error {
    Error::NotSupported {
        context: context.into(),
        source: None,
    }
}

fn conflict(context: &str) -> Error {
    Error::Conflict {
        context: context.into(),
        source: None,
    }
}
