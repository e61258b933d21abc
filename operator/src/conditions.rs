//! Kubernetes conditions: built from (type, status, reason, message), merged so that the
//! transition time moves only when the status does, and compared without timestamps so an
//! unchanged status is never rewritten.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// One condition as a reconcile decided it (no timestamp yet): merged into the live ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Decided {
    pub fn new(type_: &'static str, ok: bool, reason: &str, message: impl Into<String>) -> Decided {
        Decided {
            type_,
            ok,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

fn status(ok: bool) -> &'static str {
    if ok { "True" } else { "False" }
}

/// The conditions to write: `desired`, keeping the old transition time of each condition whose
/// status did not change. Conditions of other types in `old` are dropped (we own the list).
pub fn merge(
    old: &[Condition],
    desired: &[Decided],
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let previous = old.iter().find(|c| c.type_ == d.type_);
            let last_transition_time = match previous {
                Some(p) if p.status == status(d.ok) => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: d.type_.to_owned(),
                status: status(d.ok).to_owned(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Equal but for transition times?
pub fn same(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

/// The status of a condition type in a list, if present.
pub fn is_true(list: &[Condition], type_: &str) -> Option<bool> {
    list.iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let t0 = time("2026-01-01T00:00:00Z");
        let t1 = time("2026-01-01T00:05:00Z");
        let first = merge(
            &[],
            &[Decided::new("Ready", false, "Progressing", "waiting")],
            Some(1),
            t0.clone(),
        );
        let same_status = merge(
            &first,
            &[Decided::new("Ready", false, "NatsUnavailable", "down")],
            Some(1),
            t1.clone(),
        );
        assert_eq!(same_status[0].last_transition_time, t0);
        let flipped = merge(
            &same_status,
            &[Decided::new("Ready", true, "Reconciled", "")],
            Some(1),
            t1.clone(),
        );
        assert_eq!(flipped[0].last_transition_time, t1);
        assert!(!same(&first, &same_status));
        let again = merge(
            &flipped,
            &[Decided::new("Ready", true, "Reconciled", "")],
            Some(1),
            time("2026-02-01T00:00:00Z"),
        );
        assert!(same(&flipped, &again));
        assert_eq!(is_true(&again, "Ready"), Some(true));
        assert_eq!(is_true(&again, "StreamReady"), None);
    }
}
