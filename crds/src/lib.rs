//! `qis-crds`: the `qis.dev/v1alpha1` API (`QisSwarm`, `QisSubject`), the names every
//! component shares, and the addressing rules of `docs/addressing.md`.
//!
//! This crate stays light (no client, no runtime): the agent depends on it.

pub mod addressing;
pub mod common;
pub mod constants;
pub mod crdgen;
pub mod duration;
pub mod subject;
pub mod swarm;

pub use common::{SecretKeyRef, SynthesisMethod, SynthesisSettings};
pub use duration::Duration;
pub use subject::{
    Addressing, AddressingMode, Consensus, ConsumerSpec, ConsumerStatus, DeliverPolicy, QisSubject,
    QisSubjectSpec, QisSubjectStatus, SwarmRef,
};
pub use swarm::{
    AgentTemplate, DeletionPolicy, DiscardPolicy, NatsConnection, NatsCredentials, NatsTls,
    Persistence, PersistenceType, QisSwarm, QisSwarmSpec, QisSwarmStatus, SiteDiscovery, SiteSpec,
    SiteStatus, StorageType, StreamSpec, StreamStatus,
};
