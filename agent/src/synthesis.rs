//! The consensus math: pure, incremental, no I/O.
//!
//! A [`Synthesizer`] holds the votes of one subject. [`Synthesizer::ingest`] takes one packet with
//! O(1) amortized hash-map work plus an O(log n) push on the expiry heap; it never re-scans the
//! window. [`Synthesizer::snapshot`] turns the live votes (one per agent, so its cost grows with
//! the number of agents, not of packets) into a [`Snapshot`]; callers take snapshots at their
//! report rate, not per packet.
//!
//! Two ways of counting, chosen by [`SynthesisMethod`]:
//! - `seed`: the seed article's `synthesize_locally` — every packet is a vote, the confidence is
//!   the plain mean of all packets, the alert depends on strength alone. It reproduces the
//!   article's numbers on its demo packets.
//! - `mean` / `trimmedMean` / `median`: one vote per agent per window (its latest packet), each
//!   weighted by `0.5^(age / halfLife)` when a half-life is set; strength is the weighted share of
//!   the plurality problem; the confidence combines the agreeing votes; the alert needs strength
//!   above the threshold, a quorum of distinct agents **and** a combined confidence of at least
//!   `minConfidence`.
//!
//! Synthesis packets never vote. Duplicates (same packet id) change nothing. Snapshots do not
//! depend on the order packets arrived in: votes are summed in a fixed order.

use crate::packet::{OutcomePacket, PacketKind, PacketMeta};
use qis_crds::{Duration, SynthesisMethod, SynthesisSettings};
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// Resolved synthesis settings (the CRD's, with defaults filled in).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub method: SynthesisMethod,
    /// Seconds.
    pub window: f64,
    /// Seconds; `None` for no decay.
    pub half_life: Option<f64>,
    pub threshold: f64,
    pub quorum: u32,
    /// Combined confidence an alert needs (not used by the seed method).
    pub min_confidence: f64,
    pub trim_fraction: f64,
}

/// A synthesis setting an agent cannot use, naming the field (as in the CRD).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("synthesis.{field} {reason}")]
pub struct InvalidSetting {
    pub field: &'static str,
    pub reason: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            method: SynthesisMethod::default(),
            window: Self::DEFAULT_WINDOW,
            half_life: None,
            threshold: 0.6,
            quorum: 2,
            min_confidence: 0.5,
            trim_fraction: 0.1,
        }
    }
}

impl Settings {
    /// Default window, seconds.
    pub const DEFAULT_WINDOW: f64 = 3600.0;

    /// Fills the CRD's unset fields with the documented defaults; refuses a value the agent
    /// cannot use (a duration out of range, a number outside its bounds), naming its field.
    pub fn from_crd(s: &SynthesisSettings) -> Result<Settings, InvalidSetting> {
        let secs = |field: &'static str, d: Option<Duration>| {
            d.map(|d| d.get().map(|d| d.as_secs_f64()))
                .transpose()
                .map_err(|e| InvalidSetting {
                    field,
                    reason: e.to_string(),
                })
        };
        let unit = |field: &'static str, v: Option<f64>, max: f64, default: f64| match v {
            None => Ok(default),
            Some(v) if (0.0..=max).contains(&v) => Ok(v),
            Some(v) => Err(InvalidSetting {
                field,
                reason: format!("{v} is outside [0, {max}]"),
            }),
        };
        let d = Settings::default();
        let window = secs("window", s.window)?;
        if window == Some(0.0) {
            return Err(InvalidSetting {
                field: "window",
                reason: "must be positive".into(),
            });
        }
        let half_life = secs("halfLife", s.half_life)?.filter(|h| *h > 0.0);
        if half_life.is_some_and(|h| h < 1.0) {
            // Shorter, every vote older than a few microseconds weighs 0 and the combined
            // confidence is 0/0.
            return Err(InvalidSetting {
                field: "halfLife",
                reason: "must be at least 1s (or 0 for no decay)".into(),
            });
        }
        Ok(Settings {
            method: s.method.unwrap_or_default(),
            window: window.unwrap_or(d.window),
            half_life,
            threshold: unit("threshold", s.threshold, 1.0, d.threshold)?,
            quorum: match s.quorum {
                Some(0) => {
                    return Err(InvalidSetting {
                        field: "quorum",
                        reason: "must be at least 1".into(),
                    });
                }
                q => q.unwrap_or(d.quorum),
            },
            min_confidence: unit("minConfidence", s.min_confidence, 1.0, d.min_confidence)?,
            trim_fraction: unit("trimFraction", s.trim_fraction, 0.45, d.trim_fraction)?,
        })
    }

    /// The seed article's rules: every packet a vote, no window, threshold 0.6.
    pub fn seed() -> Settings {
        Settings {
            method: SynthesisMethod::Seed,
            window: f64::INFINITY,
            half_life: None,
            threshold: 0.6,
            quorum: 1,
            min_confidence: 0.0,
            trim_fraction: 0.0,
        }
    }
}

/// What [`Synthesizer::ingest`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// It is now its agent's vote.
    Voted,
    /// Counted in the window, but its agent has a later vote.
    Superseded,
    /// Seen before (same packet id): nothing changed.
    Duplicate,
    /// Older than the window: nothing changed.
    Expired,
    /// A synthesis packet: never a vote.
    NotAVote,
}

#[derive(Debug, Clone)]
struct Vote {
    id: u64,
    agent: Arc<str>,
    problem: Arc<str>,
    confidence: f64,
    timestamp: f64,
}

/// Expiry-heap entry: a packet in the window, by timestamp.
#[derive(Debug, Clone)]
struct Entry {
    timestamp: f64,
    id: u64,
    voter: Arc<str>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.timestamp
            .total_cmp(&other.timestamp)
            .then(self.id.cmp(&other.id))
    }
}

/// The consensus of one subject at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `<domain>.<problem_class>` with the most (weighted) votes.
    pub problem: String,
    pub strength: f64,
    pub weighted_confidence: f64,
    /// Distinct agents (seed mode: packets, as the seed counts them).
    pub agents: u32,
    /// Outcome packets in the window.
    pub packets: u64,
    pub synthesis_pairs: u64,
    /// Interquartile range of the agreeing votes' confidences.
    pub dispersion: f64,
    /// Kish effective number of votes, `(Σw)² / Σw²`.
    pub effective_n: f64,
    pub alert: bool,
    pub recommendation: String,
}

/// The votes of one subject.
#[derive(Debug, Clone)]
pub struct Synthesizer {
    settings: Settings,
    /// Seed mode: one entry per packet (keyed by packet id); else one per agent.
    votes: HashMap<Arc<str>, Vote>,
    seen: HashSet<u64>,
    expiry: BinaryHeap<Reverse<Entry>>,
    problems: HashSet<Arc<str>>,
}

fn hash_id(id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl Synthesizer {
    pub fn new(settings: Settings) -> Synthesizer {
        Synthesizer {
            settings,
            votes: HashMap::new(),
            seen: HashSet::new(),
            expiry: BinaryHeap::new(),
            problems: HashSet::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Outcome packets in the window (after the last expiry).
    pub fn packets_in_window(&self) -> usize {
        self.seen.len()
    }

    fn intern(&mut self, problem: String) -> Arc<str> {
        if let Some(p) = self.problems.get(problem.as_str()) {
            return p.clone();
        }
        let p: Arc<str> = problem.into();
        self.problems.insert(p.clone());
        p
    }

    /// Takes one packet in, as of `now` (seconds since the epoch).
    pub fn ingest(&mut self, packet: &OutcomePacket, meta: &PacketMeta, now: f64) -> Ingest {
        if meta.kind == PacketKind::Synthesis {
            return Ingest::NotAVote;
        }
        self.expire(now);
        if packet.timestamp < now - self.settings.window {
            return Ingest::Expired;
        }
        let id = hash_id(&meta.id);
        if !self.seen.insert(id) {
            return Ingest::Duplicate;
        }
        let voter: Arc<str> = match self.settings.method {
            SynthesisMethod::Seed => meta.id.as_str().into(),
            _ => packet.agent_id.as_str().into(),
        };
        self.expiry.push(Reverse(Entry {
            timestamp: packet.timestamp,
            id,
            voter: voter.clone(),
        }));
        let newer = |old: &Vote| (packet.timestamp, id) > (old.timestamp, old.id);
        if self.votes.get(&voter).is_some_and(|old| !newer(old)) {
            return Ingest::Superseded;
        }
        let problem = self.intern(packet.problem());
        let vote = Vote {
            id,
            agent: packet.agent_id.as_str().into(),
            problem,
            confidence: packet.confidence,
            timestamp: packet.timestamp,
        };
        self.votes.insert(voter, vote);
        Ingest::Voted
    }

    /// Drops packets older than the window; amortized O(log n) per packet ever ingested.
    pub fn expire(&mut self, now: f64) {
        let horizon = now - self.settings.window;
        while let Some(Reverse(top)) = self.expiry.peek() {
            if top.timestamp >= horizon {
                break;
            }
            let Some(Reverse(entry)) = self.expiry.pop() else {
                break;
            };
            self.seen.remove(&entry.id);
            if self
                .votes
                .get(&entry.voter)
                .is_some_and(|v| v.id == entry.id)
            {
                self.votes.remove(&entry.voter);
            }
        }
        if self.votes.is_empty() {
            self.problems.clear();
        }
    }

    /// Weight of a vote of this timestamp at `now`.
    pub fn weight(&self, timestamp: f64, now: f64) -> f64 {
        match self.settings.half_life {
            Some(h) => 0.5f64.powf(((now - timestamp) / h).max(0.0)),
            None => 1.0,
        }
    }

    /// The consensus as of `now`; `None` when no vote is in the window.
    pub fn snapshot(&mut self, now: f64) -> Option<Snapshot> {
        self.expire(now);
        let mut votes: Vec<&Vote> = self.votes.values().collect();
        if votes.is_empty() {
            return None;
        }
        // A fixed summation order makes the result independent of arrival order.
        votes.sort_by(|a, b| {
            a.agent
                .cmp(&b.agent)
                .then(a.timestamp.total_cmp(&b.timestamp))
                .then(a.id.cmp(&b.id))
        });
        let weights: Vec<f64> = votes
            .iter()
            .map(|v| self.weight(v.timestamp, now))
            .collect();
        let mut tally: HashMap<&str, (f64, usize)> = HashMap::new();
        for (v, w) in votes.iter().zip(&weights) {
            let t = tally.entry(&v.problem).or_default();
            t.0 += w;
            t.1 += 1;
        }
        let (problem, (win_weight, _)) = tally
            .iter()
            .max_by(|a, b| {
                a.1.0
                    .total_cmp(&b.1.0)
                    .then(a.1.1.cmp(&b.1.1))
                    .then(b.0.cmp(a.0))
            })
            .map(|(p, t)| (p.to_string(), *t))?;
        let total: f64 = weights.iter().sum();
        let packets = self.seen.len() as u64;
        let agreeing: Vec<(f64, f64)> = votes
            .iter()
            .zip(&weights)
            .filter(|(v, _)| *v.problem == *problem)
            .map(|(v, w)| (v.confidence, *w))
            .collect();
        let dispersion = iqr(agreeing.iter().map(|(c, _)| *c).collect());
        let effective_n = total * total / weights.iter().map(|w| w * w).sum::<f64>();
        let s = &self.settings;
        let snapshot = if s.method == SynthesisMethod::Seed {
            let n = votes.len();
            let strength = win_weight / total;
            let confidence = votes.iter().map(|v| v.confidence).sum::<f64>() / n as f64;
            let alert = strength > s.threshold;
            Snapshot {
                recommendation: recommendation(alert, n, &problem, strength),
                problem,
                strength: round3(strength),
                weighted_confidence: round3(confidence),
                agents: u32::try_from(n).unwrap_or(u32::MAX),
                packets,
                synthesis_pairs: pairs(n),
                dispersion,
                effective_n,
                alert,
            }
        } else {
            let n = votes.len();
            let strength = win_weight / total;
            let confidence = match s.method {
                SynthesisMethod::Median => weighted_median(agreeing),
                SynthesisMethod::TrimmedMean => trimmed_mean(agreeing, s.trim_fraction),
                _ => weighted_mean(&agreeing),
            };
            let alert =
                strength > s.threshold && n >= s.quorum as usize && confidence >= s.min_confidence;
            Snapshot {
                recommendation: recommendation(alert, n, &problem, strength),
                problem,
                strength,
                weighted_confidence: confidence,
                agents: u32::try_from(n).unwrap_or(u32::MAX),
                packets,
                synthesis_pairs: pairs(n),
                dispersion,
                effective_n,
                alert,
            }
        };
        Some(snapshot)
    }
}

fn pairs(n: usize) -> u64 {
    let n = n as u64;
    n * n.saturating_sub(1) / 2
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The seed's recommendation text.
fn recommendation(alert: bool, n: usize, problem: &str, strength: f64) -> String {
    if alert {
        format!(
            "ALERT: {n} agents agree on {problem} (consensus={:.0}%)",
            strength * 100.0
        )
    } else {
        format!("Monitoring: weak signal on {problem} ({n} inputs)")
    }
}

fn weighted_mean(xs: &[(f64, f64)]) -> f64 {
    let w: f64 = xs.iter().map(|(_, w)| w).sum();
    if w <= 0.0 {
        return 0.0;
    }
    xs.iter().map(|(c, w)| c * w).sum::<f64>() / w
}

/// Weighted mean after dropping `floor(n * fraction)` votes at each end (by confidence).
fn trimmed_mean(mut xs: Vec<(f64, f64)>, fraction: f64) -> f64 {
    xs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let cut = (xs.len() as f64 * fraction).floor() as usize;
    if xs.len() > 2 * cut {
        weighted_mean(&xs[cut..xs.len() - cut])
    } else {
        weighted_mean(&xs)
    }
}

/// Smallest confidence at which the cumulative weight reaches half the total.
fn weighted_median(mut xs: Vec<(f64, f64)>) -> f64 {
    xs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let half = xs.iter().map(|(_, w)| w).sum::<f64>() / 2.0;
    let mut acc = 0.0;
    for (c, w) in &xs {
        acc += w;
        if acc >= half {
            return *c;
        }
    }
    xs.last().map(|(c, _)| *c).unwrap_or(0.0)
}

/// Interquartile range with linear interpolation between order statistics (numpy's default).
fn iqr(mut xs: Vec<f64>) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (xs.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        xs[lo] + (xs[hi] - xs[lo]) * (pos - lo as f64)
    };
    q(0.75) - q(0.25)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(pairs(0), 0);
        assert_eq!(pairs(10), 45);
        assert_eq!(iqr(vec![1.0, 2.0, 3.0, 4.0, 5.0]), 2.0);
        assert_eq!(
            weighted_median(vec![(0.1, 1.0), (0.9, 1.0), (0.5, 1.0)]),
            0.5
        );
        assert_eq!(weighted_median(vec![(0.1, 1.0), (0.9, 5.0)]), 0.9);
        let t = trimmed_mean(
            vec![(0.0, 1.0), (0.5, 1.0), (0.5, 1.0), (0.5, 1.0), (1.0, 1.0)],
            0.2,
        );
        assert!((t - 0.5).abs() < 1e-12);
        assert_eq!(
            recommendation(true, 2, "hvac.x", 1.0),
            "ALERT: 2 agents agree on hvac.x (consensus=100%)"
        );
    }
}
