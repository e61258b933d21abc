//! `qis-crds`: the `qis.dev/v1alpha1` API (`QisSwarm`, `QisSubject`), the names every
//! component shares, and the addressing rules of `shared/DESIGN.md`.
//!
//! This crate stays light (no client, no runtime): the agent depends on it.

pub mod addressing;
pub mod common;
pub mod constants;
pub mod crdgen;
pub mod subject;
pub mod swarm;

pub use common::{SecretKeyRef, SynthesisMethod, SynthesisSettings};
/// The Go-style duration of every duration field (`30s`, `1h30m`).
pub use kube::core::Duration;
pub use subject::{
    Addressing, AddressingMode, Consensus, ConsumerSpec, ConsumerStatus, DeliverPolicy, QisSubject,
    QisSubjectSpec, QisSubjectStatus, SwarmRef,
};
pub use swarm::{
    AgentTemplate, DeletionPolicy, DiscardPolicy, NatsConnection, NatsCredentials, NatsTls,
    QisSwarm, QisSwarmSpec, QisSwarmStatus, SiteDiscovery, SiteSpec, SiteStatus, StorageType,
    StreamSpec, StreamStatus,
};
