//! What the active replica makes of its snapshots: when a consensus change is material, the
//! synthesis packet it publishes (rate-limited, never a vote), and the window limits'
//! evictions counted per subject.

use super::{WorkerContext, now};
use crate::config::Config;
use crate::metrics::EvictionLabel;
use crate::packet::{OutcomePacket, PacketMeta};
use crate::synthesis::{Evictions, Snapshot};
use qis_crds::addressing;
use std::time::{Duration, Instant};

/// A material change of the consensus: another problem, an alert flip, or strength or
/// confidence moved by 0.1 or more.
pub fn material_change(old: Option<&Snapshot>, new: &Snapshot) -> bool {
    match old {
        None => true,
        Some(o) => {
            o.problem != new.problem
                || o.alert != new.alert
                || (o.strength - new.strength).abs() >= 0.1
                || (o.weighted_confidence - new.weighted_confidence).abs() >= 0.1
        }
    }
}

/// Whether `new` is to be published: the publish interval has passed since the last
/// publication (or there was none) and the consensus changed materially since.
pub fn due(last: Option<&(Instant, Snapshot)>, every: Duration, new: &Snapshot) -> bool {
    last.is_none_or(|(t, _)| t.elapsed() >= every) && material_change(last.map(|(_, s)| s), new)
}

/// The synthesis packet of a snapshot: what this agent concluded from its twins.
pub fn synthesis_packet(
    config: &Config,
    address: &str,
    snap: &Snapshot,
) -> Option<(String, Vec<u8>, PacketMeta)> {
    let (domain, problem_class) = snap.problem.split_once('.')?;
    let mut conclusion = snap.recommendation.clone();
    loop {
        let p = OutcomePacket {
            agent_id: config.agent_id.clone(),
            domain: domain.to_owned(),
            problem_class: problem_class.to_owned(),
            conclusion: conclusion.clone(),
            confidence: snap.weighted_confidence.clamp(0.0, 1.0),
            context_vector: vec![
                (snap.strength * 1000.0).round() / 1000.0,
                f64::from(snap.agents),
            ],
            timestamp: now(),
            source_node: config.site.clone(),
        };
        match p.encode() {
            Ok(body) => {
                let subject = if address.ends_with(".>") {
                    addressing::readable_address(&config.prefix, domain, Some(problem_class))
                } else {
                    address.to_owned()
                };
                let meta = PacketMeta::synthesis(&body, 0);
                return Some((subject, body, meta));
            }
            Err(crate::packet::PacketError::TooLarge { .. }) if conclusion.len() > 16 => {
                let keep = conclusion
                    .char_indices()
                    .map(|(i, _)| i)
                    .take_while(|i| *i < conclusion.len() / 2)
                    .last()
                    .unwrap_or(0);
                conclusion.truncate(keep);
            }
            Err(_) => return None,
        }
    }
}

/// Adds what the window limits turned away since `before` to the metrics (warning once per
/// tick that turned any away); returns `now` as the next `before`.
pub fn count_evictions(
    ctx: &WorkerContext,
    subject: &str,
    before: Evictions,
    now: Evictions,
) -> Evictions {
    let mut any = false;
    for (reason, was, is) in [
        ("voters", before.voters, now.voters),
        ("packets", before.packets, now.packets),
        ("problems", before.problems, now.problems),
    ] {
        if is > was {
            any = true;
            ctx.metrics
                .synthesis_evictions
                .get_or_create(&EvictionLabel {
                    subject: subject.to_owned(),
                    reason,
                })
                .inc_by(is - was);
        }
    }
    if any {
        tracing::warn!(
            subject,
            voters = now.voters - before.voters,
            packets = now.packets - before.packets,
            problems = now.problems - before.problems,
            "window limits reached: packets not counted or forgotten (maxVoters, maxPackets, maxProblems)"
        );
    }
    now
}
