//! The Kubernetes objects a swarm asks for (pure): one agent Deployment per site, and the
//! agents' ServiceAccount, Role and RoleBinding.
//!
//! The agent pod runs under the restricted Pod Security profile and learns everything it needs
//! from its environment (see [`env`]): who it is (swarm, site, pod via the downward API), where
//! NATS is, and where its credentials are mounted (never inlined).

use crate::sites::Site;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretProjection,
    SecretVolumeSource, SecurityContext, ServiceAccount, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use qis_crds::constants::{LABEL_SITE, LABEL_SWARM, MANAGED_BY};
use qis_crds::{NatsCredentials, QisSwarm, SecretKeyRef};
use std::collections::BTreeMap;

/// Names of the environment variables the agent reads (the contract's).
pub use qis_contract::env;
use qis_contract::paths::credentials as file;
pub use qis_contract::paths::{CREDENTIALS_DIR, DATA_DIR, TLS_DIR};
/// Port of the agent's HTTP server (health, metrics, local consensus).
pub const AGENT_PORT: i32 = qis_contract::paths::AGENT_PORT as i32;
/// UID/GID the agent runs as (distroless `nonroot`).
pub const AGENT_UID: i64 = 65532;

/// What the operator knows beyond the swarm itself.
#[derive(Clone)]
pub struct Defaults {
    /// Agent image when the swarm names none.
    pub agent_image: String,
    /// NATS URL when the swarm names none.
    pub nats_url: String,
}

impl std::fmt::Debug for Defaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Defaults")
            .field("agent_image", &self.agent_image)
            .field(
                "nats_url",
                &qis_contract::connect::redact_urls(&self.nats_url),
            )
            .finish()
    }
}

/// Labels on every object made for a swarm (and `site` when given).
pub fn labels(swarm: &str, site: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "qis-agent".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), swarm.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (LABEL_SWARM.to_owned(), swarm.to_owned()),
    ]);
    if let Some(site) = site {
        l.insert(LABEL_SITE.to_owned(), site.to_owned());
    }
    l
}

/// Name of the agents' ServiceAccount, Role and RoleBinding.
pub fn agent_account_name(swarm: &str) -> String {
    format!("{swarm}-agent")
}

/// Name of a site's Deployment.
pub fn deployment_name(swarm: &str, site: &str) -> String {
    format!("{swarm}-agent-{site}")
}

/// The swarm as its children's controlling owner. `blockOwnerDeletion`: a foreground deletion
/// of the swarm waits until the garbage collector has taken them (kube's reference leaves it
/// unset, and the swarm went first while its Deployments were still terminating).
fn owner(swarm: &QisSwarm) -> Option<OwnerReference> {
    use kube::Resource;
    swarm.controller_owner_ref(&()).map(|o| OwnerReference {
        block_owner_deletion: Some(true),
        ..o
    })
}

pub(crate) fn meta(swarm: &QisSwarm, name: String, site: Option<&str>) -> ObjectMeta {
    use kube::ResourceExt;
    ObjectMeta {
        name: Some(name),
        namespace: swarm.namespace(),
        labels: Some(labels(&swarm.name_any(), site)),
        owner_references: owner(swarm).map(|o| vec![o]),
        ..Default::default()
    }
}

fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The restricted-profile container security context, with the swarm's overrides on top.
pub fn container_security(overrides: Option<&SecurityContext>) -> SecurityContext {
    let mut sc = SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(AGENT_UID),
        run_as_group: Some(AGENT_UID),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..Default::default()
    };
    if let Some(o) = overrides {
        macro_rules! take {
            ($($f:ident),*) => { $( if o.$f.is_some() { sc.$f = o.$f.clone(); } )* };
        }
        take!(
            allow_privilege_escalation,
            read_only_root_filesystem,
            run_as_non_root,
            run_as_user,
            run_as_group,
            seccomp_profile,
            privileged,
            proc_mount,
            se_linux_options,
            app_armor_profile,
            windows_options
        );
        // Capabilities merge: every one stays dropped, an override only adds (what the
        // validation admits: NET_BIND_SERVICE).
        let added = o.capabilities.as_ref().and_then(|c| c.add.clone());
        if let Some(caps) = sc.capabilities.as_mut() {
            caps.add = added.filter(|a| !a.is_empty());
        }
    }
    sc
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("10m".to_owned())),
            ("memory".to_owned(), Quantity("16Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("64Mi".to_owned()),
        )])),
        ..Default::default()
    }
}

/// Projected volume of the swarm's NATS credentials, one file per set key.
fn credentials_volume(c: &NatsCredentials) -> Option<Volume> {
    let files: [(&Option<SecretKeyRef>, &str); 5] = [
        (&c.creds_file, file::CREDS),
        (&c.nkey_seed, file::NKEY),
        (&c.username, file::USERNAME),
        (&c.password, file::PASSWORD),
        (&c.token, file::TOKEN),
    ];
    let sources: Vec<VolumeProjection> = files
        .iter()
        .filter_map(|(r, file)| r.as_ref().map(|r| (r, *file)))
        .map(|(r, file)| VolumeProjection {
            secret: Some(SecretProjection {
                name: r.name.clone(),
                items: Some(vec![KeyToPath {
                    key: r.key.clone(),
                    path: file.to_owned(),
                    mode: Some(0o440),
                }]),
                optional: Some(false),
            }),
            ..Default::default()
        })
        .collect();
    (!sources.is_empty()).then(|| Volume {
        name: "nats-credentials".to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: Some(0o440),
        }),
        ..Default::default()
    })
}

/// The agent Deployment of one site.
pub fn deployment(
    swarm: &QisSwarm,
    site: &Site,
    prefix: &str,
    stream: &str,
    defaults: &Defaults,
) -> Deployment {
    use kube::ResourceExt;
    let name = swarm.name_any();
    let nats = swarm.spec.nats.clone().unwrap_or_default();
    let mut env = agent_env(swarm, site, prefix, stream, &nats, defaults);
    let files = Files::of(swarm, &site.name, &nats);
    env.extend(files.env);
    env.extend(swarm.spec.agent.env.iter().cloned());
    let container = agent_container(swarm, env, files.mounts, defaults);
    let selector = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "qis-agent".to_owned()),
        (LABEL_SWARM.to_owned(), name.clone()),
        (LABEL_SITE.to_owned(), site.name.clone()),
    ]);
    Deployment {
        metadata: meta(swarm, deployment_name(&name, &site.name), Some(&site.name)),
        spec: Some(DeploymentSpec {
            replicas: Some(site.replicas),
            strategy: crate::persistence::strategy(swarm),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name, Some(&site.name))),
                    ..Default::default()
                }),
                spec: Some(pod_spec(swarm, site, container, files.volumes)),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Who the agent is and where NATS is: the environment every agent gets.
fn agent_env(
    swarm: &QisSwarm,
    site: &Site,
    prefix: &str,
    stream: &str,
    nats: &qis_crds::NatsConnection,
    defaults: &Defaults,
) -> Vec<EnvVar> {
    use kube::ResourceExt;
    let mut env = vec![
        env_field(env::NAMESPACE, "metadata.namespace"),
        env_field(env::POD_NAME, "metadata.name"),
        env_value(env::SWARM, swarm.name_any()),
        env_value(env::SITE, &site.name),
        env_value(env::STREAM, stream),
        env_value(env::SUBJECT_PREFIX, prefix),
        env_value(
            env::NATS_URL,
            nats.url
                .clone()
                .unwrap_or_else(|| defaults.nats_url.clone()),
        ),
        env_value(env::LISTEN, format!("0.0.0.0:{AGENT_PORT}")),
        env_value(env::DATA_DIR, DATA_DIR),
        env_value(
            env::OUTBOX_MAX_BYTES,
            crate::persistence::outbox_max_bytes(swarm).to_string(),
        ),
    ];
    if let Some(d) = &nats.jetstream_domain {
        env.push(env_value(env::JETSTREAM_DOMAIN, d));
    }
    env
}

/// The agent's files: its data volume, and the NATS credentials and TLS Secrets when the
/// swarm has them, each with its mount and the variable that tells the agent where it is.
struct Files {
    env: Vec<EnvVar>,
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
}

impl Files {
    fn of(swarm: &QisSwarm, site: &str, nats: &qis_crds::NatsConnection) -> Files {
        let mut files = Files {
            env: vec![],
            volumes: vec![crate::persistence::data_volume(swarm, site)],
            mounts: vec![VolumeMount {
                name: crate::persistence::VOLUME.to_owned(),
                mount_path: DATA_DIR.to_owned(),
                ..Default::default()
            }],
        };
        if let Some(v) = nats.credentials.as_ref().and_then(credentials_volume) {
            files.add(env::NATS_CREDENTIALS_DIR, CREDENTIALS_DIR, v);
        }
        if let Some(tls) = &nats.tls {
            let volume = Volume {
                name: "nats-tls".to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(tls.secret_name.clone()),
                    default_mode: Some(0o440),
                    ..Default::default()
                }),
                ..Default::default()
            };
            files.add(env::NATS_TLS_DIR, TLS_DIR, volume);
        }
        files
    }

    /// Mounts `volume` read-only at `dir`, named to the agent by `var`.
    fn add(&mut self, var: &str, dir: &str, volume: Volume) {
        self.env.push(env_value(var, dir));
        self.mounts.push(VolumeMount {
            name: volume.name.clone(),
            mount_path: dir.to_owned(),
            read_only: Some(true),
            ..Default::default()
        });
        self.volumes.push(volume);
    }
}

/// The agent container: image, environment, port, resources, security and probes.
fn agent_container(
    swarm: &QisSwarm,
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
    defaults: &Defaults,
) -> Container {
    let agent = &swarm.spec.agent;
    Container {
        name: "agent".to_owned(),
        image: Some(
            agent
                .image
                .clone()
                .unwrap_or_else(|| defaults.agent_image.clone()),
        ),
        image_pull_policy: agent.image_pull_policy.clone(),
        args: Some(vec!["run".to_owned()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: AGENT_PORT,
            ..Default::default()
        }]),
        resources: Some(agent.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(container_security(agent.security_context.as_ref())),
        volume_mounts: Some(mounts),
        liveness_probe: Some(http_probe("/healthz")),
        readiness_probe: Some(http_probe("/readyz")),
        ..Default::default()
    }
}

/// A probe of the agent's HTTP `path` every 10 seconds.
fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    }
}

/// The agent pod of `site`: placed where the site says, under the restricted profile.
fn pod_spec(swarm: &QisSwarm, site: &Site, container: Container, volumes: Vec<Volume>) -> PodSpec {
    use kube::ResourceExt;
    let pull_secrets = &swarm.spec.agent.image_pull_secrets;
    PodSpec {
        service_account_name: Some(agent_account_name(&swarm.name_any())),
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: (!site.node_selector.is_empty()).then(|| site.node_selector.clone()),
        tolerations: (!site.tolerations.is_empty()).then(|| site.tolerations.clone()),
        affinity: site.affinity.clone(),
        image_pull_secrets: (!pull_secrets.is_empty()).then(|| pull_secrets.clone()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(AGENT_UID),
            run_as_group: Some(AGENT_UID),
            fs_group: Some(AGENT_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        termination_grace_period_seconds: Some(30),
        ..Default::default()
    }
}

/// The agents' ServiceAccount.
pub fn service_account(swarm: &QisSwarm) -> ServiceAccount {
    use kube::ResourceExt;
    ServiceAccount {
        metadata: meta(swarm, agent_account_name(&swarm.name_any()), None),
        ..Default::default()
    }
}

/// What an agent may do: read its swarm and subjects, write subject status (the consensus),
/// hold Leases (one reporter per swarm) and record Events. Nothing else.
pub fn agent_rules() -> Vec<PolicyRule> {
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    };
    vec![
        rule(
            "qis.dev",
            &["qisswarms", "qissubjects"],
            &["get", "list", "watch"],
        ),
        rule("qis.dev", &["qissubjects/status"], &["get", "patch"]),
        rule(
            "coordination.k8s.io",
            &["leases"],
            &["get", "list", "watch", "create", "update"],
        ),
        // The reporter's ConsensusAlert / ConsensusCleared Events (patched when repeated).
        rule("events.k8s.io", &["events"], &["create", "patch"]),
    ]
}

/// The agents' Role.
pub fn role(swarm: &QisSwarm) -> Role {
    use kube::ResourceExt;
    Role {
        metadata: meta(swarm, agent_account_name(&swarm.name_any()), None),
        rules: Some(agent_rules()),
    }
}

/// Binds the agents' Role to their ServiceAccount.
pub fn role_binding(swarm: &QisSwarm) -> RoleBinding {
    use kube::ResourceExt;
    let name = agent_account_name(&swarm.name_any());
    RoleBinding {
        metadata: meta(swarm, name.clone(), None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name,
            namespace: swarm.namespace(),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qis_crds::{NatsConnection, NatsTls, QisSwarmSpec};

    fn swarm(spec: QisSwarmSpec) -> QisSwarm {
        let mut s = QisSwarm::new("plant", spec);
        s.metadata.namespace = Some("factory".into());
        s.metadata.uid = Some("uid-1".into());
        s
    }

    fn defaults() -> Defaults {
        Defaults {
            agent_image: "ghcr.io/qis/agent:0.1.0".into(),
            nats_url: "nats://nats:4222".into(),
        }
    }

    fn site() -> Site {
        Site {
            name: "hall-a".into(),
            replicas: 2,
            node_selector: BTreeMap::from([("qis.dev/site".into(), "hall-a".into())]),
            ..Default::default()
        }
    }

    fn env_of(d: &Deployment) -> BTreeMap<String, EnvVar> {
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn a_claim_is_mounted_at_the_data_dir_and_bounds_the_outbox() {
        let mut spec = QisSwarmSpec::default();
        spec.agent.persistence = Some(qis_crds::Persistence {
            type_: qis_crds::PersistenceType::PersistentVolumeClaim,
            storage_class_name: Some("local-path".into()),
            size: Some("256Mi".into()),
        });
        let d = deployment(&swarm(spec), &site(), "p", "s", &defaults());
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(
            spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
            Some("Recreate")
        );
        let pod = spec.template.spec.as_ref().unwrap();
        let data = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "data")
            .unwrap();
        assert_eq!(
            data.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("plant-agent-hall-a-data")
        );
        assert!(data.empty_dir.is_none());
        let mount = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "data")
            .unwrap();
        assert_eq!(mount.mount_path, DATA_DIR);
        assert_eq!(
            env_of(&d)[env::OUTBOX_MAX_BYTES].value.as_deref(),
            Some("67108864"),
            "a quarter of the claim"
        );
    }

    #[test]
    fn deployment_is_restricted_pinned_and_owned() {
        let d = deployment(
            &swarm(QisSwarmSpec::default()),
            &site(),
            "qis.factory.plant",
            "qis_factory_plant",
            &defaults(),
        );
        assert_eq!(d.metadata.name.as_deref(), Some("plant-agent-hall-a"));
        assert_eq!(
            d.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(
            pod.node_selector.as_ref().unwrap()["qis.dev/site"],
            "hall-a"
        );
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert_eq!(c.image.as_deref(), Some("ghcr.io/qis/agent:0.1.0"));
        let env = env_of(&d);
        assert_eq!(env["QIS_SITE"].value.as_deref(), Some("hall-a"));
        assert_eq!(
            env["QIS_NATS_URL"].value.as_deref(),
            Some("nats://nats:4222")
        );
        assert_eq!(
            env["QIS_POD_NAME"]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        assert!(!env.contains_key("QIS_NATS_CREDENTIALS_DIR"));
        // The selector must match the template's labels.
        let labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert!(
            spec.selector
                .match_labels
                .as_ref()
                .unwrap()
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        );
    }

    #[test]
    fn credentials_are_mounted_never_inlined() {
        let key = |k: &str| {
            Some(SecretKeyRef {
                name: "nats-auth".into(),
                key: k.into(),
            })
        };
        let spec = QisSwarmSpec {
            nats: Some(NatsConnection {
                credentials: Some(NatsCredentials {
                    username: key("user"),
                    password: key("pass"),
                    creds_file: None,
                    nkey_seed: None,
                    token: None,
                }),
                tls: Some(NatsTls {
                    secret_name: "nats-ca".into(),
                    client_cert: false,
                }),
                url: Some("tls://nats:4222".into()),
                jetstream_domain: Some("hub".into()),
            }),
            ..Default::default()
        };
        let d = deployment(&swarm(spec), &site(), "p", "s", &defaults());
        let text = serde_json::to_string(&d).unwrap();
        assert!(
            !text.contains("\"pass\"") || text.contains("\"key\":\"pass\""),
            "only key names appear"
        );
        let env = env_of(&d);
        assert_eq!(
            env["QIS_NATS_CREDENTIALS_DIR"].value.as_deref(),
            Some(CREDENTIALS_DIR)
        );
        assert_eq!(env["QIS_NATS_TLS_DIR"].value.as_deref(), Some(TLS_DIR));
        assert_eq!(env["QIS_JETSTREAM_DOMAIN"].value.as_deref(), Some("hub"));
        let pod = d.spec.unwrap().template.spec.unwrap();
        let vols = pod.volumes.unwrap();
        let creds = vols.iter().find(|v| v.name == "nats-credentials").unwrap();
        let paths: Vec<String> = creds
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|s| s.secret.as_ref().unwrap().items.clone().unwrap())
            .map(|i| i.path)
            .collect();
        assert_eq!(paths, ["username", "password"]);
    }

    #[test]
    fn security_overrides_merge_field_by_field() {
        let o = SecurityContext {
            run_as_user: Some(1000),
            ..Default::default()
        };
        let sc = container_security(Some(&o));
        assert_eq!(sc.run_as_user, Some(1000));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
    }

    #[test]
    fn a_capabilities_override_never_undoes_drop_all() {
        let o = SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".into()]),
                drop: Some(vec![]),
            }),
            ..Default::default()
        };
        let caps = container_security(Some(&o))
            .capabilities
            .expect("capabilities");
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
        assert_eq!(
            caps.add.as_deref(),
            Some(&["NET_BIND_SERVICE".to_owned()][..])
        );
        let o = SecurityContext {
            capabilities: Some(Capabilities::default()),
            ..Default::default()
        };
        let caps = container_security(Some(&o))
            .capabilities
            .expect("capabilities");
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
        assert_eq!(caps.add, None);
    }

    #[test]
    fn rbac_is_least_privilege() {
        let s = swarm(QisSwarmSpec::default());
        let r = role(&s);
        let rules = r.rules.unwrap();
        let verbs_on = |res: &str| -> Vec<String> {
            rules
                .iter()
                .filter(|r| r.resources.as_ref().unwrap().iter().any(|x| x == res))
                .flat_map(|r| r.verbs.clone())
                .collect()
        };
        assert_eq!(verbs_on("qissubjects/status"), ["get", "patch"]);
        assert!(
            !verbs_on("qissubjects")
                .iter()
                .any(|v| v == "update" || v == "patch" || v == "delete")
        );
        assert!(verbs_on("secrets").is_empty());
        let b = role_binding(&s);
        assert_eq!(
            b.subjects.unwrap()[0].name,
            service_account(&s).metadata.name.unwrap()
        );
    }
}
