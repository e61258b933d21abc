//! The one entry of both controllers: counts and times the reconcile, contains a panic,
//! reports an object that does not deserialize, runs apply or cleanup under the finalizer,
//! and decides the retry of a failure from the error's category.

use super::{Kind, finalize};
use crate::context::Context;
use crate::error::Error;
use crate::metrics::{ErrorLabels, KindLabel};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use std::sync::Arc;
use std::time::Instant;

/// Reconciles one object of kind `K` (what `Controller::run` calls).
pub async fn reconcile<K: Kind>(
    guard: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics
        .reconciles
        .get_or_create(&KindLabel { kind: K::LABEL })
        .inc();
    let result = crate::contain::reconcile_contained(guard.as_ref(), &ctx, async {
        match &guard.0 {
            Ok(obj) => finalize::run(Arc::new(obj.clone()), &ctx).await,
            Err(invalid) => crate::unreadable::report::<K>(invalid, K::FINALIZER, &ctx).await,
        }
    })
    .await;
    ctx.metrics.observe(K::LABEL, started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&crate::object_key(guard.as_ref()));
    }
    result
}

/// Decides the next look by the error's category: a spec to fix waits for a change, a
/// conflict is looked at again in a minute, a transient error backs off exponentially.
pub fn error_policy<K: Kind>(
    obj: Arc<DeserializeGuard<K>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = crate::object_key(obj.as_ref());
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            kind: K::LABEL,
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
