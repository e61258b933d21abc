//! Names of the environment variables of the agent container. The operator sets the cluster
//! ones on every agent pod ([`SET_BY_OPERATOR`]); the agent reads them (and the others, which a
//! user may set through `spec.agent.env`) in `agent/src/config.rs`.

/// Namespace of the pod (the downward API).
pub const NAMESPACE: &str = "QIS_NAMESPACE";
/// Name of the pod, the agent's id (the downward API).
pub const POD_NAME: &str = "QIS_POD_NAME";
/// Name of the swarm.
pub const SWARM: &str = "QIS_SWARM";
/// The site the pod serves.
pub const SITE: &str = "QIS_SITE";
/// The swarm's JetStream stream.
pub const STREAM: &str = "QIS_STREAM";
/// The swarm's subject prefix.
pub const SUBJECT_PREFIX: &str = "QIS_SUBJECT_PREFIX";
/// NATS server URL(s), comma-separated.
pub const NATS_URL: &str = "QIS_NATS_URL";
/// JetStream domain (a leaf node's hub).
pub const JETSTREAM_DOMAIN: &str = "QIS_JETSTREAM_DOMAIN";
/// Directory holding the credential files ([`crate::paths::credentials`]).
pub const NATS_CREDENTIALS_DIR: &str = "QIS_NATS_CREDENTIALS_DIR";
/// Directory holding the TLS files ([`crate::paths::tls`]).
pub const NATS_TLS_DIR: &str = "QIS_NATS_TLS_DIR";
/// Address of the agent's HTTP server.
pub const LISTEN: &str = "QIS_LISTEN";
/// The agent's writable state (outbox).
pub const DATA_DIR: &str = "QIS_DATA_DIR";
/// Bytes the outbox may hold (the operator derives it from the data volume's size).
pub const OUTBOX_MAX_BYTES: &str = "QIS_OUTBOX_MAX_BYTES";

/// Every variable the operator sets on the agent container: `spec.agent.env` may not name
/// them (the container's env is a list keyed by name; a repeated name fails the apply).
pub const SET_BY_OPERATOR: &[&str] = &[
    NAMESPACE,
    POD_NAME,
    SWARM,
    SITE,
    STREAM,
    SUBJECT_PREFIX,
    NATS_URL,
    JETSTREAM_DOMAIN,
    NATS_CREDENTIALS_DIR,
    NATS_TLS_DIR,
    LISTEN,
    DATA_DIR,
    OUTBOX_MAX_BYTES,
];

/// Packets the outbox may hold. Default 10000.
pub const OUTBOX_MAX: &str = "QIS_OUTBOX_MAX";
/// When the outbox syncs to disk: `always`, `interval` (default) or `never`.
pub const OUTBOX_FSYNC: &str = "QIS_OUTBOX_FSYNC";
/// Interval of `interval` syncs. Default `1s`.
pub const OUTBOX_FSYNC_INTERVAL: &str = "QIS_OUTBOX_FSYNC_INTERVAL";
/// Least time between two status reports. Default `5s`.
pub const REPORT_INTERVAL: &str = "QIS_REPORT_INTERVAL";
/// The intake's limits (`agent/src/config.rs`, `IntakeLimits`).
pub const INTAKE_MAX_CONNECTIONS: &str = "QIS_INTAKE_MAX_CONNECTIONS";
pub const INTAKE_HEADER_TIMEOUT: &str = "QIS_INTAKE_HEADER_TIMEOUT";
pub const INTAKE_BODY_TIMEOUT: &str = "QIS_INTAKE_BODY_TIMEOUT";
pub const INTAKE_BODY_BUDGET: &str = "QIS_INTAKE_BODY_BUDGET";
pub const INTAKE_QUEUE_WAIT: &str = "QIS_INTAKE_QUEUE_WAIT";
/// Every `QIS_INTAKE_*` variable.
pub const INTAKE: &[&str] = &[
    INTAKE_MAX_CONNECTIONS,
    INTAKE_HEADER_TIMEOUT,
    INTAKE_BODY_TIMEOUT,
    INTAKE_BODY_BUDGET,
    INTAKE_QUEUE_WAIT,
];
/// A standalone agent's configuration file.
pub const CONFIG: &str = "QIS_CONFIG";
/// `text` or `json` logs.
pub const LOG_FORMAT: &str = "QIS_LOG_FORMAT";
