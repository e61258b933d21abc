//! The invalid-CR matrix: each bad object is refused by the layer that should refuse it —
//! the CRD schema (patterns, ranges, enums; checked with a JSON Schema validator on the
//! generated schema), the CEL rules (kube's client-side CEL validator, with the old object for
//! transition rules), or the operator's pure validation (reported as `InvalidSpec` naming the
//! field). Overlapping prefixes are a runtime conflict (`controller/invalid_specs.rs`), not a
//! spec error.

use kube::core::cel::Validator;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Schema,
    Cel,
    Validation,
}

fn crd_schema(kind: usize) -> Value {
    let (_, crd) = &qis_crds::crdgen::all()[kind];
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("json")
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

fn swarm(patch: Value) -> Value {
    let mut o = json!({"apiVersion": "qis.dev/v1alpha1", "kind": "QisSwarm", "metadata": {"name": "plant", "namespace": "f"},
        "spec": serde_json::to_value(qis_crds::QisSwarmSpec::default()).expect("json")});
    merge(&mut o, patch);
    o
}

fn subject(patch: Value) -> Value {
    let mut o = json!({"apiVersion": "qis.dev/v1alpha1", "kind": "QisSubject", "metadata": {"name": "wear", "namespace": "f"},
        "spec": {"swarmRef": {"name": "plant"}, "domain": "hvac", "problemClass": "energy-anomaly",
                 "consumer": serde_json::to_value(qis_crds::ConsumerSpec::default()).expect("json"), "synthesis": {}}});
    merge(&mut o, patch);
    o
}

/// Which layers refuse `obj` (kind 0 = swarm, 1 = subject), given the old object for updates.
fn refusals(kind: usize, obj: &Value, old: Option<&Value>) -> Vec<Layer> {
    let schema = crd_schema(kind);
    let mut out = Vec::new();
    let validator =
        jsonschema::validator_for(&schema).expect("the CRD schema compiles as JSON Schema");
    if !validator.is_valid(obj) {
        out.push(Layer::Schema);
    }
    if Validator::new().validate(&schema, obj, old).is_err() {
        out.push(Layer::Cel);
    }
    let spec = obj["spec"].clone();
    let invalid = if kind == 0 {
        serde_json::from_value::<qis_crds::QisSwarmSpec>(spec)
            .map(|s| qis_operator::validate::swarm(&s).is_err())
            .unwrap_or(false)
    } else {
        serde_json::from_value::<qis_crds::QisSubjectSpec>(spec)
            .map(|s| qis_operator::validate::subject(&s).is_err())
            .unwrap_or(false)
    };
    if invalid {
        out.push(Layer::Validation);
    }
    out
}

/// Proves the valid baselines pass every layer (so each refusal below is the case's own).
#[test]
fn baselines_are_valid() {
    assert_eq!(refusals(0, &swarm(json!({})), None), []);
    assert_eq!(refusals(1, &subject(json!({})), None), []);
}

/// One case of the matrix: name, kind (0 swarm, 1 subject), the object, the old object of an
/// update, the layer meant to refuse it.
type Case = (&'static str, usize, Value, Option<Value>, Layer);

/// The invalid objects.
fn cases() -> Vec<Case> {
    use Layer::*;
    let old_swarm = swarm(json!({"spec": {"subjectPrefix": "qis.iot"}}));
    let old_subject = subject(json!({}));
    let key = json!({"name": "s", "key": "k"});
    vec![
        (
            "prefix injection qis.>",
            0,
            swarm(json!({"spec": {"subjectPrefix": "qis.>"}})),
            None,
            Schema,
        ),
        (
            "prefix with capitals",
            0,
            swarm(json!({"spec": {"subjectPrefix": "QIS.iot"}})),
            None,
            Schema,
        ),
        (
            "prefix of nine tokens",
            0,
            swarm(json!({"spec": {"subjectPrefix": "a.b.c.d.e.f.g.h.i"}})),
            None,
            Schema,
        ),
        (
            "negative maxBytes",
            0,
            swarm(json!({"spec": {"stream": {"maxBytes": -5}}})),
            None,
            Schema,
        ),
        (
            "zero replicas",
            0,
            swarm(json!({"spec": {"stream": {"replicas": 0}}})),
            None,
            Schema,
        ),
        (
            "maxMsgSize below a packet",
            0,
            swarm(json!({"spec": {"stream": {"maxMsgSize": 100}}})),
            None,
            Schema,
        ),
        (
            "negative maxAge",
            0,
            swarm(json!({"spec": {"stream": {"maxAge": "-1h"}}})),
            None,
            Schema,
        ),
        (
            "storage not an enum value",
            0,
            swarm(json!({"spec": {"stream": {"storage": "tape"}}})),
            None,
            Schema,
        ),
        (
            "duplicateWindow beyond maxAge",
            0,
            swarm(json!({"spec": {"stream": {"maxAge": "1m", "duplicateWindow": "1h"}}})),
            None,
            Validation,
        ),
        (
            "site listed twice",
            0,
            swarm(json!({"spec": {"sites": [{"name": "a"}, {"name": "a"}]}})),
            None,
            Validation,
        ),
        (
            "site name with capitals and _",
            0,
            swarm(json!({"spec": {"sites": [{"name": "Hall_A"}]}})),
            None,
            Schema,
        ),
        (
            "node label that is no label key",
            0,
            swarm(json!({"spec": {"siteDiscovery": {"nodeLabel": "bad label!"}}})),
            None,
            Validation,
        ),
        (
            "NATS url of another scheme",
            0,
            swarm(json!({"spec": {"nats": {"url": "http://nats:4222"}}})),
            None,
            Validation,
        ),
        (
            "two credential kinds",
            0,
            swarm(json!({"spec": {"nats": {"credentials": {"token": key, "credsFile": key}}}})),
            None,
            Cel,
        ),
        (
            "username without password",
            0,
            swarm(json!({"spec": {"nats": {"credentials": {"username": key}}}})),
            None,
            Cel,
        ),
        (
            "threshold above 1",
            0,
            swarm(json!({"spec": {"synthesis": {"threshold": 1.5}}})),
            None,
            Schema,
        ),
        (
            "unknown deletionPolicy",
            0,
            swarm(json!({"spec": {"deletionPolicy": "purge"}})),
            None,
            Schema,
        ),
        (
            "swarm name with a dot",
            0,
            swarm(json!({"metadata": {"name": "plant.a"}})),
            None,
            Cel,
        ),
        (
            "subjectPrefix changed",
            0,
            swarm(json!({"spec": {"subjectPrefix": "qis.other"}})),
            Some(old_swarm.clone()),
            Cel,
        ),
        (
            "stream storage changed",
            0,
            swarm(json!({"spec": {"subjectPrefix": "qis.iot", "stream": {"storage": "memory"}}})),
            Some(old_swarm.clone()),
            Cel,
        ),
        (
            "domain injection hvac.>",
            1,
            subject(json!({"spec": {"domain": "hvac.>"}})),
            None,
            Schema,
        ),
        (
            "reserved domain fp",
            1,
            subject(json!({"spec": {"domain": "fp"}})),
            None,
            Cel,
        ),
        (
            "wildcard problem class",
            1,
            subject(json!({"spec": {"problemClass": "*"}})),
            None,
            Schema,
        ),
        (
            "hashed without a problem class",
            1,
            {
                let mut s = subject(json!({"spec": {"addressing": {"mode": "hashed"}}}));
                s["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("problemClass");
                s
            },
            None,
            Cel,
        ),
        (
            "byStartTime without a start",
            1,
            subject(json!({"spec": {"consumer": {"deliverPolicy": "byStartTime"}}})),
            None,
            Cel,
        ),
        (
            "start time that is no time",
            1,
            subject(
                json!({"spec": {"consumer": {"deliverPolicy": "byStartTime", "optStartTime": "yesterday"}}}),
            ),
            None,
            Validation,
        ),
        (
            "backoff as long as maxDeliver",
            1,
            subject(json!({"spec": {"consumer": {"maxDeliver": 2, "backoff": ["1s", "2s"]}}})),
            None,
            Cel,
        ),
        (
            "maxAckPending zero",
            1,
            subject(json!({"spec": {"consumer": {"maxAckPending": 0}}})),
            None,
            Schema,
        ),
        (
            "swarmRef changed",
            1,
            subject(json!({"spec": {"swarmRef": {"name": "other"}}})),
            Some(old_subject.clone()),
            Cel,
        ),
        (
            "unknown deliverPolicy",
            1,
            subject(json!({"spec": {"consumer": {"deliverPolicy": "sometimes"}}})),
            None,
            Schema,
        ),
        (
            "window past every int64 (panicked the operator and every agent once)",
            1,
            subject(json!({"spec": {"synthesis": {"window": "99999999999999999999s"}}})),
            None,
            Cel,
        ),
        (
            "maxAge one nanosecond past 10 years",
            0,
            swarm(json!({"spec": {"stream": {"maxAge": "87600h1ns"}}})),
            None,
            Cel,
        ),
        (
            "ackWait of 34 characters",
            1,
            subject(json!({"spec": {"consumer": {"ackWait": format!("{}1s", "0".repeat(32))}}})),
            None,
            Schema,
        ),
    ]
}

/// Proves every invalid object is refused by the layer meant to refuse it.
#[test]
fn every_invalid_object_is_refused() {
    let cases = cases();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (name, kind, obj, old, layer) in &cases {
        let got = refusals(*kind, obj, old.as_ref());
        if !got.contains(layer) {
            failures.push(format!("{name}: expected {layer:?}, refused by {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Proves a duration past the bound is refused by the operator's own validation too (an
/// object stored before the schema had the bound), naming the field, and that reading it
/// never panics.
#[test]
fn out_of_range_durations_are_invalid_spec_naming_the_field() {
    let cases = [
        (
            1,
            json!({"spec": {"synthesis": {"window": "99999999999999999999s"}}}),
            "spec.synthesis.window",
        ),
        (
            1,
            json!({"spec": {"synthesis": {"halfLife": "9999999999h"}}}),
            "spec.synthesis.halfLife",
        ),
        (
            1,
            json!({"spec": {"synthesis": {"halfLife": "1ns"}}}),
            "spec.synthesis.halfLife",
        ),
        (
            1,
            json!({"spec": {"synthesis": {"publishInterval": "87601h"}}}),
            "spec.synthesis.publishInterval",
        ),
        (
            1,
            json!({"spec": {"consumer": {"ackWait": "99999999999999999999ms"}}}),
            "spec.consumer.ackWait",
        ),
        (
            1,
            json!({"spec": {"consumer": {"backoff": ["1s", "99999999999999999999s"]}}}),
            "spec.consumer.backoff[1]",
        ),
        (
            0,
            json!({"spec": {"stream": {"maxAge": "99999999999999999999s"}}}),
            "spec.stream.maxAge",
        ),
        (
            0,
            json!({"spec": {"stream": {"duplicateWindow": "9999999999999999h"}}}),
            "spec.stream.duplicateWindow",
        ),
        (
            0,
            json!({"spec": {"synthesis": {"window": "99999999999999999999s"}}}),
            "spec.synthesis.window",
        ),
    ];
    for (kind, patch, field) in cases {
        let err = if kind == 0 {
            let o = swarm(patch);
            let spec: qis_crds::QisSwarmSpec =
                serde_json::from_value(o["spec"].clone()).expect("reads");
            qis_operator::validate::swarm(&spec).expect_err("refused")
        } else {
            let o = subject(patch);
            let spec: qis_crds::QisSubjectSpec =
                serde_json::from_value(o["spec"].clone()).expect("reads");
            qis_operator::validate::subject(&spec).expect_err("refused")
        };
        match err {
            qis_operator::error::Error::InvalidSpec { field: got, .. } => assert_eq!(got, field),
            other => panic!("{field}: not InvalidSpec: {other}"),
        }
    }
}

/// Proves the matrix against the real API server (`qis_testkit::controlplane`, the CRDs
/// installed with `kubectl apply --server-side`): every case meant for the schema or CEL is
/// refused by the server itself (a server-side dry run; an update's old object created first),
/// and every case left to the operator's validation is admitted (the operator reports it).
#[test]
fn the_api_server_refuses_what_the_schema_and_cel_should() {
    use qis_testkit::controlplane::ControlPlane;
    let cp = ControlPlane::shared();
    cp.namespace("f", &[]);
    let mut failures = Vec::new();
    // Where the real server is stricter than the client-side checks above: it enforces the
    // uniqueness of a list-map's keys and `format: date-time`.
    let server_stricter = ["site listed twice", "start time that is no time"];
    for (i, (name, _, obj, old, layer)) in cases().into_iter().enumerate() {
        let mut obj = obj;
        // A name of its own per case, unless the case is about the name.
        if ["plant", "wear"].contains(&obj["metadata"]["name"].as_str().unwrap_or_default()) {
            obj["metadata"]["name"] = json!(format!("case{i}"));
        }
        let result = match old {
            Some(mut old) => {
                old["metadata"]["name"] = json!(format!("case{i}"));
                cp.kubectl_stdin(&["create", "-f", "-"], Some(&old.to_string()));
                cp.try_kubectl(
                    &[
                        "apply",
                        "--server-side",
                        "--force-conflicts",
                        "--dry-run=server",
                        "-f",
                        "-",
                    ],
                    Some(&obj.to_string()),
                )
            }
            None => cp.try_kubectl(
                &["create", "--dry-run=server", "-f", "-"],
                Some(&obj.to_string()),
            ),
        };
        let refused = result.is_err();
        let want = layer != Layer::Validation || server_stricter.contains(&name);
        if refused != want {
            failures.push(format!(
                "{name}: expected the server to {} it ({layer:?}): {result:?}",
                if want { "refuse" } else { "admit" }
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
