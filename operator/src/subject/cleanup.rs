//! Deletion of a subject: every consumer it made goes (those in its status and one per site
//! of its swarm); an unreachable NATS is retried until `deletionTimeout`, then the finalizer
//! is removed with a Warning.

use crate::context::Context;
use crate::error::Error;
use crate::reconcile::finalize::{Cleanup, with_deadline};
use crate::{jetstream, nats_settings};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use qis_crds::constants::reason;
use qis_crds::{QisSubject, QisSwarm};

/// Deletes the consumers of `subject`.
pub async fn subject(subject: &QisSubject, ctx: &Context) -> Result<Action, Error> {
    let ns = subject.namespace().unwrap_or_default();
    let name = subject.name_any();
    let Some(swarm) = Api::<QisSwarm>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&subject.spec.swarm_ref.name)
        .await?
    else {
        // No swarm: its stream (and the consumers with it) is gone or retained without an owner.
        return Ok(Action::await_change());
    };
    let deleted = delete(subject, &swarm, ctx).await;
    let now = k8s_openapi::jiff::Timestamp::now();
    let (warning, reason, note) =
        match with_deadline(deleted, subject.meta(), ctx.config.deletion_timeout, now) {
            Cleanup::Done(n) => {
                let note = format!("deleted {n} consumer(s) of {name}");
                (false, "ConsumersDeleted", note)
            }
            Cleanup::Abandoned(e) => {
                let timeout = ctx.config.deletion_timeout;
                let note = format!("gave up deleting consumers after {timeout:?}: {e}");
                (true, reason::CLEANUP_ABANDONED, note)
            }
            Cleanup::Retry(e) => return Err(e),
        };
    ctx.event(
        &subject.object_ref(&()),
        warning,
        reason,
        "DeleteSubject",
        note,
    )
    .await;
    Ok(Action::await_change())
}

/// The consumers `subject` may have made: those in its status, and one per site of `swarm`.
pub fn made(subject: &QisSubject, swarm: &QisSwarm) -> Vec<String> {
    let mut names: Vec<String> = subject
        .status
        .iter()
        .flat_map(|s| s.consumers.iter().map(|c| c.name.clone()))
        .collect();
    for site in swarm.status.iter().flat_map(|s| s.sites.iter()) {
        let n = qis_crds::addressing::consumer_name(&subject.name_any(), &site.name);
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

async fn delete(subject: &QisSubject, swarm: &QisSwarm, ctx: &Context) -> Result<usize, Error> {
    let ns = subject.namespace().unwrap_or_default();
    let stream = qis_crds::addressing::stream_name(&ns, &subject.spec.swarm_ref.name);
    let settings = nats_settings::resolve(
        &ctx.client,
        &ns,
        swarm.spec.nats.as_ref(),
        &ctx.config.default_nats,
    )
    .await?;
    let js = ctx
        .pool
        .jetstream(&crate::object_key(swarm), &settings)
        .await?;
    let mut deleted = 0;
    for n in made(subject, swarm) {
        if jetstream::delete_consumer(&js, &stream, &n).await? {
            deleted += 1;
        }
    }
    Ok(deleted)
}
