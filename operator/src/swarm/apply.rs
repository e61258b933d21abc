//! Apply step of a swarm: the stream (created or put back), then, unless the stream belongs to
//! another swarm, the agents' RBAC, each site's outbox claim and Deployment, and the deletion
//! of Deployments and claims of sites that are gone. One site's failure (quota, admission,
//! 403, 429) is that site's: the others are applied. Returns what was applied.

use super::build::{Agents, DesiredSwarm, SiteAgents};
use super::validate::ValidatedSwarm;
use crate::apply::apply as server_side_apply;
use crate::context::Context;
use crate::error::Error;
use crate::jetstream::{self, StreamOutcome};
use crate::metrics::{KindLabel, WriteLabels};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Resource, ResourceExt};
use qis_crds::constants::{LABEL_SITE, LABEL_SWARM, MANAGED_BY, reason};
use qis_crds::{QisSwarm, SiteStatus};

const LABEL: &str = <QisSwarm as crate::reconcile::Kind>::LABEL;

/// What applying a swarm did.
#[derive(Debug)]
pub struct Applied {
    pub stream_name: String,
    pub stream: Result<StreamOutcome, Error>,
    pub agents: Result<AppliedAgents, Error>,
}

/// What applying the agents did: every desired site (a site whose Deployment failed keeps its
/// place, with the replicas last seen), the node-label values skipped, and each site's failure.
#[derive(Debug, Default)]
pub struct AppliedAgents {
    pub sites: Vec<SiteStatus>,
    pub skipped: Vec<String>,
    pub failures: Vec<(String, Error)>,
}

/// Applies `desired` (the stream through `js`).
pub async fn swarm(
    v: &ValidatedSwarm<'_>,
    ctx: &Context,
    js: Result<async_nats::jetstream::Context, Error>,
    desired: DesiredSwarm,
) -> Applied {
    let stream = match js {
        Ok(js) => stream(v.swarm, ctx, &js, &desired.stream).await,
        Err(e) => Err(e),
    };
    // Agents run even while NATS is away (they buffer at the edge), but never into a stream
    // that belongs to another swarm.
    let agents = match (&stream, desired.agents) {
        (Err(Error::Conflict { context, source }), _) => Err(Error::Conflict {
            context: context.clone(),
            source: source.clone(),
        }),
        (_, Ok(a)) => agents(v, ctx, a).await,
        (_, Err(e)) => Err(e),
    };
    Applied {
        stream_name: desired.stream.name,
        stream,
        agents,
    }
}

fn wrote(ctx: &Context, what: &'static str) {
    ctx.metrics
        .api_writes
        .get_or_create(&WriteLabels { kind: LABEL, what })
        .inc();
}

async fn stream(
    swarm: &QisSwarm,
    ctx: &Context,
    js: &async_nats::jetstream::Context,
    desired: &async_nats::jetstream::stream::Config,
) -> Result<StreamOutcome, Error> {
    let outcome = jetstream::ensure_stream(js, desired).await?;
    let reference = swarm.object_ref(&());
    if outcome.created {
        let note = format!("created stream {}", desired.name);
        ctx.event(&reference, false, "StreamCreated", "CreateStream", note)
            .await;
    } else if !outcome.reverted.is_empty() {
        ctx.metrics
            .drift_reverted
            .get_or_create(&KindLabel { kind: LABEL })
            .inc();
        let note = format!(
            "stream {} differed from the spec in {}; put back",
            desired.name,
            outcome.reverted.join(", ")
        );
        ctx.event(&reference, true, reason::DRIFTED, "RevertStream", note)
            .await;
    }
    Ok(outcome)
}

async fn agents(
    v: &ValidatedSwarm<'_>,
    ctx: &Context,
    desired: Agents,
) -> Result<AppliedAgents, Error> {
    rbac(v, ctx, &desired).await?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &v.namespace);
    let mut out = AppliedAgents {
        skipped: desired.skipped,
        ..AppliedAgents::default()
    };
    for site in &desired.sites {
        let (status, failures) = self::site(v, ctx, &deployments, site).await;
        out.sites.push(status);
        out.failures.extend(failures);
    }
    let names: Vec<String> = desired.sites.iter().map(|s| s.site.clone()).collect();
    remove_gone(v, ctx, &deployments, &names).await?;
    Ok(out)
}

async fn rbac(v: &ValidatedSwarm<'_>, ctx: &Context, desired: &Agents) -> Result<(), Error> {
    let (client, ns, name) = (&ctx.client, &v.namespace, &desired.account_name);
    let memo = &ctx.applied;
    let (_, w1) = server_side_apply(
        &Api::namespaced(client.clone(), ns),
        name,
        &desired.account,
        memo,
    )
    .await?;
    let (_, w2) = server_side_apply(
        &Api::namespaced(client.clone(), ns),
        name,
        &desired.role,
        memo,
    )
    .await?;
    let (_, w3) = server_side_apply(
        &Api::namespaced(client.clone(), ns),
        name,
        &desired.binding,
        memo,
    )
    .await?;
    if w1 || w2 || w3 {
        wrote(ctx, "rbac");
    }
    Ok(())
}

/// One site: the outbox claim first (the Deployment mounts it; a claim that cannot be applied
/// fails its site, and the Deployment is applied still, on the live claim), then the Deployment.
async fn site(
    v: &ValidatedSwarm<'_>,
    ctx: &Context,
    deployments: &Api<Deployment>,
    site: &SiteAgents,
) -> (SiteStatus, Vec<(String, Error)>) {
    let mut failures = Vec::new();
    let claim_failure = match crate::outbox_claims::apply(ctx, v.swarm, &site.site).await {
        Ok(written) => {
            if written {
                wrote(ctx, "claim");
            }
            None
        }
        Err(e) => {
            tracing::warn!(site = %site.site, error = %e, "site's outbox claim not applied");
            Some(e)
        }
    };
    let applied = server_side_apply(
        deployments,
        &site.deployment_name,
        &site.deployment,
        &ctx.applied,
    )
    .await;
    let ready_replicas = match applied {
        Ok((live, written)) => {
            if written {
                wrote(ctx, "deployment");
            }
            live.status.and_then(|s| s.ready_replicas).unwrap_or(0)
        }
        Err(e) => {
            tracing::warn!(site = %site.site, error = %e, "site's Deployment not applied");
            failures.push((site.site.clone(), e));
            last_seen_ready(v.swarm, &site.site)
        }
    };
    failures.extend(claim_failure.map(|e| (site.site.clone(), e)));
    let status = SiteStatus {
        name: site.site.clone(),
        deployment: site.deployment_name.clone(),
        desired_replicas: site.replicas,
        ready_replicas,
    };
    (status, failures)
}

fn last_seen_ready(swarm: &QisSwarm, site: &str) -> i32 {
    swarm
        .status
        .as_ref()
        .and_then(|st| st.sites.iter().find(|s| s.name == site))
        .map_or(0, |s| s.ready_replicas)
}

/// Deletes the Deployments and outbox claims of sites not in `sites`.
async fn remove_gone(
    v: &ValidatedSwarm<'_>,
    ctx: &Context,
    deployments: &Api<Deployment>,
    sites: &[String],
) -> Result<(), Error> {
    let reference = v.swarm.object_ref(&());
    let selector = format!(
        "{LABEL_SWARM}={},app.kubernetes.io/managed-by={MANAGED_BY}",
        v.name
    );
    let listed = deployments
        .list(&ListParams::default().labels(&selector))
        .await?;
    for old in listed.items {
        let site = old.labels().get(LABEL_SITE).cloned().unwrap_or_default();
        if !sites.contains(&site) {
            deployments
                .delete(&old.name_any(), &DeleteParams::background())
                .await?;
            wrote(ctx, "deployment-delete");
            let note = format!("site {site} is gone; deleted {}", old.name_any());
            ctx.event(&reference, false, "SiteRemoved", "DeleteDeployment", note)
                .await;
        }
    }
    for claim in crate::outbox_claims::prune(ctx, v.swarm, sites).await? {
        wrote(ctx, "claim-delete");
        let note = format!("{claim} is no longer used by a site; deleted");
        ctx.event(&reference, false, "OutboxClaimRemoved", "DeleteClaim", note)
            .await;
    }
    Ok(())
}
