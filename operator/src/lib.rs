//! `qis-operator`: reconciles `QisSwarm` and `QisSubject` into JetStream streams, durable
//! consumers and agent Deployments.
//!
//! Each reconcile is a short driver over typed steps, one module each under `swarm/` and
//! `subject/`: validate → dereference → build (pure, on the stream and consumer configurations of `qis_contract`,
//! `sites`, `workload`) → apply (`jetstream`, server-side apply) → status (pure, on
//! `conditions`). What both share (the instrumented entry, the finalizer with its deadline,
//! the status write) is in `reconcile`; `run` wires them into kube-runtime controllers.

pub mod apply;
pub mod conditions;
pub mod contain;
pub mod context;
pub mod error;
pub mod http;
pub mod jetstream;
pub mod metrics;
pub mod nats_connections;
pub mod nats_permissions;
pub mod nats_settings;
pub mod outbox_claims;
pub mod persistence;
pub mod rbac;
pub mod reconcile;
pub mod run;
pub mod site_metrics;
pub mod sites;
pub mod subject;
pub mod swarm;
pub mod unreadable;
pub mod validate;
pub mod workload;

/// The stream and consumer configurations live in the operator–agent contract; these names
/// keep the operator's call sites short.
pub use qis_contract::{consumer as consumer_config, stream as stream_config};

use kube::Resource;

/// `<namespace>/<name>` of an object.
pub fn object_key<K: Resource>(obj: &K) -> String {
    let m = obj.meta();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

pub use reconcile::entry::error_policy;
