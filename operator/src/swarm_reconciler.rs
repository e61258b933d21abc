//! Reconcile of a `QisSwarm`: validate → build (pure) → apply (JetStream stream, agent RBAC,
//! one Deployment per site) → status. The finalizer guards the stream, which Kubernetes cannot
//! garbage-collect; Deployments and RBAC go with their owner reference.

use crate::conditions::{self, Desired};
use crate::context::Context;
use crate::error::Error;
use crate::jetstream::{self as js_apply, StreamOutcome};
use crate::metrics::KindLabel;
use crate::sites::{self, Sites};
use crate::{apply, nats_settings, stream_config, validate, workload};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::{Resource, ResourceExt};
use qis_crds::constants::{LABEL_SITE, LABEL_SWARM, SWARM_FINALIZER, condition, reason};
use qis_crds::{DeletionPolicy, QisSwarm, QisSwarmStatus, SiteStatus, StreamStatus};
use std::sync::Arc;
use std::time::Instant;

const KIND: &str = "swarm";

/// Entry point of the swarm controller.
pub async fn reconcile(
    guard: Arc<DeserializeGuard<QisSwarm>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics
        .reconciles
        .get_or_create(&KindLabel { kind: KIND })
        .inc();
    let result = crate::contain::reconcile_contained(guard.as_ref(), &ctx, async {
        match &guard.0 {
            Ok(swarm) => reconcile_readable(Arc::new(swarm.clone()), &ctx).await,
            Err(invalid) => {
                crate::unreadable::report::<QisSwarm>(invalid, SWARM_FINALIZER, &ctx).await
            }
        }
    })
    .await;
    ctx.metrics.observe(KIND, started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&crate::object_key(guard.as_ref()));
    }
    result
}

async fn reconcile_readable(swarm: Arc<QisSwarm>, ctx: &Context) -> Result<Action, Error> {
    let ns = swarm.namespace().unwrap_or_default();
    let api: Api<QisSwarm> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer::finalizer(&api, SWARM_FINALIZER, swarm, |event| async {
        match event {
            FinalizerEvent::Apply(s) => apply(&s, ctx).await,
            FinalizerEvent::Cleanup(s) => cleanup(&s, ctx).await,
        }
    })
    .await
    .map_err(crate::finalizer_error)
}

/// Makes the world match the swarm, then reports what it found.
async fn apply(swarm: &QisSwarm, ctx: &Context) -> Result<Action, Error> {
    let ns = swarm.namespace().unwrap_or_default();
    let name = swarm.name_any();
    let reference = swarm.object_ref(&());
    // What subjects read to decide which consumers to keep: a failure never shrinks it (under
    // server-side apply a status written without `sites` removes the field, and every subject
    // would then delete all its consumers).
    let previous_sites = swarm
        .status
        .as_ref()
        .map(|s| s.sites.clone())
        .unwrap_or_default();
    if let Err(e) = validate::swarm(&swarm.spec) {
        let c = failed_conditions(&e);
        write_status(swarm, ctx, c, None, None, previous_sites).await?;
        return Err(e);
    }
    let prefix = stream_config::prefix(&ns, &name, &swarm.spec);
    let desired = stream_config::desired(&ns, &name, &swarm.spec);

    let stream = ensure_stream(swarm, ctx, &desired).await;
    match &stream {
        Ok(o) if o.created => {
            ctx.event(
                &reference,
                false,
                "StreamCreated",
                "CreateStream",
                format!("created stream {}", desired.name),
            )
            .await
        }
        Ok(o) if !o.reverted.is_empty() => {
            ctx.metrics
                .drift_reverted
                .get_or_create(&KindLabel { kind: KIND })
                .inc();
            let note = format!(
                "stream {} differed from the spec in {}; put back",
                desired.name,
                o.reverted.join(", ")
            );
            ctx.event(&reference, true, reason::DRIFTED, "RevertStream", note)
                .await;
        }
        _ => {}
    }

    // Agents run even while NATS is away (they buffer at the edge), but never into a stream
    // that belongs to another swarm.
    let agents = match &stream {
        Err(Error::Conflict(m)) => Err(Error::Conflict(m.clone())),
        _ => apply_agents(swarm, ctx, &prefix, &desired.name).await,
    };

    let stream_cond = match &stream {
        Ok(o) => Desired::new(
            condition::STREAM_READY,
            true,
            reason::RECONCILED,
            format!(
                "stream {}: {} messages, {} bytes",
                desired.name, o.state.messages, o.state.bytes
            ),
        ),
        Err(e) => Desired::new(condition::STREAM_READY, false, e.reason(), e.to_string()),
    };
    let (agents_cond, site_status) = match &agents {
        Ok(a) => match a.failures.first() {
            None if a.discovery_disabled => (
                Desired::new(
                    condition::AGENTS_READY,
                    false,
                    reason::SITE_DISCOVERY_DISABLED,
                    format!(
                        "spec.siteDiscovery is set, but this operator runs without node access \
                         (--watch-nodes=false; chart siteDiscovery.enabled=false): only the {} \
                         site(s) of spec.sites run",
                        a.sites.len()
                    ),
                ),
                a.sites.clone(),
            ),
            None => (
                agents_condition(&a.sites, &a.skipped, &swarm.spec),
                a.sites.clone(),
            ),
            Some((site, e)) => (
                Desired::new(
                    condition::AGENTS_READY,
                    false,
                    e.reason(),
                    format!(
                        "{} of {} site(s) failed; site {site}: {e}",
                        a.failures.len(),
                        a.sites.len()
                    ),
                ),
                a.sites.clone(),
            ),
        },
        Err(e) => (
            Desired::new(condition::AGENTS_READY, false, e.reason(), e.to_string()),
            previous_sites,
        ),
    };
    let ready = match [&stream_cond, &agents_cond].into_iter().find(|c| !c.ok) {
        None => Desired::new(
            condition::READY,
            true,
            reason::RECONCILED,
            format!("stream and {} site(s) ready", site_status.len()),
        ),
        Some(c) => Desired::new(condition::READY, false, &c.reason, c.message.clone()),
    };
    let stream_status = stream.as_ref().ok().map(|o| StreamStatus {
        name: desired.name.clone(),
        messages: o.state.messages,
        bytes: o.state.bytes,
        first_seq: o.state.first_sequence,
        last_seq: o.state.last_sequence,
        consumers: o.state.consumer_count as u64,
    });
    write_status(
        swarm,
        ctx,
        vec![ready, stream_cond, agents_cond],
        Some(prefix),
        stream_status,
        site_status,
    )
    .await?;
    stream?;
    if let Some((_, e)) = agents?.failures.into_iter().next() {
        return Err(e);
    }
    Ok(Action::requeue(ctx.config.resync))
}

/// What applying the agents did: every desired site (a site whose Deployment failed keeps its
/// place, with the replicas last seen), the node-label values skipped, and each site's failure.
struct Agents {
    sites: Vec<SiteStatus>,
    skipped: Vec<String>,
    failures: Vec<(String, Error)>,
    /// The spec asks for discovery and this operator may not read Nodes.
    discovery_disabled: bool,
}

async fn ensure_stream(
    swarm: &QisSwarm,
    ctx: &Context,
    desired: &async_nats::jetstream::stream::Config,
) -> Result<StreamOutcome, Error> {
    let ns = swarm.namespace().unwrap_or_default();
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
    js_apply::ensure_stream(&js, desired).await
}

fn failed_conditions(e: &Error) -> Vec<Desired> {
    [
        condition::READY,
        condition::STREAM_READY,
        condition::AGENTS_READY,
    ]
    .into_iter()
    .map(|t| Desired::new(t, false, e.reason(), e.to_string()))
    .collect()
}

fn agents_condition(
    sites: &[SiteStatus],
    skipped: &[String],
    spec: &qis_crds::QisSwarmSpec,
) -> Desired {
    let mut notes = Vec::new();
    if !skipped.is_empty() {
        notes.push(format!(
            "node label values that are not DNS labels were skipped: {}",
            skipped.join(", ")
        ));
    }
    if sites.is_empty() {
        let label = spec
            .site_discovery
            .as_ref()
            .map(|d| d.node_label.as_str())
            .unwrap_or("qis.dev/site");
        notes.insert(0, format!("no site: no node carries the label {label}"));
        return Desired::new(
            condition::AGENTS_READY,
            false,
            reason::PROGRESSING,
            notes.join("; "),
        );
    }
    let ready = sites
        .iter()
        .filter(|s| s.ready_replicas >= s.desired_replicas)
        .count();
    notes.insert(
        0,
        format!("{ready}/{} sites have their agents ready", sites.len()),
    );
    Desired::new(
        condition::AGENTS_READY,
        ready == sites.len(),
        if ready == sites.len() {
            reason::RECONCILED
        } else {
            reason::PROGRESSING
        },
        notes.join("; "),
    )
}

/// Applies the agents' RBAC and one Deployment per site; deletes Deployments of sites that
/// are gone. One site's failure (quota, admission, 403, 429) is that site's: the others are
/// applied, and the site stays in the status.
async fn apply_agents(
    swarm: &QisSwarm,
    ctx: &Context,
    prefix: &str,
    stream: &str,
) -> Result<Agents, Error> {
    let ns = swarm.namespace().unwrap_or_default();
    let name = swarm.name_any();
    let writes = |what: &'static str| {
        ctx.metrics
            .api_writes
            .get_or_create(&crate::metrics::WriteLabels { kind: KIND, what })
            .inc()
    };
    let account = workload::agent_account_name(&name);
    let memo = &ctx.applied;
    let sa = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns);
    let (_, w1) = apply::apply(&sa, &account, &workload::service_account(swarm), memo).await?;
    let roles = Api::<Role>::namespaced(ctx.client.clone(), &ns);
    let (_, w2) = apply::apply(&roles, &account, &workload::role(swarm), memo).await?;
    let bindings = Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns);
    let (_, w3) = apply::apply(&bindings, &account, &workload::role_binding(swarm), memo).await?;
    if w1 || w2 || w3 {
        writes("rbac");
    }

    // Without node access (chart `siteDiscovery.enabled=false`) only the listed sites run;
    // the swarm is told why its discovered ones do not.
    let discovery_disabled = swarm.spec.site_discovery.is_some() && !ctx.config.site_discovery;
    let nodes = match &swarm.spec.site_discovery {
        Some(d) if ctx.config.site_discovery => {
            Api::<Node>::all(ctx.client.clone())
                .list(&ListParams::default().labels(&d.node_label))
                .await?
                .items
        }
        _ => vec![],
    };
    let Sites { sites, skipped } = sites::resolve(&swarm.spec, &nodes);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = Vec::with_capacity(sites.len());
    let mut failures = Vec::new();
    for site in &sites {
        // The outbox claim first: the Deployment mounts it. A claim that cannot be applied
        // fails its site (reported); the Deployment is applied still, on the live claim.
        let claim_failure = match crate::outbox_claims::apply(ctx, swarm, &site.name).await {
            Ok(written) => {
                if written {
                    writes("claim");
                }
                None
            }
            Err(e) => {
                tracing::warn!(site = %site.name, error = %e, "site's outbox claim not applied");
                Some(e)
            }
        };
        let d = workload::deployment(swarm, site, prefix, stream, &ctx.config.defaults);
        let dname = workload::deployment_name(&name, &site.name);
        let ready_replicas = match apply::apply(&deployments, &dname, &d, memo).await {
            Ok((live, written)) => {
                if written {
                    writes("deployment");
                }
                live.status.and_then(|s| s.ready_replicas).unwrap_or(0)
            }
            Err(e) => {
                tracing::warn!(site = %site.name, error = %e, "site's Deployment not applied");
                failures.push((site.name.clone(), e));
                swarm
                    .status
                    .as_ref()
                    .and_then(|st| st.sites.iter().find(|s| s.name == site.name))
                    .map_or(0, |s| s.ready_replicas)
            }
        };
        if let Some(e) = claim_failure {
            failures.push((site.name.clone(), e));
        }
        out.push(SiteStatus {
            name: site.name.clone(),
            deployment: dname,
            desired_replicas: site.replicas,
            ready_replicas,
        });
    }
    let selector = format!(
        "{LABEL_SWARM}={name},app.kubernetes.io/managed-by={}",
        qis_crds::constants::MANAGED_BY
    );
    for old in deployments
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let site = old.labels().get(LABEL_SITE).cloned().unwrap_or_default();
        if !sites.iter().any(|s| s.name == site) {
            deployments
                .delete(&old.name_any(), &DeleteParams::background())
                .await?;
            writes("deployment-delete");
            ctx.event(
                &swarm.object_ref(&()),
                false,
                "SiteRemoved",
                "DeleteDeployment",
                format!("site {site} is gone; deleted {}", old.name_any()),
            )
            .await;
        }
    }
    let names: Vec<String> = sites.iter().map(|s| s.name.clone()).collect();
    for claim in crate::outbox_claims::prune(ctx, swarm, &names).await? {
        writes("claim-delete");
        ctx.event(
            &swarm.object_ref(&()),
            false,
            "OutboxClaimRemoved",
            "DeleteClaim",
            format!("{claim} is no longer used by a site; deleted"),
        )
        .await;
    }
    Ok(Agents {
        sites: out,
        skipped,
        failures,
        discovery_disabled,
    })
}

/// Writes the status when it differs (conditions compared without timestamps), and records
/// an event when `Ready` changes.
async fn write_status(
    swarm: &QisSwarm,
    ctx: &Context,
    desired: Vec<Desired>,
    prefix: Option<String>,
    stream: Option<StreamStatus>,
    sites: Vec<SiteStatus>,
) -> Result<(), Error> {
    let old = swarm.status.clone().unwrap_or_default();
    let generation = swarm.metadata.generation;
    let now = Time(jiff_now());
    let conditions = conditions::merge(&old.conditions, &desired, generation, now);
    let new = QisSwarmStatus {
        observed_generation: generation,
        conditions,
        subject_prefix: prefix.or(old.subject_prefix.clone()),
        stream: stream.or(old.stream.clone()),
        sites,
    };
    let unchanged = conditions::same(&old.conditions, &new.conditions)
        && old.observed_generation == new.observed_generation
        && old.subject_prefix == new.subject_prefix
        && old.stream == new.stream
        && old.sites == new.sites;
    if unchanged {
        return Ok(());
    }
    crate::transition_event(
        ctx,
        &swarm.object_ref(&()),
        &old.conditions,
        &new.conditions,
    )
    .await;
    apply::apply_status(ctx, swarm, &new, KIND).await?;
    Ok(())
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// Deletion: the stream goes (policy `delete`) or stays (`retain`); an unreachable NATS is
/// retried with backoff until `deletionTimeout`, then the finalizer is removed with a Warning.
async fn cleanup(swarm: &QisSwarm, ctx: &Context) -> Result<Action, Error> {
    let ns = swarm.namespace().unwrap_or_default();
    let name = swarm.name_any();
    let key = crate::object_key(swarm);
    let reference = swarm.object_ref(&());
    let stream = qis_crds::addressing::stream_name(&ns, &name);
    if swarm.spec.deletion_policy == DeletionPolicy::Retain {
        ctx.event(
            &reference,
            false,
            "StreamRetained",
            "DeleteSwarm",
            format!("deletionPolicy retain: stream {stream} kept"),
        )
        .await;
        ctx.pool.release(&key).await;
        return Ok(Action::await_change());
    }
    let result = async {
        let settings = nats_settings::resolve(
            &ctx.client,
            &ns,
            swarm.spec.nats.as_ref(),
            &ctx.config.default_nats,
        )
        .await?;
        let js = ctx.pool.jetstream(&key, &settings).await?;
        js_apply::delete_stream(&js, &stream).await
    }
    .await;
    match result {
        Ok(existed) => {
            let note = if existed {
                format!("deleted stream {stream}")
            } else {
                format!("stream {stream} was already gone")
            };
            ctx.event(&reference, false, "StreamDeleted", "DeleteSwarm", note)
                .await;
            ctx.pool.release(&key).await;
            Ok(Action::await_change())
        }
        Err(e) if crate::deletion_overdue(swarm.meta(), ctx.config.deletion_timeout) => {
            let note = format!(
                "gave up deleting stream {stream} after {:?}: {e}; it is left in NATS",
                ctx.config.deletion_timeout
            );
            tracing::warn!(swarm = %key, "{note}");
            ctx.event(
                &reference,
                true,
                reason::CLEANUP_ABANDONED,
                "DeleteSwarm",
                note,
            )
            .await;
            ctx.pool.release(&key).await;
            Ok(Action::await_change())
        }
        Err(e) => Err(e),
    }
}
