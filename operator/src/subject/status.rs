//! Status step of a subject (pure): the new status from the old one and what was applied, or
//! `None` when nothing changed (conditions compared without timestamps). Only the operator's
//! fields: `consensus` belongs to the agents' field manager.

use super::build::DesiredConsumers;
use crate::conditions::{self, Decided};
use crate::error::Error;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use qis_crds::constants::{condition, reason};
use qis_crds::{ConsumerStatus, QisSubject, QisSubjectStatus};
use std::time::Duration;

/// A consensus older than this makes `Synthesizing` false.
pub const REPORT_STALE_AFTER: Duration = Duration::from_secs(600);

/// The status after `subject`'s consumers `desired` on swarm `swarm` were applied with
/// `applied` (the drift reverted, or the error).
pub fn next(
    subject: &QisSubject,
    desired: &DesiredConsumers,
    swarm: &str,
    applied: &Result<Vec<String>, Error>,
    now: Timestamp,
) -> Option<QisSubjectStatus> {
    let (address, consumers) = (&desired.address, &desired.consumers);
    let consumers_cond = match applied {
        Ok(_) => Decided::new(
            condition::CONSUMERS_READY,
            true,
            reason::RECONCILED,
            format!("{} consumer(s) on {address}", consumers.len()),
        ),
        Err(e) => fail(condition::CONSUMERS_READY, e),
    };
    let ready = if consumers_cond.ok {
        let message = format!(
            "{} site(s) of swarm {swarm} consume {address}",
            consumers.len()
        );
        Decided::new(condition::READY, true, reason::RECONCILED, message)
    } else {
        let message = consumers_cond.message.clone();
        Decided::new(condition::READY, false, &consumers_cond.reason, message)
    };
    let keep = match applied {
        Ok(_) => consumers.clone(),
        Err(_) => merge_consumers(&old(subject).consumers, consumers),
    };
    let conds = [ready, consumers_cond, synthesizing(subject, now)];
    changed(subject, &conds, Some(address.clone()), keep, now)
}

/// The status of a subject that cannot go on (spec refused, swarm missing or without a
/// stream): `Ready` and `ConsumersReady` false with the error's reason; address and consumers
/// as they were.
pub fn blocked(subject: &QisSubject, e: &Error, now: Timestamp) -> Option<QisSubjectStatus> {
    let old = old(subject);
    let conds = [
        fail(condition::READY, e),
        fail(condition::CONSUMERS_READY, e),
    ];
    changed(subject, &conds, old.address, old.consumers, now)
}

fn old(subject: &QisSubject) -> QisSubjectStatus {
    subject.status.clone().unwrap_or_default()
}

fn fail(type_: &'static str, e: &Error) -> Decided {
    Decided::new(type_, false, e.reason(), e.to_string())
}

/// While consumers are not all in place, remember both the old and the new ones, so that a
/// later cleanup finds every consumer this subject may have made.
fn merge_consumers(old: &[ConsumerStatus], new: &[ConsumerStatus]) -> Vec<ConsumerStatus> {
    let mut out = new.to_vec();
    out.extend(old.iter().filter(|o| !new.contains(o)).cloned());
    out
}

/// `Synthesizing`: an agent reported consensus within [`REPORT_STALE_AFTER`] of `now`.
fn synthesizing(subject: &QisSubject, now: Timestamp) -> Decided {
    let consensus = subject.status.as_ref().and_then(|s| s.consensus.as_ref());
    let Some(c) = consensus else {
        return Decided::new(
            condition::SYNTHESIZING,
            false,
            reason::NO_REPORT,
            "no agent has reported consensus yet",
        );
    };
    let fresh = c
        .updated_at
        .parse::<Timestamp>()
        .ok()
        .is_some_and(|t| now.duration_since(t).unsigned_abs() < REPORT_STALE_AFTER);
    if fresh {
        Decided::new(
            condition::SYNTHESIZING,
            true,
            reason::CONSENSUS_REPORTED,
            format!("site {} reports consensus", c.reporting_site),
        )
    } else {
        let message = format!(
            "last report at {} is older than {:?}",
            c.updated_at, REPORT_STALE_AFTER
        );
        Decided::new(condition::SYNTHESIZING, false, reason::NO_REPORT, message)
    }
}

/// The new status, unless it is the old one but for timestamps.
fn changed(
    subject: &QisSubject,
    desired: &[Decided],
    address: Option<String>,
    consumers: Vec<ConsumerStatus>,
    now: Timestamp,
) -> Option<QisSubjectStatus> {
    let old = old(subject);
    let generation = subject.metadata.generation;
    let conditions = conditions::merge(&old.conditions, desired, generation, Time(now));
    let unchanged = conditions::same(&old.conditions, &conditions)
        && old.observed_generation == generation
        && old.address == address
        && old.consumers == consumers;
    (!unchanged).then_some(QisSubjectStatus {
        observed_generation: generation,
        conditions,
        address,
        consumers,
        consensus: None,
    })
}
