//! `qis-operator`: reconciles `QisSwarm` and `QisSubject` into JetStream streams, durable
//! consumers and agent Deployments.
//!
//! Each reconcile runs validate → build (pure, `*_config`, `workload`) → apply (`jetstream`,
//! server-side apply) → status (`conditions`).

pub mod conditions;
pub mod consumer_config;
pub mod error;
pub mod jetstream;
pub mod nats_connections;
pub mod stream_config;
pub mod validate;
