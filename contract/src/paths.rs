//! Where the operator mounts the agent pod's volumes, and the names of the files in them. The
//! agent finds the directories through [`crate::env`] and the files by these names.

/// Port of the agent's HTTP server (health, metrics, local consensus, intake).
pub const AGENT_PORT: u16 = 8080;
/// The agent's writable state (outbox): an emptyDir (survives container restarts) or a claim.
pub const DATA_DIR: &str = "/var/lib/qis";
/// Where the NATS credentials Secret's keys are mounted.
pub const CREDENTIALS_DIR: &str = "/var/run/qis/nats-credentials";
/// Where the NATS TLS Secret is mounted.
pub const TLS_DIR: &str = "/var/run/qis/nats-tls";

/// File names in [`CREDENTIALS_DIR`]: the operator projects each Secret key the swarm names onto
/// one of them; the agent uses whichever exist (in this order of preference).
pub mod credentials {
    /// A NATS `.creds` file (JWT and nkey seed).
    pub const CREDS: &str = "creds";
    /// An nkey seed.
    pub const NKEY: &str = "nkey";
    /// User name (with [`PASSWORD`]).
    pub const USERNAME: &str = "username";
    /// Password (with [`USERNAME`]).
    pub const PASSWORD: &str = "password";
    /// A token.
    pub const TOKEN: &str = "token";
}

/// File names in [`TLS_DIR`] (those of a `kubernetes.io/tls` Secret, plus the CA).
pub mod tls {
    /// CA certificate (PEM); makes TLS required.
    pub const CA: &str = "ca.crt";
    /// Client certificate (PEM).
    pub const CERT: &str = "tls.crt";
    /// Client key (PEM).
    pub const KEY: &str = "tls.key";
}
