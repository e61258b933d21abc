//! Reconcile of a `QisSubject`, a short driver over its steps, one module each: validate →
//! dereference (its swarm, NATS) → build (pure: one durable pull consumer per site of the
//! swarm, filtered on the subject's address) → apply (consumers of sites that are gone are
//! deleted) → status (pure). The finalizer deletes them all ([`cleanup`]). The agents write
//! `status.consensus`; this reconciler owns the conditions, the address and the consumers.

pub mod apply;
pub mod build;
pub mod cleanup;
pub mod dereference;
pub mod status;
pub mod validate;

use crate::context::Context;
use crate::error::Error;
use crate::reconcile::{Kind, status_write};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use qis_crds::constants::SUBJECT_FINALIZER;
use qis_crds::{QisSubject, QisSubjectStatus};
use std::time::Duration;

impl Kind for QisSubject {
    const LABEL: &'static str = "subject";
    const FINALIZER: &'static str = SUBJECT_FINALIZER;

    async fn apply(&self, ctx: &Context) -> Result<Action, Error> {
        reconcile(self, ctx).await
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        cleanup::subject(self, ctx).await
    }
}

async fn reconcile(subject: &QisSubject, ctx: &Context) -> Result<Action, Error> {
    let v = match validate::subject(subject) {
        Ok(v) => v,
        Err(e) => {
            write(ctx, subject, status::blocked(subject, &e, now())).await?;
            return Err(e);
        }
    };
    let found = match dereference::subject(&v, ctx).await {
        Ok(found) => found,
        Err(e) => {
            write(ctx, subject, status::blocked(subject, &e, now())).await?;
            return waiting(e, ctx.config.resync);
        }
    };
    let desired = build::subject(&v, &found.swarm);
    let applied = apply::subject(&v, ctx, found.jetstream, &desired).await;
    let swarm = found.swarm.swarm.name_any();
    let new = status::next(subject, &desired, &swarm, &applied, now());
    write(ctx, subject, new).await?;
    applied?;
    Ok(Action::requeue(ctx.config.resync))
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// A subject waiting for its swarm looks again at the next resync (the swarm watch wakes it
/// sooner when the swarm appears or changes); any other error is retried with backoff.
pub fn waiting(e: Error, resync: Duration) -> Result<Action, Error> {
    match e {
        Error::Waiting(_) | Error::SwarmNotFound { .. } => Ok(Action::requeue(resync)),
        other => Err(other),
    }
}

async fn write(
    ctx: &Context,
    subject: &QisSubject,
    new: Option<QisSubjectStatus>,
) -> Result<(), Error> {
    let Some(new) = new else { return Ok(()) };
    let old = subject
        .status
        .as_ref()
        .map_or(&[][..], |s| &s.conditions[..]);
    status_write::write(ctx, subject, old, &new.conditions, &new).await
}
