//! Checks of a spec that the CRD schema cannot express (or that an object applied without the
//! schema could break). Pure: each failure names the field, and becomes `Ready=False,
//! reason InvalidSpec`.

use crate::error::Error;
use k8s_openapi::api::core::v1::Toleration;
use qis_crds::addressing;
use qis_crds::{
    AddressingMode, AgentTemplate, DeliverPolicy, QisSubjectSpec, QisSwarmSpec, SiteDiscovery,
    SiteSpec, StreamSpec,
};
use std::time::Duration;

/// Smallest `maxMsgSize` that admits a 512-byte body with every header agents send.
pub use crate::stream_config::MIN_MAX_MSG_SIZE;

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::InvalidSpec {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// A duration field's value, or `InvalidSpec` naming the field (out of range, not a duration).
pub fn duration(field: &str, d: qis_crds::Duration) -> Result<Duration, Error> {
    d.get().map_err(|e| invalid(field, e.to_string()))
}

/// A duration field that must be positive.
pub fn positive(field: &str, d: qis_crds::Duration) -> Result<Duration, Error> {
    match duration(field, d)? {
        d if d.is_zero() => Err(invalid(field, "must be positive")),
        d => Ok(d),
    }
}

/// Is `name` a DNS label (what object names built from it need)?
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Is `key` a valid label key (`[prefix/]name`)?
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    let prefix_ok =
        prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.split('.').all(is_dns_label));
    name_ok && prefix_ok
}

/// Checks a NATS server list: comma-separated URLs of a scheme NATS clients speak.
pub fn check_nats_urls(field: &str, urls: &str) -> Result<(), Error> {
    for url in urls.split(',').map(str::trim) {
        let Some((scheme, rest)) = url.split_once("://") else {
            let url = qis_contract::connect::redact_urls(url);
            return Err(invalid(
                field,
                format!("{url:?} is not a URL (nats://host:port)"),
            ));
        };
        let shown = qis_contract::connect::redact_urls(url);
        let url = &shown;
        if !["nats", "tls", "ws", "wss"].contains(&scheme) {
            return Err(invalid(
                field,
                format!("{url:?}: scheme must be nats, tls, ws or wss"),
            ));
        }
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(invalid(field, format!("{url:?} has no host")));
        }
    }
    Ok(())
}

/// Validates a swarm spec.
pub fn swarm(spec: &QisSwarmSpec) -> Result<(), Error> {
    swarm_nats(spec)?;
    stream(&spec.stream)?;
    sites(&spec.sites)?;
    site_discovery(spec.site_discovery.as_ref())?;
    agent(&spec.agent)?;
    synthesis("spec.synthesis", &spec.synthesis)
}

/// The subject prefix, NATS URL and JetStream domain.
fn swarm_nats(spec: &QisSwarmSpec) -> Result<(), Error> {
    if let Some(prefix) = &spec.subject_prefix {
        addressing::check_prefix(prefix)
            .map_err(|e| invalid("spec.subjectPrefix", e.to_string()))?;
    }
    if let Some(url) = spec.nats.as_ref().and_then(|n| n.url.as_deref()) {
        check_nats_urls("spec.nats.url", url)?;
    }
    if let Some(domain) = spec
        .nats
        .as_ref()
        .and_then(|n| n.jetstream_domain.as_deref())
    {
        addressing::check_token("jetstream domain", domain)
            .map_err(|e| invalid("spec.nats.jetstreamDomain", e.to_string()))?;
    }
    Ok(())
}

/// The stream's age, window, size and count limits.
fn stream(s: &StreamSpec) -> Result<(), Error> {
    let max_age = duration("spec.stream.maxAge", s.max_age)?;
    let dup = duration("spec.stream.duplicateWindow", s.duplicate_window)?;
    if !max_age.is_zero() && dup > max_age {
        return Err(invalid(
            "spec.stream.duplicateWindow",
            format!("{dup:?} is longer than maxAge {max_age:?}"),
        ));
    }
    if let Some(size) = s.max_msg_size
        && usize::try_from(size).unwrap_or(0) < MIN_MAX_MSG_SIZE
    {
        return Err(invalid(
            "spec.stream.maxMsgSize",
            format!(
                "{size} is below {MIN_MAX_MSG_SIZE}, the size of a 512-byte packet with its headers"
            ),
        ));
    }
    if s.max_bytes == 0 || s.max_bytes < -1 {
        return Err(invalid(
            "spec.stream.maxBytes",
            "must be -1 (no limit) or positive",
        ));
    }
    if !(1..=1_000_000).contains(&s.max_consumers) {
        return Err(invalid(
            "spec.stream.maxConsumers",
            format!("{} is outside [1, 1000000]", s.max_consumers),
        ));
    }
    if !(1..=5).contains(&s.replicas) {
        return Err(invalid(
            "spec.stream.replicas",
            format!("{} is outside [1, 5]", s.replicas),
        ));
    }
    Ok(())
}

/// The listed sites: DNS-label names, each once, with valid replicas and placement.
fn sites(sites: &[SiteSpec]) -> Result<(), Error> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, site) in sites.iter().enumerate() {
        if !is_dns_label(&site.name) {
            return Err(invalid(
                &format!("spec.sites[{i}].name"),
                format!("{:?} is not a DNS label", site.name),
            ));
        }
        if !seen.insert(site.name.as_str()) {
            return Err(invalid(
                &format!("spec.sites[{i}].name"),
                format!("site {:?} is listed twice", site.name),
            ));
        }
        site_replicas(&format!("spec.sites[{i}].replicas"), site.replicas)?;
        for (k, v) in &site.node_selector {
            if !is_label_key(k) || !is_label_value(v) {
                return Err(invalid(
                    &format!("spec.sites[{i}].nodeSelector"),
                    format!("{k:?}: {v:?} is not a label key and value"),
                ));
            }
        }
        tolerations(&format!("spec.sites[{i}].tolerations"), &site.tolerations)?;
    }
    Ok(())
}

/// Discovery of sites by a node label.
fn site_discovery(discovery: Option<&SiteDiscovery>) -> Result<(), Error> {
    if let Some(d) = discovery {
        if !is_label_key(&d.node_label) {
            return Err(invalid(
                "spec.siteDiscovery.nodeLabel",
                format!("{:?} is not a label key", d.node_label),
            ));
        }
        site_replicas("spec.siteDiscovery.replicas", d.replicas)?;
        tolerations("spec.siteDiscovery.tolerations", &d.tolerations)?;
    }
    Ok(())
}

/// The agent's image, pull policy and environment.
fn agent(agent: &AgentTemplate) -> Result<(), Error> {
    if agent
        .image
        .as_deref()
        .is_some_and(|i| i.trim().is_empty() || i.contains(char::is_whitespace))
    {
        return Err(invalid(
            "spec.agent.image",
            "must be an image reference without spaces",
        ));
    }
    if let Some(p) = agent.image_pull_policy.as_deref()
        && !["Always", "IfNotPresent", "Never"].contains(&p)
    {
        return Err(invalid(
            "spec.agent.imagePullPolicy",
            format!("{p:?} is not Always, IfNotPresent or Never"),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, e) in agent.env.iter().enumerate() {
        let field = format!("spec.agent.env[{i}].name");
        if crate::workload::env::SET_BY_OPERATOR.contains(&e.name.as_str()) {
            return Err(invalid(
                &field,
                format!("{} is set by the operator", e.name),
            ));
        }
        // What the API server takes as a name (Kubernetes 1.34+): printable ASCII but '='.
        if e.name.is_empty() || !e.name.bytes().all(|b| (32..127).contains(&b) && b != b'=') {
            return Err(invalid(
                &field,
                format!("{:?} is not printable ASCII without '='", e.name),
            ));
        }
        if !names.insert(e.name.as_str()) {
            return Err(invalid(&field, format!("{} is listed twice", e.name)));
        }
    }
    if let Some(sc) = &agent.security_context {
        security_context("spec.agent.securityContext", sc)?;
    }
    Ok(())
}

/// The one capability the restricted Pod Security profile lets a container add.
pub const ADDABLE_CAPABILITY: &str = "NET_BIND_SERVICE";

/// SELinux types the baseline Pod Security profile admits.
const SELINUX_TYPES: [&str; 4] = [
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// A container security override may not take the agent out of the restricted Pod Security
/// profile: no privileged, root or escalating container, no added capability but
/// [`ADDABLE_CAPABILITY`], no unconfined seccomp or AppArmor, no unmasked /proc, no host
/// process, no custom SELinux user or role. Group 0 is refused too: the agent needs no file of
/// the root group.
fn security_context(
    field: &str,
    sc: &k8s_openapi::api::core::v1::SecurityContext,
) -> Result<(), Error> {
    let refuse = |f: &str, why: &str| Err(invalid(&format!("{field}.{f}"), why));
    if sc.privileged == Some(true) {
        return refuse(
            "privileged",
            "must not be true: agents do not run privileged",
        );
    }
    if sc.allow_privilege_escalation == Some(true) {
        return refuse("allowPrivilegeEscalation", "must not be true");
    }
    if sc.run_as_non_root == Some(false) {
        return refuse(
            "runAsNonRoot",
            "must not be false: agents never run as root",
        );
    }
    if sc.run_as_user == Some(0) {
        return refuse("runAsUser", "must not be 0 (root)");
    }
    if sc.run_as_group == Some(0) {
        return refuse("runAsGroup", "must not be 0 (the root group)");
    }
    let added = sc.capabilities.as_ref().and_then(|c| c.add.as_deref());
    if let Some((i, cap)) = added
        .unwrap_or_default()
        .iter()
        .enumerate()
        .find(|(_, c)| c.as_str() != ADDABLE_CAPABILITY)
    {
        return Err(invalid(
            &format!("{field}.capabilities.add[{i}]"),
            format!("{cap:?} may not be added: only {ADDABLE_CAPABILITY} is (restricted profile)"),
        ));
    }
    confinement(field, sc)
}

/// The profiles and namespaces of a container security override.
fn confinement(field: &str, sc: &k8s_openapi::api::core::v1::SecurityContext) -> Result<(), Error> {
    let refuse = |f: &str, why: &str| Err(invalid(&format!("{field}.{f}"), why));
    if let Some(p) = &sc.seccomp_profile
        && !["RuntimeDefault", "Localhost"].contains(&p.type_.as_str())
    {
        return refuse("seccompProfile.type", "must be RuntimeDefault or Localhost");
    }
    if let Some(p) = &sc.app_armor_profile
        && p.type_ == "Unconfined"
    {
        return refuse("appArmorProfile.type", "must not be Unconfined");
    }
    if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        return refuse("procMount", "must be Default: /proc stays masked");
    }
    if let Some(se) = &sc.se_linux_options {
        if se.user.is_some() || se.role.is_some() {
            return refuse("seLinuxOptions", "user and role must not be set");
        }
        if se
            .type_
            .as_deref()
            .is_some_and(|t| !SELINUX_TYPES.contains(&t))
        {
            return refuse("seLinuxOptions.type", "must be a container_* type");
        }
    }
    if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        return refuse("windowsOptions.hostProcess", "must not be true");
    }
    Ok(())
}

fn site_replicas(field: &str, replicas: i32) -> Result<(), Error> {
    if (0..=10).contains(&replicas) {
        Ok(())
    } else {
        Err(invalid(field, format!("{replicas} is outside [0, 10]")))
    }
}

/// Is `v` a label value (empty, or at most 63 alphanumerics, `-`, `_`, `.` inside)?
pub fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()))
}

/// The API server's rules for a pod's tolerations (a Deployment breaking one is refused, and
/// the swarm would retry it forever).
fn tolerations(field: &str, list: &[Toleration]) -> Result<(), Error> {
    for (i, t) in list.iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        let key = t.key.as_deref().unwrap_or_default();
        let operator = t.operator.as_deref().unwrap_or("Equal");
        let value = t.value.as_deref().unwrap_or_default();
        let effect = t.effect.as_deref().unwrap_or_default();
        if !key.is_empty() && !is_label_key(key) {
            return Err(invalid(&at("key"), format!("{key:?} is not a label key")));
        }
        match operator {
            "Exists" if !value.is_empty() => {
                return Err(invalid(&at("value"), "must be empty with operator Exists"));
            }
            "Exists" => {}
            "Equal" if key.is_empty() => {
                return Err(invalid(&at("operator"), "must be Exists when key is empty"));
            }
            "Equal" if !is_label_value(value) => {
                return Err(invalid(
                    &at("value"),
                    format!("{value:?} is not a label value"),
                ));
            }
            "Equal" => {}
            other => {
                return Err(invalid(
                    &at("operator"),
                    format!("{other:?} is not Exists or Equal"),
                ));
            }
        }
        if !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            return Err(invalid(
                &at("effect"),
                format!("{effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"),
            ));
        }
        if t.toleration_seconds.is_some() && effect != "NoExecute" {
            return Err(invalid(
                &at("tolerationSeconds"),
                "only allowed with effect NoExecute",
            ));
        }
    }
    Ok(())
}

/// Synthesis settings resolve as the agent resolves them (`qis_contract::synthesis`), or the
/// spec is refused naming the field.
fn synthesis(field: &str, s: &qis_crds::SynthesisSettings) -> Result<(), Error> {
    qis_contract::synthesis::check(s)
        .map(drop)
        .map_err(|e| invalid(&format!("{field}.{}", e.field), e.reason))
}

/// Validates a subject spec.
pub fn subject(spec: &QisSubjectSpec) -> Result<(), Error> {
    addressing::check_domain(&spec.domain).map_err(|e| invalid("spec.domain", e.to_string()))?;
    if let Some(pc) = &spec.problem_class {
        addressing::check_token("problemClass", pc)
            .map_err(|e| invalid("spec.problemClass", e.to_string()))?;
    }
    if let Some(a) = &spec.addressing {
        if a.mode == AddressingMode::Hashed && spec.problem_class.is_none() {
            return Err(invalid(
                "spec.addressing.mode",
                "hashed addressing needs a problemClass",
            ));
        }
        if let Some(b) = &a.context_bucket {
            addressing::check_token("contextBucket", b)
                .map_err(|e| invalid("spec.addressing.contextBucket", e.to_string()))?;
        }
    }
    let c = &spec.consumer;
    match (c.deliver_policy, &c.opt_start_time) {
        (DeliverPolicy::ByStartTime, None) => {
            return Err(invalid(
                "spec.consumer.optStartTime",
                "required with deliverPolicy byStartTime",
            ));
        }
        (DeliverPolicy::ByStartTime, Some(t)) => {
            crate::consumer_config::parse_start_time(t)
                .map_err(|e| invalid("spec.consumer.optStartTime", e))?;
        }
        (_, Some(_)) => {
            return Err(invalid(
                "spec.consumer.optStartTime",
                "only allowed with deliverPolicy byStartTime",
            ));
        }
        _ => {}
    }
    positive("spec.consumer.ackWait", c.ack_wait)?;
    if c.max_deliver == 0 || c.max_deliver < -1 {
        return Err(invalid(
            "spec.consumer.maxDeliver",
            "must be -1 (no limit) or positive",
        ));
    }
    if c.max_deliver != -1 && c.backoff.len() as i64 >= c.max_deliver {
        return Err(invalid(
            "spec.consumer.backoff",
            "must have fewer entries than maxDeliver",
        ));
    }
    for (i, b) in c.backoff.iter().enumerate() {
        positive(&format!("spec.consumer.backoff[{i}]"), b.0)?;
    }
    if c.max_ack_pending < 1 {
        return Err(invalid("spec.consumer.maxAckPending", "must be positive"));
    }
    synthesis("spec.synthesis", &spec.synthesis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qis_crds::subject::BackoffDuration;
    use qis_crds::{SiteSpec, SwarmRef};

    fn field_of(r: Result<(), Error>) -> String {
        match r {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    /// Proves every security override that takes the agent out of the restricted profile is
    /// InvalidSpec naming its field (objects admitted before the CRD's CEL rules), and the
    /// harmless ones pass.
    #[test]
    fn privileged_root_or_escalating_agents_are_refused() {
        use k8s_openapi::api::core::v1::{
            AppArmorProfile, Capabilities, SELinuxOptions, SeccompProfile, SecurityContext,
            WindowsSecurityContextOptions,
        };
        let check = |sc: SecurityContext| {
            let mut s = QisSwarmSpec::default();
            s.agent.security_context = Some(sc);
            swarm(&s)
        };
        let caps = |add: &[&str]| Capabilities {
            add: Some(add.iter().map(|c| (*c).to_owned()).collect()),
            drop: None,
        };
        let refused = [
            (
                SecurityContext {
                    privileged: Some(true),
                    ..Default::default()
                },
                "privileged",
            ),
            (
                SecurityContext {
                    allow_privilege_escalation: Some(true),
                    ..Default::default()
                },
                "allowPrivilegeEscalation",
            ),
            (
                SecurityContext {
                    run_as_non_root: Some(false),
                    ..Default::default()
                },
                "runAsNonRoot",
            ),
            (
                SecurityContext {
                    run_as_user: Some(0),
                    ..Default::default()
                },
                "runAsUser",
            ),
            (
                SecurityContext {
                    run_as_group: Some(0),
                    ..Default::default()
                },
                "runAsGroup",
            ),
            (
                SecurityContext {
                    capabilities: Some(caps(&["NET_BIND_SERVICE", "SYS_ADMIN"])),
                    ..Default::default()
                },
                "capabilities.add[1]",
            ),
            (
                SecurityContext {
                    seccomp_profile: Some(SeccompProfile {
                        type_: "Unconfined".into(),
                        localhost_profile: None,
                    }),
                    ..Default::default()
                },
                "seccompProfile.type",
            ),
            (
                SecurityContext {
                    app_armor_profile: Some(AppArmorProfile {
                        type_: "Unconfined".into(),
                        localhost_profile: None,
                    }),
                    ..Default::default()
                },
                "appArmorProfile.type",
            ),
            (
                SecurityContext {
                    proc_mount: Some("Unmasked".into()),
                    ..Default::default()
                },
                "procMount",
            ),
            (
                SecurityContext {
                    se_linux_options: Some(SELinuxOptions {
                        type_: Some("spc_t".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "seLinuxOptions.type",
            ),
            (
                SecurityContext {
                    windows_options: Some(WindowsSecurityContextOptions {
                        host_process: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "windowsOptions.hostProcess",
            ),
        ];
        for (sc, field) in refused {
            assert_eq!(
                field_of(check(sc)),
                format!("spec.agent.securityContext.{field}")
            );
        }
        let harmless = SecurityContext {
            privileged: Some(false),
            run_as_user: Some(1000),
            run_as_group: Some(1000),
            read_only_root_filesystem: Some(false),
            capabilities: Some(caps(&["NET_BIND_SERVICE"])),
            proc_mount: Some("Default".into()),
            ..Default::default()
        };
        assert!(check(harmless).is_ok());
    }

    /// Proves a URL refused by the checks is shown without its user-info.
    #[test]
    fn refused_urls_are_shown_redacted() {
        for url in ["http://qis:hunter2@h:4222", "qis:hunter2@h:4222"] {
            let s = QisSwarmSpec {
                nats: Some(qis_crds::NatsConnection {
                    url: Some(url.into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let shown = swarm(&s).expect_err(url).to_string();
            assert!(shown.contains("***@h:4222"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    fn subj() -> QisSubjectSpec {
        QisSubjectSpec {
            swarm_ref: SwarmRef {
                name: "plant".into(),
            },
            domain: "hvac".into(),
            ..Default::default()
        }
    }

    #[test]
    fn agent_env_may_not_name_what_the_operator_sets_or_repeat() {
        let env = |names: &[&str]| QisSwarmSpec {
            agent: qis_crds::AgentTemplate {
                env: names
                    .iter()
                    .map(|n| k8s_openapi::api::core::v1::EnvVar {
                        name: (*n).into(),
                        value: Some("x".into()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            field_of(swarm(&env(&["TZ", "QIS_SITE"]))),
            "spec.agent.env[1].name"
        );
        assert_eq!(
            field_of(swarm(&env(&["TZ", "TZ"]))),
            "spec.agent.env[1].name"
        );
        assert!(swarm(&env(&["TZ", "QIS_OUTBOX_MAX"])).is_ok());
        // Found by operator/tests/fuzz_specs.rs: accepted, and the Deployment refused.
        assert_eq!(field_of(swarm(&env(&["TZ", ""]))), "spec.agent.env[1].name");
        assert_eq!(field_of(swarm(&env(&["A=B"]))), "spec.agent.env[0].name");
        assert_eq!(field_of(swarm(&env(&["é"]))), "spec.agent.env[0].name");
    }

    #[test]
    fn swarm_rules_name_the_field() {
        assert!(swarm(&QisSwarmSpec::default()).is_ok());
        let mut s = QisSwarmSpec {
            subject_prefix: Some("qis.>".into()),
            ..Default::default()
        };
        assert_eq!(field_of(swarm(&s)), "spec.subjectPrefix");
        s.subject_prefix = None;
        s.stream.duplicate_window = std::time::Duration::from_secs(7 * 24 * 3600).into();
        assert_eq!(field_of(swarm(&s)), "spec.stream.duplicateWindow");
        s.stream = Default::default();
        s.stream.max_msg_size = Some(512);
        assert_eq!(field_of(swarm(&s)), "spec.stream.maxMsgSize");
        s.stream = Default::default();
        s.sites = vec![
            SiteSpec {
                name: "a".into(),
                ..Default::default()
            },
            SiteSpec {
                name: "a".into(),
                ..Default::default()
            },
        ];
        assert_eq!(field_of(swarm(&s)), "spec.sites[1].name");
        s.sites = vec![SiteSpec {
            name: "under_score".into(),
            ..Default::default()
        }];
        assert_eq!(field_of(swarm(&s)), "spec.sites[0].name");
        s.sites.clear();
        s.nats = Some(qis_crds::NatsConnection {
            url: Some("http://x".into()),
            ..Default::default()
        });
        assert_eq!(field_of(swarm(&s)), "spec.nats.url");
        s.nats = Some(qis_crds::NatsConnection {
            url: Some("nats://a:4222, tls://b:4222".into()),
            ..Default::default()
        });
        assert!(swarm(&s).is_ok());
        s.stream.max_bytes = -2;
        assert_eq!(field_of(swarm(&s)), "spec.stream.maxBytes");
    }

    #[test]
    fn subject_rules_name_the_field() {
        assert!(subject(&subj()).is_ok());
        let mut s = subj();
        s.domain = "hvac.>".into();
        assert_eq!(field_of(subject(&s)), "spec.domain");
        s = subj();
        s.addressing = Some(qis_crds::Addressing {
            mode: AddressingMode::Hashed,
            context_bucket: None,
        });
        assert_eq!(field_of(subject(&s)), "spec.addressing.mode");
        s = subj();
        s.consumer.deliver_policy = DeliverPolicy::ByStartTime;
        s.consumer.opt_start_time = Some("yesterday".into());
        assert_eq!(field_of(subject(&s)), "spec.consumer.optStartTime");
        s.consumer.opt_start_time = Some("2026-01-01T00:00:00Z".into());
        assert!(subject(&s).is_ok());
        s = subj();
        s.consumer.max_deliver = 2;
        s.consumer.backoff = vec![BackoffDuration(std::time::Duration::from_secs(1).into()); 2];
        assert_eq!(field_of(subject(&s)), "spec.consumer.backoff");
        s = subj();
        s.synthesis.threshold = Some(1.5);
        assert_eq!(field_of(subject(&s)), "spec.synthesis.threshold");
        s = subj();
        s.synthesis.max_voters = Some(0);
        assert_eq!(field_of(subject(&s)), "spec.synthesis.maxVoters");
        s = subj();
        s.synthesis.max_packets = Some(qis_crds::common::MAX_PACKETS + 1);
        assert_eq!(field_of(subject(&s)), "spec.synthesis.maxPackets");
        s.synthesis.max_packets = Some(qis_crds::common::MAX_PACKETS);
        assert!(subject(&s).is_ok());
    }

    #[test]
    fn what_the_api_server_refuses_in_a_pod_is_refused_naming_the_field() {
        let tol = |key: Option<&str>, op: Option<&str>, value: Option<&str>, secs: Option<i64>| {
            QisSwarmSpec {
                sites: vec![SiteSpec {
                    name: "a".into(),
                    tolerations: vec![Toleration {
                        key: key.map(Into::into),
                        operator: op.map(Into::into),
                        value: value.map(Into::into),
                        effect: None,
                        toleration_seconds: secs,
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }
        };
        // Found by operator/tests/fuzz_specs.rs: each was accepted, and its Deployment refused.
        let at = "spec.sites[0].tolerations[0]";
        assert_eq!(
            field_of(swarm(&tol(None, None, None, None))),
            format!("{at}.operator")
        );
        assert_eq!(
            field_of(swarm(&tol(None, Some("site-1"), None, None))),
            format!("{at}.operator")
        );
        assert_eq!(
            field_of(swarm(&tol(Some("ca.crt"), None, Some("a\0b"), None))),
            format!("{at}.value")
        );
        assert_eq!(
            field_of(swarm(&tol(Some("UPPER/x"), None, None, None))),
            format!("{at}.key")
        );
        assert_eq!(
            field_of(swarm(&tol(None, Some("Exists"), None, Some(5)))),
            format!("{at}.tolerationSeconds")
        );
        assert!(swarm(&tol(None, Some("Exists"), None, None)).is_ok());
        assert!(swarm(&tol(Some("qis.dev/edge"), None, Some("true"), None)).is_ok());
        let mut s = QisSwarmSpec::default();
        s.stream.max_consumers = -1;
        assert_eq!(field_of(swarm(&s)), "spec.stream.maxConsumers");
        s = QisSwarmSpec::default();
        s.stream.replicas = 7;
        assert_eq!(field_of(swarm(&s)), "spec.stream.replicas");
        s = QisSwarmSpec::default();
        s.sites = vec![SiteSpec {
            name: "a".into(),
            node_selector: [(
                "qis.dev/site".to_owned(),
                "kubernetes.io/hostname".to_owned(),
            )]
            .into(),
            ..Default::default()
        }];
        assert_eq!(field_of(swarm(&s)), "spec.sites[0].nodeSelector");
        s.sites = vec![SiteSpec {
            name: "a".into(),
            replicas: -1,
            ..Default::default()
        }];
        assert_eq!(field_of(swarm(&s)), "spec.sites[0].replicas");
        // Found at 10,000 objects (seed 1103980096987331742): stored before the schema's enum.
        s = QisSwarmSpec::default();
        s.agent.image_pull_policy = Some("other".into());
        assert_eq!(field_of(swarm(&s)), "spec.agent.imagePullPolicy");
    }

    #[test]
    fn label_keys() {
        assert!(is_label_key("qis.dev/site"));
        assert!(is_label_key("site"));
        assert!(!is_label_key("qis.dev/"));
        assert!(!is_label_key("-bad"));
        assert!(!is_label_key("UPPER.dev/x"));
    }
}
