//! Status step of a swarm (pure): the new status from the old one and what was applied, or
//! `None` when nothing changed (conditions compared without timestamps), so that an
//! unchanged status is never rewritten.

use super::apply::{Applied, AppliedAgents};
use crate::conditions::{self, Decided};
use crate::error::Error;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use qis_crds::constants::{condition, reason};
use qis_crds::{QisSwarm, QisSwarmSpec, QisSwarmStatus, SiteStatus, StreamStatus};

/// The status after a reconcile of `swarm` (its spec valid, `discovery_disabled` as
/// validated) applied `applied` under `prefix`.
pub fn next(
    swarm: &QisSwarm,
    prefix: &str,
    discovery_disabled: bool,
    applied: &Applied,
    now: Time,
) -> Option<QisSwarmStatus> {
    let stream_cond = stream_condition(applied);
    let (agents_cond, sites) = match &applied.agents {
        Ok(a) => (
            agents_condition(a, discovery_disabled, &swarm.spec),
            a.sites.clone(),
        ),
        Err(e) => (fail(condition::AGENTS_READY, e), previous_sites(swarm)),
    };
    let ready = match [&stream_cond, &agents_cond].into_iter().find(|c| !c.ok) {
        None => Decided::new(
            condition::READY,
            true,
            reason::RECONCILED,
            format!("stream and {} site(s) ready", sites.len()),
        ),
        Some(c) => Decided::new(condition::READY, false, &c.reason, c.message.clone()),
    };
    let stream = applied.stream.as_ref().ok().map(|o| StreamStatus {
        name: applied.stream_name.clone(),
        messages: o.state.messages,
        bytes: o.state.bytes,
        first_seq: o.state.first_sequence,
        last_seq: o.state.last_sequence,
        consumers: o.state.consumer_count as u64,
    });
    let conditions = [ready, stream_cond, agents_cond];
    changed(
        swarm,
        &conditions,
        Some(prefix.to_owned()),
        stream,
        sites,
        now,
    )
}

/// The status of a swarm whose spec was refused with `e`: every condition false with its
/// reason; the sites stay as they were.
pub fn refused(swarm: &QisSwarm, e: &Error, now: Time) -> Option<QisSwarmStatus> {
    let conditions = [
        condition::READY,
        condition::STREAM_READY,
        condition::AGENTS_READY,
    ]
    .map(|t| fail(t, e));
    changed(swarm, &conditions, None, None, previous_sites(swarm), now)
}

/// What subjects read to decide which consumers to keep: a failure never shrinks it (under
/// server-side apply a status written without `sites` removes the field, and every subject
/// would then delete all its consumers).
fn previous_sites(swarm: &QisSwarm) -> Vec<SiteStatus> {
    swarm
        .status
        .as_ref()
        .map(|s| s.sites.clone())
        .unwrap_or_default()
}

fn fail(type_: &'static str, e: &Error) -> Decided {
    Decided::new(type_, false, e.reason(), e.to_string())
}

fn stream_condition(applied: &Applied) -> Decided {
    match &applied.stream {
        Ok(o) => Decided::new(
            condition::STREAM_READY,
            true,
            reason::RECONCILED,
            format!(
                "stream {}: {} messages, {} bytes",
                applied.stream_name, o.state.messages, o.state.bytes
            ),
        ),
        Err(e) => fail(condition::STREAM_READY, e),
    }
}

fn agents_condition(a: &AppliedAgents, discovery_disabled: bool, spec: &QisSwarmSpec) -> Decided {
    if let Some((site, e)) = a.failures.first() {
        let message = format!(
            "{} of {} site(s) failed; site {site}: {e}",
            a.failures.len(),
            a.sites.len()
        );
        return Decided::new(condition::AGENTS_READY, false, e.reason(), message);
    }
    if discovery_disabled {
        let message = format!(
            "spec.siteDiscovery is set, but this operator runs without node access \
             (--watch-nodes=false; chart siteDiscovery.enabled=false): only the {} \
             site(s) of spec.sites run",
            a.sites.len()
        );
        return Decided::new(
            condition::AGENTS_READY,
            false,
            reason::SITE_DISCOVERY_DISABLED,
            message,
        );
    }
    sites_condition(&a.sites, &a.skipped, spec)
}

fn sites_condition(sites: &[SiteStatus], skipped: &[String], spec: &QisSwarmSpec) -> Decided {
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
        let message = notes.join("; ");
        return Decided::new(condition::AGENTS_READY, false, reason::PROGRESSING, message);
    }
    let ready = sites
        .iter()
        .filter(|s| s.ready_replicas >= s.desired_replicas)
        .count();
    let all = ready == sites.len();
    notes.insert(
        0,
        format!("{ready}/{} sites have their agents ready", sites.len()),
    );
    let reason = if all {
        reason::RECONCILED
    } else {
        reason::PROGRESSING
    };
    Decided::new(condition::AGENTS_READY, all, reason, notes.join("; "))
}

/// The new status, unless it is the old one but for timestamps.
fn changed(
    swarm: &QisSwarm,
    desired: &[Decided],
    prefix: Option<String>,
    stream: Option<StreamStatus>,
    sites: Vec<SiteStatus>,
    now: Time,
) -> Option<QisSwarmStatus> {
    let old = swarm.status.clone().unwrap_or_default();
    let generation = swarm.metadata.generation;
    let new = QisSwarmStatus {
        observed_generation: generation,
        conditions: conditions::merge(&old.conditions, desired, generation, now),
        subject_prefix: prefix.or(old.subject_prefix.clone()),
        stream: stream.or(old.stream.clone()),
        sites,
    };
    let unchanged = conditions::same(&old.conditions, &new.conditions)
        && old.observed_generation == new.observed_generation
        && old.subject_prefix == new.subject_prefix
        && old.stream == new.stream
        && old.sites == new.sites;
    (!unchanged).then_some(new)
}
