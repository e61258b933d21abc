//! The CEL rules (`x-kubernetes-validations`) of the CRDs, evaluated client-side with kube's CEL
//! validator: immutable fields stay put, and combinations the schema alone cannot refuse are
//! refused.

use kube::core::cel::Validator;
use serde_json::{Value, json};

fn schema(kind_index: usize) -> Value {
    let (_, crd) = &qis_crds::crdgen::all()[kind_index];
    let s = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(s.expect("schema")).expect("json")
}

fn swarm(name: &str, spec: Value) -> Value {
    // Start from the Rust defaults so the object looks like one the API server defaulted.
    let mut full = serde_json::to_value(qis_crds::QisSwarmSpec::default()).expect("json");
    merge(&mut full, spec);
    json!({"apiVersion": "qis.dev/v1alpha1", "kind": "QisSwarm", "metadata": {"name": name}, "spec": full})
}

fn subject(name: &str, spec: Value) -> Value {
    let mut full = json!({"swarmRef": {"name": "plant"}, "domain": "hvac",
        "consumer": serde_json::to_value(qis_crds::ConsumerSpec::default()).expect("json"), "synthesis": {}});
    merge(&mut full, spec);
    json!({"apiVersion": "qis.dev/v1alpha1", "kind": "QisSubject", "metadata": {"name": name}, "spec": full})
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

fn check(kind: usize, new: &Value, old: Option<&Value>) -> Result<(), String> {
    Validator::new()
        .validate(&schema(kind), new, old)
        .map_err(|e| format!("{e:?}"))
}

/// Proves a swarm's subject prefix and stream storage cannot change, and other fields can.
#[test]
fn swarm_immutable_fields() {
    let old = swarm("plant", json!({"subjectPrefix": "qis.iot"}));
    assert_eq!(check(0, &old, None), Ok(()));
    let err = check(
        0,
        &swarm("plant", json!({"subjectPrefix": "qis.other"})),
        Some(&old),
    )
    .unwrap_err();
    assert!(err.contains("subjectPrefix is immutable"), "{err}");
    let removed = swarm("plant", json!({}));
    assert!(
        check(0, &removed, Some(&old)).is_err(),
        "removing the prefix changes it"
    );
    let err = check(
        0,
        &swarm(
            "plant",
            json!({"subjectPrefix": "qis.iot", "stream": {"storage": "memory"}}),
        ),
        Some(&old),
    )
    .unwrap_err();
    assert!(err.contains("stream.storage is immutable"), "{err}");
    let resized = swarm(
        "plant",
        json!({"subjectPrefix": "qis.iot", "stream": {"maxBytes": 1024}}),
    );
    assert_eq!(check(0, &resized, Some(&old)), Ok(()));
}

/// Proves names that would not fit NATS names (dots, capitals) are refused.
#[test]
fn swarm_name_must_be_dns_label() {
    assert!(check(0, &swarm("plant.a", json!({})), None).is_err());
    assert!(check(0, &swarm(&"a".repeat(64), json!({})), None).is_err());
    assert_eq!(check(0, &swarm("plant-a", json!({})), None), Ok(()));
}

/// Proves exactly one credential kind may be set, and username goes with password.
#[test]
fn credentials_exactly_one() {
    let key = json!({"name": "nats", "key": "k"});
    let two = swarm(
        "p",
        json!({"nats": {"credentials": {"token": key, "credsFile": key}}}),
    );
    assert!(check(0, &two, None).unwrap_err().contains("exactly one"));
    let half = swarm("p", json!({"nats": {"credentials": {"username": key}}}));
    assert!(check(0, &half, None).unwrap_err().contains("go together"));
    let good = swarm(
        "p",
        json!({"nats": {"credentials": {"username": key, "password": key}}}),
    );
    assert_eq!(check(0, &good, None), Ok(()));
}

/// Proves a subject's swarm, domain and problem class cannot change, and `fp` is no domain.
#[test]
fn subject_immutable_fields() {
    let old = subject("hvac-energy", json!({"problemClass": "energy-anomaly"}));
    assert_eq!(check(1, &old, None), Ok(()));
    for (patch, message) in [
        (
            json!({"swarmRef": {"name": "other"}}),
            "swarmRef is immutable",
        ),
        (json!({"domain": "power"}), "domain is immutable"),
        (
            json!({"problemClass": "refrigerant-loss"}),
            "problemClass is immutable",
        ),
    ] {
        let mut new = old.clone();
        merge(&mut new, json!({"spec": patch}));
        let err = check(1, &new, Some(&old)).unwrap_err();
        assert!(err.contains(message), "{err}");
    }
    let mut widened = old.clone();
    widened["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("problemClass");
    assert!(
        check(1, &widened, Some(&old))
            .unwrap_err()
            .contains("problemClass is immutable")
    );
    assert!(
        check(1, &subject("x", json!({"domain": "fp"})), None)
            .unwrap_err()
            .contains("reserved")
    );
}

/// Proves the cross-field rules of a subject: hashed needs a problem class, byStartTime needs a
/// start time, backoff shorter than maxDeliver.
#[test]
fn subject_cross_field_rules() {
    let hashed = subject("x", json!({"addressing": {"mode": "hashed"}}));
    assert!(
        check(1, &hashed, None)
            .unwrap_err()
            .contains("hashed addressing needs a problemClass")
    );
    let ok = subject(
        "x",
        json!({"problemClass": "a", "addressing": {"mode": "hashed"}}),
    );
    assert_eq!(check(1, &ok, None), Ok(()));
    let no_time = subject("x", json!({"consumer": {"deliverPolicy": "byStartTime"}}));
    assert!(
        check(1, &no_time, None)
            .unwrap_err()
            .contains("optStartTime")
    );
    let long = subject(
        "x",
        json!({"consumer": {"maxDeliver": 2, "backoff": ["1s", "2s"]}}),
    );
    assert!(check(1, &long, None).unwrap_err().contains("backoff"));
    let fine = subject(
        "x",
        json!({"consumer": {"maxDeliver": 3, "backoff": ["1s", "2s"]}}),
    );
    assert_eq!(check(1, &fine, None), Ok(()));
}

/// Proves every override that would take agent pods out of the restricted Pod Security profile
/// is refused at admission, naming its field, while harmless overrides pass.
#[test]
fn agent_security_overrides_stay_restricted() {
    let with = |sc: Value| swarm("plant", json!({"agent": {"securityContext": sc}}));
    let refused = [
        (json!({"privileged": true}), "securityContext.privileged"),
        (
            json!({"allowPrivilegeEscalation": true}),
            "securityContext.allowPrivilegeEscalation",
        ),
        (
            json!({"runAsNonRoot": false}),
            "securityContext.runAsNonRoot",
        ),
        (json!({"runAsUser": 0}), "securityContext.runAsUser"),
        (json!({"runAsGroup": 0}), "securityContext.runAsGroup"),
        (
            json!({"capabilities": {"add": ["NET_BIND_SERVICE", "SYS_ADMIN"]}}),
            "securityContext.capabilities.add",
        ),
        (
            json!({"seccompProfile": {"type": "Unconfined"}}),
            "securityContext.seccompProfile.type",
        ),
        (
            json!({"appArmorProfile": {"type": "Unconfined"}}),
            "securityContext.appArmorProfile.type",
        ),
        (
            json!({"procMount": "Unmasked"}),
            "securityContext.procMount",
        ),
        (
            json!({"seLinuxOptions": {"type": "spc_t"}}),
            "securityContext.seLinuxOptions",
        ),
        (
            json!({"windowsOptions": {"hostProcess": true}}),
            "securityContext.windowsOptions.hostProcess",
        ),
    ];
    for (sc, field) in refused {
        let err = check(0, &with(sc.clone()), None).expect_err(&sc.to_string());
        assert!(err.contains(field), "{sc}: {err}");
    }
    let admitted = json!({"privileged": false, "allowPrivilegeEscalation": false,
        "runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000,
        "readOnlyRootFilesystem": false, "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
        "seccompProfile": {"type": "Localhost", "localhostProfile": "agent.json"},
        "procMount": "Default", "seLinuxOptions": {"type": "container_t", "level": "s0:c1"}});
    assert_eq!(check(0, &with(admitted), None), Ok(()));
}
