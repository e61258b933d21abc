//! Dereference step of a subject: its swarm (from the operator's cache of swarms, a watch,
//! not a GET per reconcile: a swarm that appears or changes wakes its subjects once the cache
//! has it) and the JetStream connection of that swarm. No swarm, or no stream ready yet, is
//! an error that waits; a failed connection is kept for the apply step to report.

use super::validate::ValidatedSubject;
use crate::conditions;
use crate::context::Context;
use crate::error::{Error, Wait};
use crate::nats_settings;
use kube::ResourceExt;
use qis_crds::QisSwarm;
use qis_crds::constants::condition;
use std::sync::Arc;

/// The swarm of a subject, with what the subject needs of it.
#[derive(Debug, Clone)]
pub struct SwarmView {
    pub swarm: Arc<QisSwarm>,
    pub prefix: String,
    pub stream: String,
    pub sites: Vec<String>,
}

/// What a subject's reconcile read.
#[derive(Debug)]
pub struct Found {
    pub swarm: SwarmView,
    pub jetstream: Result<async_nats::jetstream::Context, Error>,
}

/// Reads what `v` needs: `Err` while its swarm is missing or has no stream ready.
pub async fn subject(v: &ValidatedSubject<'_>, ctx: &Context) -> Result<Found, Error> {
    let name = &v.subject.spec.swarm_ref.name;
    let swarm = ctx
        .swarm(&v.namespace, name)
        .await
        .map_err(|problem| Wait::SwarmUnreadable {
            swarm: name.clone(),
            problem,
        })?
        .ok_or_else(|| Error::SwarmNotFound {
            swarm: name.clone(),
        })?;
    let swarm = view(&v.namespace, swarm)?;
    let jetstream = jetstream(&v.namespace, &swarm.swarm, ctx).await;
    Ok(Found { swarm, jetstream })
}

/// What a subject needs of `swarm`, once its stream is ready.
pub fn view(namespace: &str, swarm: Arc<QisSwarm>) -> Result<SwarmView, Error> {
    let name = swarm.name_any();
    let status = swarm.status.clone().unwrap_or_default();
    if conditions::is_true(&status.conditions, condition::STREAM_READY) != Some(true) {
        return Err(Wait::StreamNotReady { swarm: name }.into());
    }
    Ok(SwarmView {
        prefix: status
            .subject_prefix
            .clone()
            .unwrap_or_else(|| crate::stream_config::prefix(namespace, &name, &swarm.spec)),
        stream: qis_crds::addressing::stream_name(namespace, &name),
        sites: status.sites.iter().map(|s| s.name.clone()).collect(),
        swarm,
    })
}

async fn jetstream(
    namespace: &str,
    swarm: &QisSwarm,
    ctx: &Context,
) -> Result<async_nats::jetstream::Context, Error> {
    let settings = nats_settings::resolve(
        &ctx.client,
        namespace,
        swarm.spec.nats.as_ref(),
        &ctx.config.default_nats,
    )
    .await?;
    ctx.pool
        .jetstream(&crate::object_key(swarm), &settings)
        .await
}
