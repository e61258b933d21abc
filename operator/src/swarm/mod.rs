//! Reconcile of a `QisSwarm`, a short driver over its steps, one module each: validate →
//! dereference (NATS, Nodes) → build (pure: stream, agent RBAC, one Deployment per site) →
//! apply → status (pure). The finalizer guards the stream, which Kubernetes cannot
//! garbage-collect ([`cleanup`]); Deployments and RBAC go with their owner reference.

pub mod apply;
pub mod build;
pub mod cleanup;
pub mod dereference;
pub mod status;
pub mod validate;

use crate::context::Context;
use crate::error::Error;
use crate::reconcile::{Kind, status_write};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use qis_crds::constants::SWARM_FINALIZER;
use qis_crds::{QisSwarm, QisSwarmStatus};
use std::time::Duration;

impl Kind for QisSwarm {
    const LABEL: &'static str = "swarm";
    const FINALIZER: &'static str = SWARM_FINALIZER;

    async fn apply(&self, ctx: &Context) -> Result<Action, Error> {
        reconcile(self, ctx).await
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        cleanup::swarm(self, ctx).await
    }
}

/// Makes the world match the swarm, then reports what it found.
async fn reconcile(swarm: &QisSwarm, ctx: &Context) -> Result<Action, Error> {
    let v = match validate::swarm(swarm, ctx.config.site_discovery) {
        Ok(v) => v,
        Err(e) => {
            write(ctx, swarm, status::refused(swarm, &e, now())).await?;
            return Err(e);
        }
    };
    let found = dereference::swarm(&v, ctx).await;
    let desired = build::swarm(&v, found.nodes, &ctx.config.defaults);
    let applied = apply::swarm(&v, ctx, found.jetstream, desired).await;
    let new = status::next(swarm, &v.prefix, v.discovery_disabled, &applied, now());
    if let Some(in_force) = new.as_ref().or(swarm.status.as_ref()) {
        ctx.metrics
            .sites
            .record(&v.namespace, &v.name, &in_force.sites);
    }
    write(ctx, swarm, new).await?;
    outcome(applied, ctx.config.resync)
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn write(ctx: &Context, swarm: &QisSwarm, new: Option<QisSwarmStatus>) -> Result<(), Error> {
    let Some(new) = new else { return Ok(()) };
    let old = swarm.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    status_write::write(ctx, swarm, old, &new.conditions, &new).await
}

/// The reconcile's result: the stream's error, else the first site's, else a look again at
/// the next resync.
pub fn outcome(applied: apply::Applied, resync: Duration) -> Result<Action, Error> {
    applied.stream?;
    match applied.agents?.failures.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(Action::requeue(resync)),
    }
}
