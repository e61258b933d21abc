//! The JetStream stream of a swarm (pure), and how a live stream differs from it. The operator
//! builds it from the swarm's spec; a standalone agent with no operator builds the same stream
//! from the spec's defaults ([`standalone`]).

use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
use qis_crds::addressing;
use qis_crds::constants::DEFAULT_MAX_MSG_SIZE;
use qis_crds::{QisSwarmSpec, StorageType as SpecStorage, StreamSpec};
use std::collections::HashMap;

/// Smallest `maxMsgSize` a swarm may set: a 512-byte body with every header agents send.
pub const MIN_MAX_MSG_SIZE: usize = DEFAULT_MAX_MSG_SIZE;

/// Stream metadata key naming the owning swarm (`<namespace>/<name>`).
pub const META_OWNER: &str = "qis.dev/swarm";
/// Stream metadata key naming the manager.
pub const META_MANAGED_BY: &str = "qis.dev/managed-by";

/// The prefix in force for a swarm.
pub fn prefix(namespace: &str, name: &str, spec: &QisSwarmSpec) -> String {
    spec.subject_prefix
        .clone()
        .unwrap_or_else(|| addressing::default_prefix(namespace, name))
}

/// The stream config of a swarm. Call it on a spec `validate::swarm` accepted: that refuses every
/// invalid duration (with its field named) before anything is built.
pub fn desired(namespace: &str, name: &str, spec: &QisSwarmSpec) -> Config {
    let mut config = build(
        &addressing::stream_name(namespace, name),
        &prefix(namespace, name, spec),
        &spec.stream,
    );
    config.description = Some(format!("QIS swarm {namespace}/{name}"));
    config
        .metadata
        .insert(META_OWNER.to_owned(), format!("{namespace}/{name}"));
    config
}

/// The stream a standalone agent makes when it is missing: a swarm's default stream under the
/// agent's stream name and prefix, owned by no swarm.
pub fn standalone(stream: &str, prefix: &str) -> Config {
    let mut config = build(stream, prefix, &StreamSpec::default());
    config.description = Some(format!("QIS standalone agents' stream {stream}"));
    config
}

/// The settings of `spec` for the stream `name` over `<prefix>.>`.
fn build(name: &str, prefix: &str, s: &StreamSpec) -> Config {
    Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        storage: match s.storage {
            SpecStorage::File => StorageType::File,
            SpecStorage::Memory => StorageType::Memory,
        },
        num_replicas: usize::try_from(s.replicas.max(1)).unwrap_or(1),
        max_age: s.max_age.get().unwrap_or_default(),
        max_bytes: s.max_bytes,
        max_messages: -1,
        max_messages_per_subject: -1,
        max_consumers: s.max_consumers,
        max_message_size: s
            .max_msg_size
            .unwrap_or(i32::try_from(DEFAULT_MAX_MSG_SIZE).unwrap_or(i32::MAX)),
        duplicate_window: s.duplicate_window.get().unwrap_or_default(),
        discard: match s.discard {
            qis_crds::DiscardPolicy::Old => DiscardPolicy::Old,
            qis_crds::DiscardPolicy::New => DiscardPolicy::New,
        },
        metadata: HashMap::from([(
            META_MANAGED_BY.to_owned(),
            qis_crds::constants::MANAGED_BY.to_owned(),
        )]),
        ..Default::default()
    }
}

/// Names (as in the CRD) of the fields where `live` differs from `desired`. The server adds
/// metadata of its own (`_nats.*`); only our keys are compared.
pub fn drift(live: &Config, desired: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |differs: bool, field: &'static str| {
        if differs {
            out.push(field);
        }
    };
    check(live.subjects != desired.subjects, "subjects");
    check(live.storage != desired.storage, "storage");
    check(live.num_replicas != desired.num_replicas, "replicas");
    check(live.max_age != desired.max_age, "maxAge");
    check(live.max_bytes != desired.max_bytes, "maxBytes");
    check(
        live.max_message_size != desired.max_message_size,
        "maxMsgSize",
    );
    check(
        live.duplicate_window != desired.duplicate_window,
        "duplicateWindow",
    );
    check(live.discard != desired.discard, "discard");
    check(live.max_consumers != desired.max_consumers, "maxConsumers");
    check(live.max_messages != desired.max_messages, "maxMsgs");
    check(
        live.max_messages_per_subject != desired.max_messages_per_subject,
        "maxMsgsPerSubject",
    );
    check(live.retention != desired.retention, "retention");
    check(
        live.sealed || live.deny_delete || live.deny_purge,
        "sealed/denyDelete/denyPurge",
    );
    check(live.description != desired.description, "description");
    let ours_differ = desired
        .metadata
        .iter()
        .any(|(k, v)| live.metadata.get(k) != Some(v));
    check(ours_differ, "metadata");
    out
}

/// Fields that differ and that the server cannot change on an existing stream.
pub fn immutable_changes(live: &Config, desired: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if live.storage != desired.storage {
        out.push("storage");
    }
    if live.retention != desired.retention {
        out.push("retention");
    }
    out
}

/// Which swarm owns a stream, by its metadata.
pub fn owner(config: &Config) -> Option<&str> {
    config.metadata.get(META_OWNER).map(String::as_str)
}

/// Can a subject match both filters? Token-wise with NATS wildcards (`*` one token, `>` the rest).
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let (ta, tb): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    let mut i = 0;
    loop {
        match (ta.get(i), tb.get(i)) {
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => return true,
            (Some(x), Some(y)) => {
                if x != y && *x != "*" && *y != "*" {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_are_edge_safe() {
        let c = desired("factory", "plant", &QisSwarmSpec::default());
        assert_eq!(c.name, "qis_factory_plant");
        assert_eq!(c.subjects, ["qis.factory.plant.>"]);
        assert_eq!(c.storage, StorageType::File);
        assert_eq!(c.num_replicas, 1);
        assert_eq!(c.max_age, Duration::from_secs(86400));
        assert_eq!(c.max_message_size, 607);
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(owner(&c), Some("factory/plant"));
        assert!(drift(&c, &c).is_empty());
    }

    #[test]
    fn drift_names_fields_and_ignores_server_metadata() {
        let want = desired(
            "ns",
            "s",
            &QisSwarmSpec {
                subject_prefix: Some("qis.iot".into()),
                ..Default::default()
            },
        );
        assert_eq!(want.subjects, ["qis.iot.>"]);
        let mut live = want.clone();
        live.metadata.insert("_nats.ver".into(), "2.15.1".into());
        assert!(drift(&live, &want).is_empty());
        live.max_age = Duration::from_secs(60);
        live.storage = StorageType::Memory;
        assert_eq!(drift(&live, &want), ["storage", "maxAge"]);
        assert_eq!(immutable_changes(&live, &want), ["storage"]);
    }

    #[test]
    fn a_standalone_stream_is_the_default_swarm_stream_under_its_own_name() {
        let swarm = desired("factory", "plant", &QisSwarmSpec::default());
        let alone = standalone("qis_alone", "qis.alone");
        assert_eq!(alone.name, "qis_alone");
        assert_eq!(alone.subjects, ["qis.alone.>"]);
        assert_eq!(owner(&alone), None, "no swarm owns it");
        // Every setting but the names is the swarm default's (the consumer limit included).
        assert_eq!(alone.max_consumers, swarm.max_consumers);
        let strip = |mut c: Config| {
            c.name.clear();
            c.subjects.clear();
            c.description = None;
            c.metadata.clear();
            c
        };
        assert_eq!(strip(alone), strip(swarm));
    }

    #[test]
    fn overlap() {
        assert!(filters_overlap("qis.iot.>", "qis.iot.hvac.>"));
        assert!(filters_overlap("qis.*.hvac", "qis.iot.>"));
        assert!(filters_overlap("qis.iot.>", "qis.iot.>"));
        assert!(!filters_overlap("qis.iot.>", "qis.iot2.>"));
        assert!(!filters_overlap("qis.iot", "qis.iot.>"));
        assert!(!filters_overlap("a.b.c", "a.b"));
    }
}
