//! The durable pull consumers a subject asks for (pure): one per site of its swarm, and how a
//! live consumer differs from it. The operator builds them from the subject's spec; a standalone
//! agent builds its own from the spec's defaults ([`standalone`]).
//!
//! Replicas of one site share the site's consumer. The consumer uses the `pinned_client`
//! priority policy: the server delivers to one pinned agent of the site and keeps the others on
//! standby, moving the pin when the active agent stops pulling for [`PIN_TTL`]. So a site's
//! replicas never split its twins between them, and a standby takes over when the active one
//! dies, with no coordination of our own.

use async_nats::jetstream::consumer::pull::Config;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PriorityPolicy};
use qis_crds::addressing;
use qis_crds::{ConsumerSpec, DeliverPolicy as SpecDeliver, QisSubjectSpec};
use std::collections::HashMap;
use std::time::Duration;

/// Priority group the agents of a site pull in.
pub const PRIORITY_GROUP: &str = "qis-agents";
/// How long the server keeps a silent agent pinned before a standby takes over.
pub const PIN_TTL: Duration = Duration::from_secs(30);
/// Consumer metadata key naming the subject (`<namespace>/<name>`).
pub const META_SUBJECT: &str = "qis.dev/subject";
/// Consumer metadata key naming the site.
pub const META_SITE: &str = "qis.dev/site";

/// The NATS address of a subject (the consumers' filter).
pub fn address(prefix: &str, spec: &QisSubjectSpec) -> String {
    spec.address(prefix)
}

/// Parses an RFC 3339 start time.
pub fn parse_start_time(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

/// The consumer of `subject` (in `namespace`) at `site`. Call it on a spec `validate::subject`
/// accepted: that refuses every invalid duration (with its field named) before anything is built.
pub fn desired(
    namespace: &str,
    subject: &str,
    site: &str,
    address: &str,
    spec: &QisSubjectSpec,
) -> Config {
    let mut config = build(subject, site, address, &spec.consumer);
    config.description = Some(format!("QIS subject {namespace}/{subject}, site {site}"));
    config.metadata = HashMap::from([
        (META_SUBJECT.to_owned(), format!("{namespace}/{subject}")),
        (META_SITE.to_owned(), site.to_owned()),
    ]);
    config
}

/// The consumer a standalone agent makes for `subject` at `site` when it is missing: the
/// defaults a subject's spec would give.
pub fn standalone(subject: &str, site: &str, address: &str) -> Config {
    build(subject, site, address, &ConsumerSpec::default())
}

/// The settings of `c` for the durable `<subject>_<site>` filtered on `address`.
fn build(subject: &str, site: &str, address: &str, c: &ConsumerSpec) -> Config {
    let name = addressing::consumer_name(subject, site);
    Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        filter_subject: address.to_owned(),
        deliver_policy: match c.deliver_policy {
            SpecDeliver::All => DeliverPolicy::All,
            SpecDeliver::Last => DeliverPolicy::Last,
            SpecDeliver::New => DeliverPolicy::New,
            SpecDeliver::LastPerSubject => DeliverPolicy::LastPerSubject,
            SpecDeliver::ByStartTime => match c.opt_start_time.as_deref().map(parse_start_time) {
                Some(Ok(start_time)) => DeliverPolicy::ByStartTime { start_time },
                // Validation refuses this before we get here.
                _ => DeliverPolicy::All,
            },
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: c.ack_wait.get().unwrap_or_default(),
        max_deliver: c.max_deliver,
        max_ack_pending: c.max_ack_pending,
        backoff: c
            .backoff
            .iter()
            .map(|b| b.0.get().unwrap_or_default())
            .collect(),
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec![PRIORITY_GROUP.to_owned()],
        priority_timeout: PIN_TTL,
        ..Default::default()
    }
}

/// Names (as in the CRD) of the fields where `live` differs from `desired`.
pub fn drift(live: &Config, desired: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |differs: bool, field: &'static str| {
        if differs {
            out.push(field);
        }
    };
    check(
        live.filter_subject != desired.filter_subject,
        "filterSubject",
    );
    check(
        live.deliver_policy != desired.deliver_policy,
        "deliverPolicy",
    );
    check(live.ack_policy != desired.ack_policy, "ackPolicy");
    check(live.ack_wait != desired.ack_wait, "ackWait");
    check(live.max_deliver != desired.max_deliver, "maxDeliver");
    check(
        live.max_ack_pending != desired.max_ack_pending,
        "maxAckPending",
    );
    check(live.backoff != desired.backoff, "backoff");
    check(
        live.priority_policy != desired.priority_policy,
        "priorityPolicy",
    );
    check(
        live.priority_groups != desired.priority_groups,
        "priorityGroups",
    );
    check(live.description != desired.description, "description");
    check(
        desired
            .metadata
            .iter()
            .any(|(k, v)| live.metadata.get(k) != Some(v)),
        "metadata",
    );
    out
}

/// Fields that differ and that the server cannot change on an existing consumer.
pub fn immutable_changes(live: &Config, desired: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if live.deliver_policy != desired.deliver_policy {
        out.push("deliverPolicy");
    }
    if live.ack_policy != desired.ack_policy {
        out.push("ackPolicy");
    }
    if live.priority_policy != desired.priority_policy {
        out.push("priorityPolicy");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use qis_crds::{Addressing, AddressingMode, SwarmRef};

    fn spec(problem_class: Option<&str>) -> QisSubjectSpec {
        QisSubjectSpec {
            swarm_ref: SwarmRef {
                name: "plant".into(),
            },
            domain: "hvac".into(),
            problem_class: problem_class.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            address("qis.iot", &spec(Some("energy-anomaly"))),
            "qis.iot.hvac.energy-anomaly"
        );
        assert_eq!(address("qis.iot", &spec(None)), "qis.iot.hvac.>");
        let mut hashed = spec(Some("energy-anomaly"));
        hashed.addressing = Some(Addressing {
            mode: AddressingMode::Hashed,
            context_bucket: None,
        });
        assert_eq!(
            address("qis.iot", &hashed),
            "qis.iot.fp.a005a04a0d7ca3c927a22c3fb7d2aa2a"
        );
    }

    #[test]
    fn consumer_defaults() {
        let c = desired(
            "factory",
            "hvac-energy",
            "site-a",
            "qis.iot.hvac.energy-anomaly",
            &spec(Some("energy-anomaly")),
        );
        assert_eq!(c.durable_name.as_deref(), Some("hvac-energy_site-a"));
        assert_eq!(
            c.deliver_policy,
            DeliverPolicy::All,
            "late joiners must see earlier twins"
        );
        assert_eq!(c.ack_policy, AckPolicy::Explicit);
        assert_eq!(c.ack_wait, Duration::from_secs(30));
        assert_eq!(c.max_deliver, 10);
        assert_eq!(c.priority_policy, PriorityPolicy::PinnedClient);
        assert!(drift(&c, &c).is_empty());
        let mut live = c.clone();
        live.max_ack_pending = 5;
        live.deliver_policy = DeliverPolicy::New;
        assert_eq!(drift(&live, &c), ["deliverPolicy", "maxAckPending"]);
        assert_eq!(immutable_changes(&live, &c), ["deliverPolicy"]);
    }

    #[test]
    fn a_standalone_consumer_has_the_subject_defaults() {
        let address = "qis.iot.hvac.energy-anomaly";
        let managed = desired("factory", "hvac-energy", "site-a", address, &spec(None));
        let alone = standalone("hvac-energy", "site-a", address);
        assert_eq!(alone.durable_name, managed.durable_name);
        assert_eq!(alone.filter_subject, address);
        assert!(alone.metadata.is_empty(), "no subject object owns it");
        assert!(
            drift(&alone, &managed)
                .iter()
                .all(|f| *f == "description" || *f == "metadata")
        );
    }
}
