//! `qis-operator`: reconciles `QisSwarm` and `QisSubject` into JetStream streams, durable
//! consumers and agent Deployments.
//!
//! Each reconcile runs validate (`validate`) → build, pure (`stream_config`,
//! `consumer_config`, `sites`, `workload`) → apply (`jetstream`, server-side apply) → status
//! (`conditions`). The reconcilers are `swarm_reconciler` and `subject_reconciler`; `run`
//! wires them into kube-runtime controllers.

pub mod apply;
pub mod conditions;
pub mod consumer_config;
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
pub mod run;
pub mod sites;
pub mod stream_config;
pub mod subject_reconciler;
pub mod swarm_reconciler;
pub mod unreadable;
pub mod validate;
pub mod workload;

use context::Context;
use error::Error;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::Resource;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::finalizer;
use qis_crds::constants::condition;
use std::sync::Arc;
use std::time::Duration;

/// `<namespace>/<name>` of an object.
pub fn object_key<K: Resource>(obj: &K) -> String {
    let m = obj.meta();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

/// The reconciler's own error out of a finalizer error.
pub(crate) fn finalizer_error(e: finalizer::Error<Error>) -> Error {
    match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    }
}

/// Has this object been waiting for deletion longer than `timeout`?
pub(crate) fn deletion_overdue(meta: &ObjectMeta, timeout: Duration) -> bool {
    meta.deletion_timestamp.as_ref().is_some_and(|t| {
        k8s_openapi::jiff::Timestamp::now()
            .duration_since(t.0)
            .unsigned_abs()
            > timeout
    })
}

/// Records an event when `Ready` changes status or reason.
pub(crate) async fn transition_event(
    ctx: &Context,
    reference: &ObjectReference,
    old: &[Condition],
    new: &[Condition],
) {
    let find = |l: &[Condition]| l.iter().find(|c| c.type_ == condition::READY).cloned();
    let Some(now) = find(new) else { return };
    let before = find(old);
    if before
        .as_ref()
        .is_some_and(|b| b.status == now.status && b.reason == now.reason)
    {
        return;
    }
    let ok = now.status == "True";
    ctx.event(
        reference,
        !ok,
        if ok { "Ready" } else { &now.reason },
        "Reconcile",
        now.message,
    )
    .await;
}

/// Decides the next look by the error's category: a spec to fix waits for a change, a
/// conflict is looked at again in a minute, a transient error backs off exponentially.
pub fn error_policy<K>(obj: Arc<DeserializeGuard<K>>, err: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource,
    DeserializeGuard<K>: Resource,
{
    let key = object_key(obj.as_ref());
    let kind = if std::any::type_name::<K>().ends_with("QisSwarm") {
        "swarm"
    } else {
        "subject"
    };
    ctx.metrics
        .errors
        .get_or_create(&metrics::ErrorLabels {
            kind,
            reason: err.reason(),
        })
        .inc();
    let attempt = ctx.failed(&key);
    tracing::warn!(object = %key, reason = err.reason(), attempt, error = %err, "reconcile failed");
    match err.requeue_after(attempt.saturating_sub(1)) {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    }
}
