//! Reconcile of a `QisSubject`: one durable pull consumer per site of its swarm, filtered on
//! the subject's address; consumers of sites that are gone are deleted; the finalizer deletes
//! them all. The agents write `status.consensus`; this reconciler owns the conditions, the
//! address and the consumer list.

use crate::conditions::{self, Desired};
use crate::context::Context;
use crate::error::Error;
use crate::metrics::KindLabel;
use crate::{
    apply, consumer_config, jetstream as js_apply, nats_settings, stream_config, validate,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::{Resource, ResourceExt};
use qis_crds::constants::{SUBJECT_FINALIZER, condition, reason};
use qis_crds::{ConsumerStatus, QisSubject, QisSubjectStatus, QisSwarm};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KIND: &str = "subject";
/// Parallel consumer requests per subject.
const CONCURRENCY: usize = 16;
/// A consensus older than this makes `Synthesizing` false.
pub const REPORT_STALE_AFTER: Duration = Duration::from_secs(600);

/// Entry point of the subject controller.
pub async fn reconcile(
    guard: Arc<DeserializeGuard<QisSubject>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics
        .reconciles
        .get_or_create(&KindLabel { kind: KIND })
        .inc();
    let result = crate::contain::reconcile_contained(guard.as_ref(), &ctx, async {
        match &guard.0 {
            Ok(subject) => {
                let api: Api<QisSubject> =
                    Api::namespaced(ctx.client.clone(), &subject.namespace().unwrap_or_default());
                finalizer::finalizer(
                    &api,
                    SUBJECT_FINALIZER,
                    Arc::new(subject.clone()),
                    |event| async {
                        match event {
                            FinalizerEvent::Apply(s) => apply(&s, &ctx).await,
                            FinalizerEvent::Cleanup(s) => cleanup(&s, &ctx).await,
                        }
                    },
                )
                .await
                .map_err(crate::finalizer_error)
            }
            Err(invalid) => {
                crate::unreadable::report::<QisSubject>(invalid, SUBJECT_FINALIZER, &ctx).await
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

/// The swarm of a subject, with what the subject needs of it.
struct SwarmView {
    swarm: std::sync::Arc<QisSwarm>,
    prefix: String,
    stream: String,
    sites: Vec<String>,
}

async fn swarm_view(subject: &QisSubject, ctx: &Context) -> Result<SwarmView, Error> {
    let ns = subject.namespace().unwrap_or_default();
    let swarm_name = &subject.spec.swarm_ref.name;
    // From the operator's cache of swarms (a watch), not a GET per reconcile: a swarm that
    // appears or changes wakes its subjects after the cache has it.
    let swarm = ctx
        .swarm(&ns, swarm_name)
        .await
        .map_err(|e| Error::Waiting(format!("swarm {swarm_name:?} cannot be read: {e}")))?
        .ok_or_else(|| Error::Waiting(format!("swarm {swarm_name:?} does not exist (yet)")))?;
    let status = swarm.status.clone().unwrap_or_default();
    if conditions::is_true(&status.conditions, condition::STREAM_READY) != Some(true) {
        return Err(Error::Waiting(format!(
            "swarm {swarm_name:?} has no stream ready yet"
        )));
    }
    Ok(SwarmView {
        prefix: status
            .subject_prefix
            .clone()
            .unwrap_or_else(|| stream_config::prefix(&ns, swarm_name, &swarm.spec)),
        stream: qis_crds::addressing::stream_name(&ns, swarm_name),
        sites: status.sites.iter().map(|s| s.name.clone()).collect(),
        swarm,
    })
}

async fn apply(subject: &QisSubject, ctx: &Context) -> Result<Action, Error> {
    let ns = subject.namespace().unwrap_or_default();
    let name = subject.name_any();
    let old = subject.status.clone().unwrap_or_default();
    if let Err(e) = validate::subject(&subject.spec) {
        write_status(
            subject,
            ctx,
            vec![
                fail(condition::READY, &e),
                fail(condition::CONSUMERS_READY, &e),
            ],
            old.address.clone(),
            old.consumers.clone(),
        )
        .await?;
        return Err(e);
    }
    let view = match swarm_view(subject, ctx).await {
        Ok(v) => v,
        Err(e) => {
            let reason = if matches!(e, Error::Waiting(ref m) if m.contains("does not exist")) {
                reason::SWARM_NOT_FOUND
            } else {
                e.reason()
            };
            let c = vec![
                Desired::new(condition::READY, false, reason, e.to_string()),
                Desired::new(condition::CONSUMERS_READY, false, reason, e.to_string()),
            ];
            write_status(subject, ctx, c, old.address.clone(), old.consumers.clone()).await?;
            // The swarm watch wakes this subject when the swarm appears or changes.
            return match e {
                Error::Waiting(_) => Ok(Action::requeue(ctx.config.resync)),
                other => Err(other),
            };
        }
    };
    let address = consumer_config::address(&view.prefix, &subject.spec);
    let result = ensure_consumers(subject, ctx, &view, &address).await;
    let consumers: Vec<ConsumerStatus> = view
        .sites
        .iter()
        .map(|site| ConsumerStatus {
            site: site.clone(),
            name: qis_crds::addressing::consumer_name(&name, site),
        })
        .collect();
    let consumers_cond = match &result {
        Ok(reverted) => {
            if !reverted.is_empty() {
                ctx.metrics
                    .drift_reverted
                    .get_or_create(&KindLabel { kind: KIND })
                    .inc();
                let note = format!(
                    "consumers differed from the spec and were put back: {}",
                    reverted.join("; ")
                );
                ctx.event(
                    &subject.object_ref(&()),
                    true,
                    reason::DRIFTED,
                    "RevertConsumer",
                    note,
                )
                .await;
            }
            Desired::new(
                condition::CONSUMERS_READY,
                true,
                reason::RECONCILED,
                format!("{} consumer(s) on {address}", consumers.len()),
            )
        }
        Err(e) => fail(condition::CONSUMERS_READY, e),
    };
    let ready = if consumers_cond.ok {
        Desired::new(
            condition::READY,
            true,
            reason::RECONCILED,
            format!(
                "{} site(s) of swarm {} consume {address}",
                consumers.len(),
                view.swarm.name_any()
            ),
        )
    } else {
        Desired::new(
            condition::READY,
            false,
            &consumers_cond.reason,
            consumers_cond.message.clone(),
        )
    };
    let conds = vec![ready, consumers_cond, synthesizing(subject)];
    let keep = if result.is_ok() {
        consumers
    } else {
        merge_consumers(&old.consumers, &consumers)
    };
    write_status(subject, ctx, conds, Some(address), keep).await?;
    let _ = ns;
    result?;
    Ok(Action::requeue(ctx.config.resync))
}

fn fail(type_: &'static str, e: &Error) -> Desired {
    Desired::new(type_, false, e.reason(), e.to_string())
}

/// While consumers are not all in place, remember both the old and the new ones, so that a
/// later cleanup finds every consumer this subject may have made.
fn merge_consumers(old: &[ConsumerStatus], new: &[ConsumerStatus]) -> Vec<ConsumerStatus> {
    let mut out = new.to_vec();
    out.extend(old.iter().filter(|o| !new.contains(o)).cloned());
    out
}

/// `Synthesizing`: an agent reported consensus lately.
fn synthesizing(subject: &QisSubject) -> Desired {
    let consensus = subject.status.as_ref().and_then(|s| s.consensus.as_ref());
    let Some(c) = consensus else {
        return Desired::new(
            condition::SYNTHESIZING,
            false,
            reason::NO_REPORT,
            "no agent has reported consensus yet",
        );
    };
    let fresh = c
        .updated_at
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .is_some_and(|t| {
            k8s_openapi::jiff::Timestamp::now()
                .duration_since(t)
                .unsigned_abs()
                < REPORT_STALE_AFTER
        });
    if fresh {
        Desired::new(
            condition::SYNTHESIZING,
            true,
            reason::CONSENSUS_REPORTED,
            format!("site {} reports consensus", c.reporting_site),
        )
    } else {
        Desired::new(
            condition::SYNTHESIZING,
            false,
            reason::NO_REPORT,
            format!(
                "last report at {} is older than {:?}",
                c.updated_at, REPORT_STALE_AFTER
            ),
        )
    }
}

/// Ensures one consumer per site and deletes those of sites that are gone (known from the
/// subject's own status, so no listing of the stream's consumers is needed). Returns the
/// drift that was reverted.
async fn ensure_consumers(
    subject: &QisSubject,
    ctx: &Context,
    view: &SwarmView,
    address: &str,
) -> Result<Vec<String>, Error> {
    let ns = subject.namespace().unwrap_or_default();
    let name = subject.name_any();
    let swarm_key = crate::object_key(view.swarm.as_ref());
    let settings = nats_settings::resolve(
        &ctx.client,
        &ns,
        view.swarm.spec.nats.as_ref(),
        &ctx.config.default_nats,
    )
    .await?;
    let js = ctx.pool.jetstream(&swarm_key, &settings).await?;
    let desired: Vec<_> = view
        .sites
        .iter()
        .map(|site| consumer_config::desired(&ns, &name, site, address, &subject.spec))
        .collect();
    let requests = desired.into_iter().map(|d| {
        let (js, stream) = (js.clone(), view.stream.clone());
        async move { js_apply::ensure_consumer(&js, &stream, &d).await }
    });
    let outcomes: Vec<js_apply::ConsumerOutcome> = futures::stream::iter(requests)
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let old = subject
        .status
        .as_ref()
        .map(|s| s.consumers.clone())
        .unwrap_or_default();
    for gone in old.iter().filter(|c| !view.sites.contains(&c.site)) {
        if js_apply::delete_consumer(&js, &view.stream, &gone.name).await? {
            ctx.event(
                &subject.object_ref(&()),
                false,
                "ConsumerDeleted",
                "DeleteConsumer",
                format!("site {} is gone; deleted consumer {}", gone.site, gone.name),
            )
            .await;
        }
    }
    Ok(outcomes
        .into_iter()
        .filter(|o| !o.reverted.is_empty())
        .map(|o| format!("{}: {}", o.name, o.reverted.join(", ")))
        .collect())
}

async fn write_status(
    subject: &QisSubject,
    ctx: &Context,
    desired: Vec<Desired>,
    address: Option<String>,
    consumers: Vec<ConsumerStatus>,
) -> Result<(), Error> {
    let old = subject.status.clone().unwrap_or_default();
    let generation = subject.metadata.generation;
    let conditions = conditions::merge(
        &old.conditions,
        &desired,
        generation,
        Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let unchanged = conditions::same(&old.conditions, &conditions)
        && old.observed_generation == generation
        && old.address == address
        && old.consumers == consumers;
    if unchanged {
        return Ok(());
    }
    crate::transition_event(ctx, &subject.object_ref(&()), &old.conditions, &conditions).await;
    // Only the operator's fields: `consensus` belongs to the agents' field manager.
    let status = QisSubjectStatus {
        observed_generation: generation,
        conditions,
        address,
        consumers,
        consensus: None,
    };
    apply::apply_status(ctx, subject, &status, KIND).await?;
    Ok(())
}

/// Deletion: every consumer this subject made goes; an unreachable NATS is retried until
/// `deletionTimeout`, then the finalizer is removed with a Warning.
async fn cleanup(subject: &QisSubject, ctx: &Context) -> Result<Action, Error> {
    let ns = subject.namespace().unwrap_or_default();
    let name = subject.name_any();
    let reference = subject.object_ref(&());
    let swarm_name = &subject.spec.swarm_ref.name;
    let stream = qis_crds::addressing::stream_name(&ns, swarm_name);
    let Some(swarm) = Api::<QisSwarm>::namespaced(ctx.client.clone(), &ns)
        .get_opt(swarm_name)
        .await?
    else {
        // No swarm: its stream (and the consumers with it) is gone or retained without an owner.
        return Ok(Action::await_change());
    };
    let known = subject
        .status
        .as_ref()
        .map(|s| s.consumers.clone())
        .unwrap_or_default();
    let result = async {
        let settings = nats_settings::resolve(
            &ctx.client,
            &ns,
            swarm.spec.nats.as_ref(),
            &ctx.config.default_nats,
        )
        .await?;
        let js = ctx
            .pool
            .jetstream(&crate::object_key(&swarm), &settings)
            .await?;
        let mut deleted = 0;
        let mut names: Vec<String> = known.iter().map(|c| c.name.clone()).collect();
        for site in swarm
            .status
            .as_ref()
            .map(|s| s.sites.clone())
            .unwrap_or_default()
        {
            let n = qis_crds::addressing::consumer_name(&name, &site.name);
            if !names.contains(&n) {
                names.push(n);
            }
        }
        for n in &names {
            if js_apply::delete_consumer(&js, &stream, n).await? {
                deleted += 1;
            }
        }
        Ok::<_, Error>(deleted)
    }
    .await;
    match result {
        Ok(deleted) => {
            ctx.event(
                &reference,
                false,
                "ConsumersDeleted",
                "DeleteSubject",
                format!("deleted {deleted} consumer(s) of {name}"),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) if crate::deletion_overdue(subject.meta(), ctx.config.deletion_timeout) => {
            ctx.event(
                &reference,
                true,
                reason::CLEANUP_ABANDONED,
                "DeleteSubject",
                format!(
                    "gave up deleting consumers after {:?}: {e}",
                    ctx.config.deletion_timeout
                ),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) => Err(e),
    }
}
