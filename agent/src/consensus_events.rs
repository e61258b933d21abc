//! Kubernetes Events on a `QisSubject` when its consensus alert flips: `ConsensusAlert`
//! (Warning) when it starts, `ConsensusCleared` (Normal) when it ends, the recommendation in the
//! note. Sent by the swarm's reporter (one agent at a time, see `report.rs`) once the status it
//! describes is written.
//!
//! At most one Event per subject per gap ([`DEFAULT_GAP`], a minute): a flapping
//! alert shows as its state after the gap, not as a storm. A reporter that takes over starts
//! from the alert in the subject's status as it finds it, so a failover announces nothing that
//! did not change.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder};
use qis_crds::{Consensus, QisSubject};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// Least time between two Events of one subject.
pub const DEFAULT_GAP: Duration = Duration::from_secs(60);

/// A change worth an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    Alert,
    Cleared,
}

impl Flip {
    pub fn reason(self) -> &'static str {
        match self {
            Flip::Alert => "ConsensusAlert",
            Flip::Cleared => "ConsensusCleared",
        }
    }
}

/// What was last announced (or found) for one subject.
#[derive(Debug, Clone)]
struct Announced {
    alert: bool,
    /// `None` until this reporter sent an Event for the subject.
    at: Option<Instant>,
    reference: ObjectReference,
}

/// The Event to send, if any: the alert differs from what was announced and the last Event of
/// the subject is at least `gap` old.
fn decide(
    last_alert: bool,
    last_at: Option<Instant>,
    alert: bool,
    now: Instant,
    gap: Duration,
) -> Option<Flip> {
    if alert == last_alert || last_at.is_some_and(|t| now.duration_since(t) < gap) {
        return None;
    }
    Some(if alert { Flip::Alert } else { Flip::Cleared })
}

/// The reporter's memory of the alerts it announced.
pub struct Announcer {
    recorder: Recorder,
    api: Api<QisSubject>,
    gap: Duration,
    announced: HashMap<String, Announced>,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("gap", &self.gap)
            .field("subjects", &self.announced.len())
            .finish()
    }
}

impl Announcer {
    pub fn new(recorder: Recorder, api: Api<QisSubject>, gap: Duration) -> Announcer {
        Announcer {
            recorder,
            api,
            gap,
            announced: HashMap::new(),
        }
    }

    /// Forgets everything (the lease was lost: the next holder starts from the status).
    pub fn forget(&mut self) {
        self.announced.clear();
    }

    /// Sends the Event `c` (written to the status of subject `name`) calls for, if any.
    pub async fn announce(&mut self, name: &str, c: &Consensus) {
        // A subject not seeded (its status could not be read before the write) gets no Event
        // until it is: without the prior state a failover would announce a standing alert.
        let Some(last) = self.announced.get(name) else {
            return;
        };
        let now = Instant::now();
        let Some(flip) = decide(last.alert, last.at, c.alert, now, self.gap) else {
            return;
        };
        let ev = Event {
            type_: if flip == Flip::Alert {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: flip.reason().to_owned(),
            note: Some(note(c)),
            action: "Synthesize".to_owned(),
            secondary: None,
        };
        match self.recorder.publish(&ev, &last.reference).await {
            Ok(()) => {
                if let Some(a) = self.announced.get_mut(name) {
                    a.alert = c.alert;
                    a.at = Some(now);
                }
            }
            Err(e) => {
                tracing::warn!(subject = %name, error = %e, "cannot record the consensus event")
            }
        }
    }

    /// Before the first write of `name` by this reporter: remembers the alert its status shows
    /// (none: no alert) and the object's reference. Returns false when the subject cannot be
    /// read (then no Event is sent for it until it can).
    pub async fn seed(&mut self, name: &str) -> bool {
        if self.announced.contains_key(name) {
            return true;
        }
        match self.api.get_status(name).await {
            Ok(subject) => {
                let alert = subject
                    .status
                    .as_ref()
                    .and_then(|s| s.consensus.as_ref())
                    .is_some_and(|c| c.alert);
                self.announced.insert(
                    name.to_owned(),
                    Announced {
                        alert,
                        at: None,
                        reference: subject.object_ref(&()),
                    },
                );
                true
            }
            Err(e) => {
                tracing::debug!(subject = %name, error = %e, "cannot read the subject's status");
                false
            }
        }
    }
}

/// The Event's note: what the consensus says and what to do (at most 1 KiB, the API's limit).
fn note(c: &Consensus) -> String {
    let mut n = format!(
        "{}: strength {:.2}, confidence {:.2}, {} agents. {}",
        c.problem, c.strength, c.weighted_confidence, c.agents, c.recommendation
    );
    if n.len() > 1024 {
        let mut end = 1024;
        while !n.is_char_boundary(end) {
            end -= 1;
        }
        n.truncate(end);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flip_is_announced_once_and_a_flap_within_the_gap_waits() {
        let gap = Duration::from_secs(60);
        let t0 = Instant::now();
        // Found no alert; an alert comes: announced at once (nothing sent before).
        assert_eq!(decide(false, None, true, t0, gap), Some(Flip::Alert));
        // The same state again: nothing.
        assert_eq!(decide(true, Some(t0), true, t0 + gap, gap), None);
        // Cleared 10 s later: waits for the gap; announced after it.
        assert_eq!(
            decide(true, Some(t0), false, t0 + Duration::from_secs(10), gap),
            None
        );
        assert_eq!(
            decide(true, Some(t0), false, t0 + gap, gap),
            Some(Flip::Cleared)
        );
        // A reporter that found the alert already on announces nothing for it.
        assert_eq!(decide(true, None, true, t0, gap), None);
    }

    #[test]
    fn the_note_carries_the_recommendation_within_the_apis_limit() {
        let c = Consensus {
            problem: "iot.bearing-wear".into(),
            strength: 0.667,
            weighted_confidence: 0.84,
            agents: 3,
            recommendation: "ALERT: inspect the bearings of hall B".into(),
            ..Default::default()
        };
        let n = note(&c);
        assert!(n.contains("ALERT: inspect the bearings of hall B"), "{n}");
        assert!(n.contains("strength 0.67"), "{n}");
        let long = Consensus {
            recommendation: "é".repeat(2000),
            ..c
        };
        assert!(note(&long).len() <= 1024);
    }
}
