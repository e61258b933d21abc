//! `qis-operator`: reconciles `QisSwarm` and `QisSubject` into JetStream streams, durable
//! consumers and agent Deployments.
//!
//! The controller lands with its own issue; this crate holds the pure pieces that are ready.
