//! Writes a status the reconciler decided (the pure `status` step of each kind decides
//! whether anything changed), and records an event when `Ready` changes status or reason.

use super::Kind;
use crate::context::Context;
use crate::error::Error;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use qis_crds::constants::condition;
use serde::Serialize;

/// Writes `status` (whose conditions are `new`) into `obj`, the event first.
pub async fn write<K: Kind>(
    ctx: &Context,
    obj: &K,
    old: &[Condition],
    new: &[Condition],
    status: &impl Serialize,
) -> Result<(), Error> {
    if let Some((warning, reason, message)) = ready_transition(old, new) {
        ctx.event(&obj.object_ref(&()), warning, &reason, "Reconcile", message)
            .await;
    }
    crate::apply::apply_status(ctx, obj, status, K::LABEL).await
}

/// The event of a change of `Ready` (warning?, reason, message), if it changed status or
/// reason.
pub fn ready_transition(old: &[Condition], new: &[Condition]) -> Option<(bool, String, String)> {
    let find = |l: &[Condition]| l.iter().find(|c| c.type_ == condition::READY).cloned();
    let now = find(new)?;
    let before = find(old);
    if before
        .as_ref()
        .is_some_and(|b| b.status == now.status && b.reason == now.reason)
    {
        return None;
    }
    let ok = now.status == "True";
    let reason = if ok { "Ready".to_owned() } else { now.reason };
    Some((!ok, reason, now.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::{Decided, merge};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ready(ok: bool, reason: &str, message: &str) -> Vec<Condition> {
        let now = Time("2026-01-01T00:00:00Z".parse().expect("timestamp"));
        merge(
            &[],
            &[Decided::new(condition::READY, ok, reason, message)],
            Some(1),
            now,
        )
    }

    #[test]
    fn an_event_only_when_ready_changes_status_or_reason() {
        let down = ready(false, "NatsUnavailable", "down");
        let still_down = ready(false, "NatsUnavailable", "down again");
        let up = ready(true, "Reconciled", "fine");
        assert_eq!(
            ready_transition(&[], &down),
            Some((true, "NatsUnavailable".into(), "down".into()))
        );
        assert_eq!(ready_transition(&down, &still_down), None);
        assert_eq!(
            ready_transition(&down, &up),
            Some((false, "Ready".into(), "fine".into()))
        );
        let other = ready(false, "InvalidSpec", "bad");
        assert_eq!(
            ready_transition(&down, &other),
            Some((true, "InvalidSpec".into(), "bad".into()))
        );
    }
}
