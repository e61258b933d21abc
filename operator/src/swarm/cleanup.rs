//! Deletion of a swarm: the stream goes (policy `delete`) or stays (`retain`); an unreachable
//! NATS is retried with backoff until `deletionTimeout`, then the finalizer is removed with a
//! Warning.

use crate::context::Context;
use crate::error::Error;
use crate::reconcile::finalize::{Cleanup, with_deadline};
use crate::{jetstream, nats_settings};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use qis_crds::constants::reason;
use qis_crds::{DeletionPolicy, QisSwarm};

/// Deletes (or keeps) the stream of `swarm`.
pub async fn swarm(swarm: &QisSwarm, ctx: &Context) -> Result<Action, Error> {
    let ns = swarm.namespace().unwrap_or_default();
    let key = crate::object_key(swarm);
    let reference = swarm.object_ref(&());
    let stream = qis_crds::addressing::stream_name(&ns, &swarm.name_any());
    let (warning, reason, note) = if swarm.spec.deletion_policy == DeletionPolicy::Retain {
        let note = format!("deletionPolicy retain: stream {stream} kept");
        (false, "StreamRetained", note)
    } else {
        let deleted = delete(swarm, ctx, &ns, &stream).await;
        let now = k8s_openapi::jiff::Timestamp::now();
        match with_deadline(deleted, swarm.meta(), ctx.config.deletion_timeout, now) {
            Cleanup::Done(true) => (false, "StreamDeleted", format!("deleted stream {stream}")),
            Cleanup::Done(false) => {
                let note = format!("stream {stream} was already gone");
                (false, "StreamDeleted", note)
            }
            Cleanup::Abandoned(e) => {
                let note = format!(
                    "gave up deleting stream {stream} after {:?}: {e}; it is left in NATS",
                    ctx.config.deletion_timeout
                );
                tracing::warn!(swarm = %key, "{note}");
                (true, reason::CLEANUP_ABANDONED, note)
            }
            Cleanup::Retry(e) => return Err(e),
        }
    };
    ctx.event(&reference, warning, reason, "DeleteSwarm", note)
        .await;
    ctx.pool.release(&key).await;
    ctx.metrics.sites.forget(&ns, &swarm.name_any());
    Ok(Action::await_change())
}

async fn delete(swarm: &QisSwarm, ctx: &Context, ns: &str, stream: &str) -> Result<bool, Error> {
    let settings = nats_settings::resolve(
        &ctx.client,
        ns,
        swarm.spec.nats.as_ref(),
        &ctx.config.default_nats,
    )
    .await?;
    let js = ctx
        .pool
        .jetstream(&crate::object_key(swarm), &settings)
        .await?;
    jetstream::delete_stream(&js, stream).await
}
