//! `QisSubject`: a semantic address in a swarm, its durable consumers and its consensus.

use crate::Duration;
use crate::common::{SynthesisSettings, conditions_schema};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A subject: `domain` + `problemClass` (or the whole domain) in a swarm. The operator makes one
/// durable pull consumer per site; an agent writes the consensus into `status.consensus`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "qis.dev",
    version = "v1alpha1",
    kind = "QisSubject",
    doc = "A semantic address in a swarm: its durable consumers and its consensus.",
    namespaced,
    status = "QisSubjectStatus",
    shortname = "qsub",
    category = "qis",
    printcolumn(name = "Address", type_ = "string", json_path = ".status.address"),
    printcolumn(name = "Consensus", type_ = "string", json_path = ".status.consensus.problem"),
    printcolumn(name = "Strength", type_ = "number", json_path = ".status.consensus.strength"),
    printcolumn(name = "Agents", type_ = "integer", json_path = ".status.consensus.agents"),
    printcolumn(name = "Alert", type_ = "boolean", json_path = ".status.consensus.alert"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        priority = 1
    ),
    printcolumn(name = "Agreeing", type_ = "integer", json_path = ".status.consensus.agreeingAgents", priority = 1),
    printcolumn(name = "Dispersion", type_ = "number", json_path = ".status.consensus.dispersion", priority = 1),
    printcolumn(name = "Site", type_ = "string", json_path = ".status.consensus.reportingSite", priority = 1),
    printcolumn(name = "Updated", type_ = "date", json_path = ".status.consensus.updatedAt", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')")
        .message("metadata.name must be a DNS label (lowercase letters, digits, '-'; at most 63 characters)"),
)]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.problemClass) == has(oldSelf.problemClass) && (!has(self.problemClass) || self.problemClass == oldSelf.problemClass)"
).message("problemClass is immutable"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.addressing) || self.addressing.mode != 'hashed' || has(self.problemClass)"
).message("hashed addressing needs a problemClass (a domain-wide subject has no single fingerprint)"))]
#[serde(rename_all = "camelCase")]
pub struct QisSubjectSpec {
    /// The swarm this subject belongs to, in the same namespace. Immutable.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("swarmRef is immutable"))]
    pub swarm_ref: SwarmRef,
    /// Domain, e.g. `hvac`: lowercase letters, digits, `-`, `_`; 1–64 characters; not `fp`.
    /// Immutable.
    #[schemars(regex(pattern = crate::addressing::TOKEN_PATTERN))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("domain is immutable"))]
    #[x_kube(validation = kube::core::Rule::new("self != 'fp'").message("domain 'fp' is reserved for hashed addresses"))]
    pub domain: String,
    /// Problem class, e.g. `energy-anomaly`. Left out: the subject covers the whole domain
    /// (`<prefix>.<domain>.>`) and its consensus is taken across problem classes. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::addressing::TOKEN_PATTERN))]
    pub problem_class: Option<String>,
    /// How the subject's NATS address is formed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addressing: Option<Addressing>,
    /// Settings of the subject's durable consumers (one per site).
    #[serde(default)]
    pub consumer: ConsumerSpec,
    /// Synthesis settings; each field set overrides the swarm's.
    #[serde(default)]
    pub synthesis: SynthesisSettings,
}

/// Reference to a `QisSwarm` in the subject's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwarmRef {
    /// Name of the swarm.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
}

/// Readable or hashed address.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AddressingMode {
    /// `<prefix>.<domain>.<problemClass>`: easy to watch with `nats sub`.
    #[default]
    Readable,
    /// `<prefix>.fp.<32 hex of SHA-256(domain|problemClass|bucket)>` (see `docs/addressing.md`).
    Hashed,
}

/// How the subject's address is formed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Addressing {
    /// `readable` or `hashed`. Default `readable`.
    #[serde(default)]
    pub mode: AddressingMode,
    /// Context bucket of a hashed address (a token, e.g. `q4-0302` from the context vector, or a
    /// label such as `building-a`). Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::addressing::TOKEN_PATTERN))]
    pub context_bucket: Option<String>,
}

/// Where a new consumer starts in the stream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DeliverPolicy {
    /// Every packet still in the stream (within `maxAge`): a new site sees its twins' past.
    #[default]
    All,
    /// Only the last packet of the stream.
    Last,
    /// Only packets deposited after the consumer was made.
    New,
    /// The last packet of each subject.
    LastPerSubject,
    /// Packets from `optStartTime` on.
    ByStartTime,
}

/// Settings of the subject's durable pull consumers. Names follow NACK's `Consumer`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new(
    "(self.deliverPolicy == 'byStartTime') == has(self.optStartTime)"
).message("optStartTime is required with deliverPolicy byStartTime and only allowed with it"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.backoff) || self.maxDeliver == -1 || size(self.backoff) < self.maxDeliver"
).message("backoff must have fewer entries than maxDeliver"))]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSpec {
    /// Where a new consumer starts. Default `all`, so that a newly joined site sees the twins
    /// deposited before it joined (within the stream's `maxAge`).
    #[serde(default)]
    pub deliver_policy: DeliverPolicy,
    /// Start time (RFC 3339) with `deliverPolicy: byStartTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub opt_start_time: Option<String>,
    /// Time the server waits for an ack before redelivering. Default `30s`.
    #[serde(default = "default_ack_wait")]
    pub ack_wait: Duration,
    /// Deliveries of one packet before the server gives up; `-1` for no limit. Default `10`.
    #[serde(default = "default_max_deliver")]
    #[schemars(range(min = -1, max = 1000))]
    pub max_deliver: i64,
    /// Packets delivered and not yet acked, at most. Default `1000`.
    #[serde(default = "default_max_ack_pending")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_ack_pending: i64,
    /// Redelivery delays, one per attempt (overrides `ackWait` for redeliveries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub backoff: Vec<BackoffDuration>,
}

/// One redelivery delay, a Go duration such as `5s`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct BackoffDuration(pub Duration);

impl Default for ConsumerSpec {
    fn default() -> Self {
        ConsumerSpec {
            deliver_policy: DeliverPolicy::default(),
            opt_start_time: None,
            ack_wait: default_ack_wait(),
            max_deliver: default_max_deliver(),
            max_ack_pending: default_max_ack_pending(),
            backoff: Vec::new(),
        }
    }
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_max_deliver() -> i64 {
    10
}
fn default_max_ack_pending() -> i64 {
    1000
}

/// Observed state of a subject: conditions and consumers from the operator, consensus from an
/// agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QisSubjectStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `ConsumersReady`, `Synthesizing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// NATS address (filter subject of the consumers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The durable consumers, one per site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<ConsumerStatus>,
    /// Consensus, written by one agent of the swarm (field manager `qis-agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus: Option<Consensus>,
}

/// One durable consumer of a subject.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    /// Site the consumer serves.
    pub site: String,
    /// Durable name in the stream.
    pub name: String,
}

/// The consensus of a subject, as one agent synthesized it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Consensus {
    /// Problem most agents agree on, `<domain>.<problemClass>`.
    pub problem: String,
    /// Share of the (decay-weighted) votes that agree on `problem`, in [0, 1].
    pub strength: f64,
    /// Combined confidence of the agreeing votes, in [0, 1].
    pub weighted_confidence: f64,
    /// Distinct agents with a vote in the window.
    // Bounded so that the API server stores no value this type cannot read (an unreadable
    // status made the whole subject unreadable).
    #[schemars(range(min = 0, max = 4294967295u32))]
    pub agents: u32,
    /// Of those, the agents whose vote names `problem`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 4294967295u32))]
    pub agreeing_agents: u32,
    /// Outcome packets in the window (all of them, not one per agent).
    pub packets: u64,
    /// Pairs of distinct agents, n(n-1)/2.
    pub synthesis_pairs: u64,
    /// Interquartile range of the agreeing votes' confidences.
    pub dispersion: f64,
    /// Effective number of votes after decay weighting (Kish).
    pub effective_n: f64,
    /// `strength > threshold` and `agents >= quorum`.
    pub alert: bool,
    /// What an operator of the site should do, in words.
    pub recommendation: String,
    /// When the agent synthesized this (RFC 3339).
    pub updated_at: String,
    /// Site of the agent that wrote this.
    pub reporting_site: String,
    /// Pod (or device) of the agent that wrote this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reporting_agent: String,
}

/// The NATS address of a subject: hashed (`<prefix>.fp.<fingerprint>`) when its addressing
/// says so and it has a problem class, readable (`<prefix>.<domain>.<problemClass>` or the
/// domain-wide `<prefix>.<domain>.>`) otherwise.
pub fn address_of(
    prefix: &str,
    domain: &str,
    problem_class: Option<&str>,
    addressing: Option<&Addressing>,
) -> String {
    let mode = addressing.map(|a| a.mode).unwrap_or_default();
    match (mode, problem_class) {
        (AddressingMode::Hashed, Some(pc)) => {
            let bucket = addressing
                .and_then(|a| a.context_bucket.as_deref())
                .unwrap_or(crate::addressing::DEFAULT_BUCKET);
            crate::addressing::hashed_address(prefix, domain, pc, bucket)
        }
        (_, pc) => crate::addressing::readable_address(prefix, domain, pc),
    }
}

impl QisSubjectSpec {
    /// This subject's NATS address under `prefix` (see [`address_of`]).
    pub fn address(&self, prefix: &str) -> String {
        address_of(
            prefix,
            &self.domain,
            self.problem_class.as_deref(),
            self.addressing.as_ref(),
        )
    }
}
