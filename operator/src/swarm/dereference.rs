//! Dereference step of a swarm: everything read from outside before anything is built or
//! applied: the JetStream connection (its settings may name a Secret) and the Nodes its sites
//! are discovered on. A failure is kept, not returned: agents run while NATS is away, and the
//! stream is applied when Nodes cannot be listed.

use super::validate::ValidatedSwarm;
use crate::context::Context;
use crate::error::Error;
use crate::nats_settings;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

/// What a swarm's reconcile read.
#[derive(Debug)]
pub struct Found {
    pub jetstream: Result<async_nats::jetstream::Context, Error>,
    pub nodes: Result<Vec<Node>, Error>,
}

/// Reads what `v` needs.
pub async fn swarm(v: &ValidatedSwarm<'_>, ctx: &Context) -> Found {
    Found {
        jetstream: jetstream(v, ctx).await,
        nodes: nodes(v, ctx).await,
    }
}

async fn jetstream(
    v: &ValidatedSwarm<'_>,
    ctx: &Context,
) -> Result<async_nats::jetstream::Context, Error> {
    let settings = nats_settings::resolve(
        &ctx.client,
        &v.namespace,
        v.swarm.spec.nats.as_ref(),
        &ctx.config.default_nats,
    )
    .await?;
    ctx.pool
        .jetstream(&crate::object_key(v.swarm), &settings)
        .await
}

async fn nodes(v: &ValidatedSwarm<'_>, ctx: &Context) -> Result<Vec<Node>, Error> {
    let Some(label) = &v.node_label else {
        return Ok(vec![]);
    };
    Ok(Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default().labels(label))
        .await?
        .items)
}
