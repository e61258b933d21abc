//! One object cannot stop the others: a panic inside one reconcile (a bug, whatever input set
//! it off) is caught there, reported on that object (a Warning event `ReconcilePanicked`, the
//! `qis_operator_reconcile_errors_total` metric) and retried with backoff, while the controller
//! goes on with every other object. Without this, the panic unwound through the controller's
//! stream and stopped reconciling every object of that kind.
//!
//! This needs unwinding: the release profile keeps `panic = "unwind"` (see the workspace
//! `Cargo.toml`). A panic outside a reconcile (the watches, the HTTP server, the lease) aborts
//! the process, as `panic = "abort"` did ([`abort_outside_reconciles`]): a restarted pod is
//! better than one that looks alive and reconciles nothing.

use crate::context::Context;
use crate::error::Error;
use futures::FutureExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::controller::Action;
use qis_crds::constants::reason;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// The message a panic carried.
fn message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

tokio::task_local! {
    /// Set while a reconcile runs.
    static IN_RECONCILE: ();
}

/// Installs a panic hook that aborts the process after the usual report, unless the panic
/// happened inside a reconcile run by [`caught`].
pub fn abort_outside_reconciles() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if IN_RECONCILE.try_with(|_| ()).is_err() {
            std::process::abort();
        }
    }));
}

/// Runs `reconcile`; a panic inside it becomes [`Error::Panicked`].
pub async fn caught<F>(reconcile: F) -> Result<Action, Error>
where
    F: Future<Output = Result<Action, Error>>,
{
    // Unwind safety: the reconcile shares only the context (caches, pools, metrics behind
    // locks that recover from poisoning) and the object it read, which it does not mutate.
    let reconcile = IN_RECONCILE.scope((), reconcile);
    match AssertUnwindSafe(reconcile).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(Error::Panicked(message(panic.as_ref()))),
    }
}

/// Runs the reconcile of `obj` with [`caught`] and, if it panicked, reports it on the object.
pub async fn reconcile_contained<K, F>(
    obj: &K,
    ctx: &Context,
    reconcile: F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: Future<Output = Result<Action, Error>>,
{
    let result = caught(reconcile).await;
    if let Err(Error::Panicked(message)) = &result {
        let meta = obj.meta();
        tracing::error!(
            object = %crate::object_key(obj),
            panic = %message,
            "reconcile panicked; the other objects go on"
        );
        let reference = ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            ..Default::default()
        };
        let note = format!("the reconcile panicked (a bug; retried with backoff): {message}");
        ctx.event(
            &reference,
            true,
            reason::RECONCILE_PANICKED,
            "Reconcile",
            note,
        )
        .await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_a_reconcile_becomes_its_error() {
        let v: Vec<u8> = Vec::new();
        let index = v.len() + 3;
        let panicking = async move {
            let _ = v[index];
            Ok(Action::await_change())
        };
        match caught(panicking).await {
            Err(Error::Panicked(m)) => assert!(m.contains("index out of bounds"), "{m}"),
            other => panic!("{other:?}"),
        }
        let fine = caught(async { Ok(Action::await_change()) }).await;
        assert!(fine.is_ok());
        let later = crate::error::Wait::NoStream {
            what: "later".into(),
        };
        let failing = caught(async { Err(later.into()) }).await;
        assert!(matches!(failing, Err(Error::Waiting(_))));
    }
}
