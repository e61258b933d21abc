//! The finalizer of both kinds, and the deadline of a cleanup: an unreachable NATS is retried
//! with backoff until `deletionTimeout`, then the cleanup is abandoned (with a Warning) so
//! that the object can go.

use super::Kind;
use crate::context::Context;
use crate::error::Error;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event};
use std::sync::Arc;
use std::time::Duration;

/// Runs `apply`, or `cleanup` once the object is being deleted, under `K::FINALIZER`.
pub async fn run<K: Kind>(obj: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    finalizer::finalizer(&api, K::FINALIZER, obj, |event| async {
        match event {
            Event::Apply(o) => o.apply(ctx).await,
            Event::Cleanup(o) => o.cleanup(ctx).await,
        }
    })
    .await
    .map_err(own_error)
}

/// The reconciler's own error out of a finalizer error.
fn own_error(e: finalizer::Error<Error>) -> Error {
    match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer {
            source: other.into(),
        },
    }
}

/// What became of one cleanup attempt.
#[derive(Debug)]
pub enum Cleanup<T> {
    /// It worked.
    Done(T),
    /// It failed past the deadline: the finalizer goes, what is left stays.
    Abandoned(Error),
    /// It failed within the deadline: retried with backoff.
    Retry(Error),
}

/// Sorts a cleanup attempt of an object (deleted at `meta.deletionTimestamp`) at `now`.
pub fn with_deadline<T>(
    result: Result<T, Error>,
    meta: &ObjectMeta,
    timeout: Duration,
    now: Timestamp,
) -> Cleanup<T> {
    match result {
        Ok(v) => Cleanup::Done(v),
        Err(e) if overdue(meta, timeout, now) => Cleanup::Abandoned(e),
        Err(e) => Cleanup::Retry(e),
    }
}

/// Has this object been waiting for deletion longer than `timeout`?
fn overdue(meta: &ObjectMeta, timeout: Duration, now: Timestamp) -> bool {
    meta.deletion_timestamp
        .as_ref()
        .is_some_and(|t| now.duration_since(t.0).unsigned_abs() > timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn deleted_at(s: &str) -> ObjectMeta {
        ObjectMeta {
            deletion_timestamp: Some(Time(s.parse().expect("timestamp"))),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_failed_cleanup_is_retried_until_the_deadline_then_abandoned() {
        let meta = deleted_at("2026-01-01T00:00:00Z");
        let timeout = Duration::from_secs(300);
        let early: Timestamp = "2026-01-01T00:04:59Z".parse().expect("timestamp");
        let late: Timestamp = "2026-01-01T00:05:01Z".parse().expect("timestamp");
        let down = || {
            Err::<(), _>(Error::Nats {
                context: "down".into(),
                source: std::io::Error::other("refused").into(),
            })
        };
        assert!(matches!(
            with_deadline(down(), &meta, timeout, early),
            Cleanup::Retry(Error::Nats { .. })
        ));
        assert!(matches!(
            with_deadline(down(), &meta, timeout, late),
            Cleanup::Abandoned(Error::Nats { .. })
        ));
        assert!(matches!(
            with_deadline(Ok(3), &meta, timeout, late),
            Cleanup::Done(3)
        ));
        // Not being deleted: never overdue.
        assert!(matches!(
            with_deadline(down(), &ObjectMeta::default(), timeout, late),
            Cleanup::Retry(_)
        ));
    }
}
