//! Names shared by the operator, the agent, the manifests and the docs.
//!
//! One place for every string that two components must agree on.

/// API group of both kinds.
pub const API_GROUP: &str = "qis.dev";
/// API version of both kinds.
pub const API_VERSION: &str = "v1alpha1";

/// Field manager of every server-side apply the operator makes.
pub const OPERATOR_FIELD_MANAGER: &str = "qis-operator";
/// Field manager of the agents' `status.consensus` writes.
pub const AGENT_FIELD_MANAGER: &str = "qis-agent";

/// Finalizer on a `QisSwarm`: guards its JetStream stream.
pub const SWARM_FINALIZER: &str = "qis.dev/stream";
/// Finalizer on a `QisSubject`: guards its durable consumers.
pub const SUBJECT_FINALIZER: &str = "qis.dev/consumers";

/// Node label that assigns a node to a site (site auto-discovery).
pub const SITE_NODE_LABEL: &str = "qis.dev/site";
/// Label on objects the operator makes: the owning swarm's name.
pub const LABEL_SWARM: &str = "qis.dev/swarm";
/// Label on objects the operator makes: the site they serve.
pub const LABEL_SITE: &str = "qis.dev/site";
/// `app.kubernetes.io/managed-by` value on objects the operator makes.
pub const MANAGED_BY: &str = "qis-operator";

/// Site used when a swarm lists no sites and has no discovery.
pub const DEFAULT_SITE: &str = "default";

/// Largest outcome-packet body, in bytes (the seed's rule).
pub const MAX_BODY_BYTES: usize = 512;

/// NATS header carrying the packet id (JetStream de-duplication).
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// NATS header carrying the packet kind (`outcome` | `synthesis`).
pub const HEADER_KIND: &str = "Qis-Kind";
/// NATS header carrying the synthesis generation (0 for outcomes).
pub const HEADER_HOPS: &str = "Qis-Hops";

/// Condition types written by the operator.
pub mod condition {
    /// Everything below is true.
    pub const READY: &str = "Ready";
    /// Swarm: the JetStream stream exists and matches the spec.
    pub const STREAM_READY: &str = "StreamReady";
    /// Swarm: every site's agent Deployment has its replicas ready.
    pub const AGENTS_READY: &str = "AgentsReady";
    /// Subject: every site's durable consumer exists and matches the spec.
    pub const CONSUMERS_READY: &str = "ConsumersReady";
    /// Subject: an agent reports consensus for it.
    pub const SYNTHESIZING: &str = "Synthesizing";
}

/// Condition reasons (CamelCase, documented in `docs/conditions.md`).
pub mod reason {
    /// All is as the spec asks.
    pub const RECONCILED: &str = "Reconciled";
    /// The spec breaks a rule the CRD schema cannot express.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The NATS server could not be reached or refused the request.
    pub const NATS_UNAVAILABLE: &str = "NatsUnavailable";
    /// Another swarm already owns an overlapping subject space.
    pub const RESOURCE_CONFLICT: &str = "ResourceConflict";
    /// The live object differed from the spec and was put back.
    pub const DRIFTED: &str = "Drifted";
    /// The server cannot apply this change in place.
    pub const NOT_SUPPORTED: &str = "NotSupported";
    /// The referenced swarm does not exist (yet).
    pub const SWARM_NOT_FOUND: &str = "SwarmNotFound";
    /// Waiting for something that is on its way (replicas, the swarm's stream).
    pub const PROGRESSING: &str = "Progressing";
    /// A Secret (or key) named in the spec does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The Kubernetes API refused or failed a request.
    pub const KUBE_API_ERROR: &str = "KubeApiError";
    /// The swarm asks for site discovery, and this operator runs without node access.
    pub const SITE_DISCOVERY_DISABLED: &str = "SiteDiscoveryDisabled";
    /// Deletion gave up on NATS after the bounded wait and removed the finalizer.
    pub const CLEANUP_ABANDONED: &str = "CleanupAbandoned";
    /// An agent reports consensus.
    pub const CONSENSUS_REPORTED: &str = "ConsensusReported";
    /// The swarm's stream admits no more consumers (`spec.stream.maxConsumers`).
    pub const CONSUMER_LIMIT_REACHED: &str = "ConsumerLimitReached";
    /// No agent has reported consensus (yet, or lately).
    pub const NO_REPORT: &str = "NoReport";
    /// A reconcile of the object panicked (a bug): caught, reported, retried with backoff.
    pub const RECONCILE_PANICKED: &str = "ReconcilePanicked";
}

/// Consumers a swarm's stream admits unless `spec.stream.maxConsumers` says otherwise.
pub const DEFAULT_MAX_CONSUMERS: i32 = 10_000;

/// Hex characters of a packet id (`Nats-Msg-Id`).
pub const PACKET_ID_LEN: usize = 32;

/// Largest header block an agent sends, as NATS frames it: `NATS/1.0\r\n`, one
/// `Name: value\r\n` line per header (the longest values: a packet id, `synthesis`, `255` hops),
/// and a closing `\r\n`.
pub const MAX_HEADER_BLOCK: usize = "NATS/1.0\r\n".len()
    + (HEADER_MSG_ID.len() + 2 + PACKET_ID_LEN + 2)
    + (HEADER_KIND.len() + 2 + "synthesis".len() + 2)
    + (HEADER_HOPS.len() + 2 + "255".len() + 2)
    + "\r\n".len();

/// Default `maxMsgSize` of a swarm's stream: a 512-byte body with the largest header block.
/// nats-server 2.15 counts headers and body together against `max_msg_size` (measured by
/// `operator/tests/jetstream.rs`).
pub const DEFAULT_MAX_MSG_SIZE: usize = MAX_BODY_BYTES + MAX_HEADER_BLOCK;
