//! `qis-agent`: the edge agent of a QIS swarm.
//!
//! - [`packet`]: the outcome packet, its seed-compatible wire format and headers.
//! - [`synthesis`]: the consensus math, pure and incremental.
//! - [`config`]: settings from a YAML file (standalone) or the pod's environment (cluster).
//! - [`intake`]: the HTTP privacy firewall and local API.
//! - [`deposit`] and [`outbox`]: pipelined publishing with an on-disk fallback.
//! - [`subject_worker`]: per-subject consumption (binding, active, standby), rebuild and synthesis.
//! - [`report`] and [`cluster`]: the Kubernetes side (subjects in, consensus out).
//! - [`run`]: the loop that ties them together.

pub mod cluster;
pub mod config;
pub mod consensus_events;
pub mod consensus_metrics;
pub mod contain;
pub mod deposit;
pub mod intake;
pub mod metrics;
pub mod nats;
pub mod outbox;
pub mod packet;
pub mod report;
pub mod run;
pub mod subject_worker;
pub mod synthesis;
