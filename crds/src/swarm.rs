//! `QisSwarm`: one JetStream stream, one subject prefix, the sites that run agents.

use crate::Duration;
use crate::common::{SecretKeyRef, SynthesisSettings, conditions_schema};
use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, SecurityContext, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A swarm: a JetStream stream holding every outcome packet under one subject prefix, and one
/// agent Deployment per site.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "qis.dev",
    version = "v1alpha1",
    kind = "QisSwarm",
    doc = "A swarm of edge agents sharing outcome packets through one JetStream stream.",
    namespaced,
    status = "QisSwarmStatus",
    shortname = "qsw",
    category = "qis",
    printcolumn(name = "Prefix", type_ = "string", json_path = ".status.subjectPrefix"),
    printcolumn(name = "Stream", type_ = "string", json_path = ".status.stream.name"),
    printcolumn(name = "Messages", type_ = "integer", json_path = ".status.stream.messages"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')")
        .message("metadata.name must be a DNS label (lowercase letters, digits, '-'; at most 63 characters)"),
)]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.subjectPrefix) == has(oldSelf.subjectPrefix) && (!has(self.subjectPrefix) || self.subjectPrefix == oldSelf.subjectPrefix)"
).message("subjectPrefix is immutable: agents and stored packets are addressed under it"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.agent) || !has(self.agent.persistence) || self.agent.persistence.type != 'persistentVolumeClaim' || ((!has(self.sites) || self.sites.all(s, s.replicas <= 1)) && (!has(self.siteDiscovery) || self.siteDiscovery.replicas <= 1))"
).message("with agent.persistence.type persistentVolumeClaim a site runs at most one replica: its claim holds one outbox (ReadWriteOnce)"))]
#[serde(rename_all = "camelCase")]
pub struct QisSwarmSpec {
    /// NATS connection of this swarm. Fields left out come from the operator's default
    /// connection (its `--nats-url` flag and credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsConnection>,
    /// Subject prefix of every address in the swarm, e.g. `qis.iot`. Default
    /// `qis.<namespace>.<swarm>`. One to eight tokens of lowercase letters, digits, `-`, `_`,
    /// joined by `.`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::addressing::PREFIX_PATTERN))]
    pub subject_prefix: Option<String>,
    /// The JetStream stream that stores the swarm's packets.
    #[serde(default)]
    pub stream: StreamSpec,
    /// The agent containers the operator runs at each site.
    #[serde(default)]
    pub agent: AgentTemplate,
    /// Sites listed by hand. With neither `sites` nor `siteDiscovery`, the swarm runs one site,
    /// `default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[schemars(length(max = 256))]
    pub sites: Vec<SiteSpec>,
    /// Sites discovered from a node label: one site per distinct value, pinned to its nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_discovery: Option<SiteDiscovery>,
    /// Synthesis defaults of the swarm's subjects.
    #[serde(default)]
    pub synthesis: SynthesisSettings,
    /// What happens to the stream when the swarm is deleted. Default `delete`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// NATS connection settings; every field is optional and falls back to the operator's default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsConnection {
    /// Server URL(s), comma-separated, e.g. `nats://nats.nats:4222`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub url: Option<String>,
    /// Credentials, read from a Secret in the swarm's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<NatsCredentials>,
    /// TLS settings, read from a Secret in the swarm's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<NatsTls>,
    /// JetStream domain (for leaf nodes that reach a hub's JetStream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::addressing::TOKEN_PATTERN))]
    pub jetstream_domain: Option<String>,
}

/// How to authenticate to NATS. Exactly one of the fields is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.credsFile), has(self.nkeySeed), has(self.username), has(self.token)].filter(x, x).size() == 1"
).message("set exactly one of credsFile, nkeySeed, username (with password), token"))]
#[x_kube(validation = kube::core::Rule::new("has(self.username) == has(self.password)")
    .message("username and password go together"))]
#[serde(rename_all = "camelCase")]
pub struct NatsCredentials {
    /// A `.creds` file (JWT + nkey seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<SecretKeyRef>,
    /// An nkey seed (`SU...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed: Option<SecretKeyRef>,
    /// User name (with `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<SecretKeyRef>,
    /// Password (with `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretKeyRef>,
    /// An authentication token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretKeyRef>,
}

/// TLS to NATS, from a Secret with keys `ca.crt`, and for client certificates `tls.crt` and
/// `tls.key`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsTls {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Present a client certificate (`tls.crt`, `tls.key`). Default `false`.
    #[serde(default)]
    pub client_cert: bool,
}

/// Where the stream keeps its messages.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StorageType {
    /// On disk: survives a server restart.
    #[default]
    File,
    /// In memory: lost on a server restart.
    Memory,
}

/// What the stream does when a limit is reached.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DiscardPolicy {
    /// Drop the oldest messages.
    #[default]
    Old,
    /// Refuse new messages.
    New,
}

/// The swarm's JetStream stream. Names follow NACK's `Stream` where the concept is the same.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamSpec {
    /// `file` or `memory`. Default `file`. Immutable (the server cannot convert a stream).
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("stream.storage is immutable"))]
    pub storage: StorageType,
    /// Stream replicas in a NATS cluster. Default `1` (edge).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,
    /// Oldest packet kept. Default `24h`.
    #[serde(default = "default_max_age")]
    pub max_age: Duration,
    /// Most bytes kept; `-1` for no limit. Default 50 MiB.
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = -1))]
    pub max_bytes: i64,
    /// Largest message the server accepts, in bytes. Default: the smallest size that admits a
    /// 512-byte body with the headers agents send (see `docs/wire-format.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 512, max = 1048576))]
    pub max_msg_size: Option<i32>,
    /// Window in which a repeated `Nats-Msg-Id` is dropped. Default `2m`.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: Duration,
    /// `old` or `new`. Default `old`.
    #[serde(default)]
    pub discard: DiscardPolicy,
    /// Most consumers the stream admits. Every subject has one durable consumer per site, each
    /// agent briefly adds one while it rebuilds its window, and each standby replica (a site
    /// with `replicas` > 1) follows each of its subjects with one, so a swarm needs about
    /// `subjects × sites + agents + subjects × standby replicas`. Default 10000. The stream
    /// always carries an explicit limit: nats-server 2.15 caps a stream that sets none at 1000
    /// consumers.
    #[serde(default = "default_max_consumers")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_consumers: i32,
}

impl Default for StreamSpec {
    fn default() -> Self {
        StreamSpec {
            storage: StorageType::default(),
            replicas: default_replicas(),
            max_age: default_max_age(),
            max_bytes: default_max_bytes(),
            max_msg_size: None,
            duplicate_window: default_duplicate_window(),
            discard: DiscardPolicy::default(),
            max_consumers: default_max_consumers(),
        }
    }
}

fn default_replicas() -> i32 {
    1
}
fn default_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_bytes() -> i64 {
    50 * 1024 * 1024
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}
fn default_max_consumers() -> i32 {
    crate::constants::DEFAULT_MAX_CONSUMERS
}
fn default_site_replicas() -> i32 {
    1
}
fn default_node_label() -> String {
    crate::constants::SITE_NODE_LABEL.to_owned()
}

/// The agent containers of the swarm. Unset fields take the operator's defaults; the security
/// context is merged over the restricted Pod Security defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTemplate {
    /// Agent image. Default: the operator's `--agent-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub image_pull_policy: Option<String>,
    /// Pull secrets of the agent pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Resources of the agent container. Default: requests 10m CPU / 16Mi, limit 64Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment variables of the agent container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Container security context fields that override the restricted defaults. Refused: a
    /// privileged, root (user or group 0) or escalating container, added capabilities other
    /// than `NET_BIND_SERVICE`, seccomp other than `RuntimeDefault`/`Localhost`, unconfined
    /// AppArmor, unmasked `/proc`, SELinux user or role or a non-container type, Windows host
    /// processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(
        "!has(self.privileged) || !self.privileged"
    ).message("spec.agent.securityContext.privileged must not be true"))]
    #[x_kube(validation = kube::core::Rule::new(
        "!has(self.allowPrivilegeEscalation) || !self.allowPrivilegeEscalation"
    ).message("spec.agent.securityContext.allowPrivilegeEscalation must not be true"))]
    #[x_kube(validation = kube::core::Rule::new(
        "!has(self.runAsNonRoot) || self.runAsNonRoot"
    ).message("spec.agent.securityContext.runAsNonRoot must not be false"))]
    #[x_kube(validation = kube::core::Rule::new(
        "!has(self.runAsUser) || self.runAsUser != 0"
    ).message("spec.agent.securityContext.runAsUser must not be 0 (root)"))]
    #[x_kube(validation = kube::core::Rule::new(
        "!has(self.runAsGroup) || self.runAsGroup != 0"
    ).message("spec.agent.securityContext.runAsGroup must not be 0 (the root group)"))]
    #[x_kube(validation = kube::core::Rule::new(
        "!has(self.capabilities) || !has(self.capabilities.add) || self.capabilities.add.all(c, c == 'NET_BIND_SERVICE')"
    ).message("spec.agent.securityContext.capabilities.add may hold only NET_BIND_SERVICE"))]
    #[x_kube(validation = kube::core::Rule::new(
        "!has(self.seccompProfile) || self.seccompProfile.type in ['RuntimeDefault', 'Localhost']"
    ).message("spec.agent.securityContext.seccompProfile.type must be RuntimeDefault or Localhost"))]
    #[x_kube(validation = kube::core::Rule::new(
        "!has(self.appArmorProfile) || self.appArmorProfile.type != 'Unconfined'"
    ).message("spec.agent.securityContext.appArmorProfile.type must not be Unconfined"))]
    #[x_kube(validation = kube::core::Rule::new(
        "!has(self.procMount) || self.procMount == 'Default'"
    ).message("spec.agent.securityContext.procMount must be Default"))]
    #[x_kube(validation = kube::core::Rule::new(
        "!has(self.seLinuxOptions) || (!has(self.seLinuxOptions.user) && !has(self.seLinuxOptions.role) && (!has(self.seLinuxOptions.type) || self.seLinuxOptions.type in ['container_t', 'container_init_t', 'container_kvm_t', 'container_engine_t']))"
    ).message("spec.agent.securityContext.seLinuxOptions may set only a container_* type, no user or role"))]
    #[x_kube(validation = kube::core::Rule::new(
        "!has(self.windowsOptions) || !has(self.windowsOptions.hostProcess) || !self.windowsOptions.hostProcess"
    ).message("spec.agent.securityContext.windowsOptions.hostProcess must not be true"))]
    pub security_context: Option<SecurityContext>,
    /// Where the agents keep their outbox (packets waiting for NATS). Default: an `emptyDir`
    /// of 64Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
}

/// The volume of an agent's outbox.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(validation = kube::core::Rule::new(
    "self.type == 'persistentVolumeClaim' || !has(self.storageClassName)"
).message("storageClassName is only for type persistentVolumeClaim"))]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    /// `emptyDir` (default): kept across container restarts, lost when the pod is deleted or
    /// rescheduled. `persistentVolumeClaim`: one claim per site, `<swarm>-agent-<site>-data`
    /// (ReadWriteOnce), kept across reboots and rescheduled pods; sites then run one replica
    /// (a claim holds one outbox) and are updated by `Recreate`.
    #[serde(default, rename = "type")]
    pub type_: PersistenceType,
    /// Storage class of the claims; left out: the cluster's default class, `""`: none (a
    /// pre-provisioned volume). Immutable once a claim exists: the operator reports a change
    /// and leaves the claim as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^$|^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub storage_class_name: Option<String>,
    /// Size: the emptyDir's `sizeLimit`, or each claim's request. `Mi` or `Gi`, 16Mi to
    /// 999Gi; default `64Mi`. The agent's outbox holds at most a quarter of it
    /// (`QIS_OUTBOX_MAX_BYTES`), so its log, a compaction's copy and the delivery mark fit. A
    /// claim only grows, and only where its storage class allows expansion; other changes are
    /// reported, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([1-9][0-9]{1,5}Mi|[1-9][0-9]{0,2}Gi)$"))]
    #[x_kube(validation = kube::core::Rule::new(
        "!self.endsWith('Mi') || int(self.substring(0, self.size() - 2)) >= 16"
    ).message("size must be at least 16Mi"))]
    pub size: Option<String>,
}

/// What holds an agent's outbox.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PersistenceType {
    /// A directory of the pod, gone with it.
    #[default]
    EmptyDir,
    /// A PersistentVolumeClaim per site.
    PersistentVolumeClaim,
}

impl Persistence {
    /// The default size.
    pub const DEFAULT_SIZE: &'static str = "64Mi";

    /// The size in bytes (the schema admits only `<n>Mi` and `<n>Gi`).
    pub fn size_bytes(&self) -> u64 {
        let s = self.size.as_deref().unwrap_or(Self::DEFAULT_SIZE);
        let (n, unit) = s.split_at(s.len().saturating_sub(2));
        let n: u64 = n.parse().unwrap_or(64);
        n * if unit == "Gi" { 1 << 30 } else { 1 << 20 }
    }

    pub fn size(&self) -> &str {
        self.size.as_deref().unwrap_or(Self::DEFAULT_SIZE)
    }
}

/// A site listed by hand: one agent Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteSpec {
    /// Site name: a DNS label (lowercase letters, digits, `-`; at most 63 characters), since it
    /// names the site's Deployment and consumers.
    #[schemars(regex(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// Agent replicas at this site; one consumes, the others stand by. Default `1`.
    #[serde(default = "default_site_replicas")]
    #[schemars(range(min = 0, max = 10))]
    pub replicas: i32,
    /// Nodes the site's agents run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the site's agent pods (edge taints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the site's agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// Sites discovered from a node label: one per distinct value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteDiscovery {
    /// Node label whose values name the sites. Default `qis.dev/site`.
    #[serde(default = "default_node_label")]
    #[schemars(length(min = 1, max = 317))]
    pub node_label: String,
    /// Agent replicas per discovered site. Default `1`.
    #[serde(default = "default_site_replicas")]
    #[schemars(range(min = 0, max = 10))]
    pub replicas: i32,
    /// Tolerations of the discovered sites' agent pods (edge taints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// What deleting the swarm does to its stream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DeletionPolicy {
    /// Delete the stream and its packets.
    #[default]
    Delete,
    /// Keep the stream; a swarm created again with the same name adopts it.
    Retain,
}

/// Observed state of a swarm, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QisSwarmStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `StreamReady`, `AgentsReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The prefix in force (the default one when the spec names none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
    /// Live state of the stream, refreshed on every resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
    /// Sites and their agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<SiteStatus>,
}

/// Live state of a stream.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    /// Stream name.
    pub name: String,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// First sequence stored.
    pub first_seq: u64,
    /// Last sequence stored.
    pub last_seq: u64,
    /// Consumers on the stream.
    pub consumers: u64,
}

/// One site and its agents.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteStatus {
    /// Site name.
    pub name: String,
    /// Agent Deployment of the site.
    pub deployment: String,
    /// Replicas asked for.
    // Bounded to i32, so that the API server stores no value this type cannot read.
    #[schemars(range(min = 0, max = 2147483647))]
    pub desired_replicas: i32,
    /// Replicas ready.
    #[schemars(range(min = 0, max = 2147483647))]
    pub ready_replicas: i32,
}
