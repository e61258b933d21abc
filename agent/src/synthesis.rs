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
//!
//! Memory is bounded per subject by [`Limits`], whatever is published: at most `voters` votes
//! (each with one expiry entry), `packets` remembered packet ids, and `problems` distinct
//! problems named by the votes (counted by reference, so the set shrinks as votes go). When the
//! votes are full, an agent not yet voting is not counted (those voting keep updating) until
//! votes expire; when the packet ids are full, the oldest is forgotten. Both are counted in
//! [`Evictions`].

use crate::packet::{OutcomePacket, PacketKind, PacketMeta};
use qis_crds::SynthesisMethod;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

pub use qis_contract::synthesis::{InvalidSetting, Limits, Settings};

/// Packets the limits turned away, by limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Packets of agents not counted because the votes were full.
    pub voters: u64,
    /// Packet ids forgotten (oldest first) because the remembered ids were full.
    pub packets: u64,
    /// Votes not counted because they named a problem beyond the limit.
    pub problems: u64,
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
    /// Not counted: the window's votes are full and its agent has none in it.
    VotersFull,
    /// Not counted: it names a problem beyond the window's limit.
    ProblemsFull,
    /// Not counted: stamped further ahead of the agent's clock than `maxClockSkew`.
    FromTheFuture,
}

#[derive(Debug, Clone)]
struct Vote {
    id: u64,
    agent: Arc<str>,
    problem: Arc<str>,
    confidence: f64,
    timestamp: f64,
}

/// Where a packet stands in time: its timestamp, then its id (a total order).
#[derive(Debug, Clone, Copy)]
struct Age {
    timestamp: f64,
    id: u64,
}

impl PartialEq for Age {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Age {}
impl PartialOrd for Age {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Age {
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
    /// Of those, the ones whose vote names `problem`.
    pub agreeing_agents: u32,
    /// Timestamp (seconds since the epoch, at most the agent's clock) of the newest vote.
    pub newest: f64,
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
    /// One expiry entry per vote, oldest first.
    vote_ages: BTreeSet<(Age, Arc<str>)>,
    /// Packet ids in the window (duplicates), and their expiry, oldest first.
    seen: HashSet<u64>,
    seen_ages: BinaryHeap<Reverse<Age>>,
    /// The problems the votes name, with how many do.
    problems: HashMap<Arc<str>, usize>,
    evictions: Evictions,
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
            vote_ages: BTreeSet::new(),
            seen: HashSet::new(),
            seen_ages: BinaryHeap::new(),
            problems: HashMap::new(),
            evictions: Evictions::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Outcome packets in the window (after the last expiry).
    pub fn packets_in_window(&self) -> usize {
        self.seen.len()
    }

    /// Votes in the window (after the last expiry).
    pub fn voters(&self) -> usize {
        self.votes.len()
    }

    /// Distinct problems the votes name.
    pub fn problems(&self) -> usize {
        self.problems.len()
    }

    /// What the limits turned away since the synthesizer was made.
    pub fn evictions(&self) -> Evictions {
        self.evictions
    }

    /// The shared name of a problem a vote may name; `None` when it would be one beyond the
    /// limit.
    fn problem_for(&self, problem: &str) -> Option<Arc<str>> {
        match self.problems.get_key_value(problem) {
            Some((p, _)) => Some(p.clone()),
            None if self.problems.len() < self.settings.limits.problems => Some(problem.into()),
            None => None,
        }
    }

    fn forget_problem(&mut self, problem: &Arc<str>) {
        if let Some(n) = self.problems.get_mut(problem) {
            *n -= 1;
            if *n == 0 {
                self.problems.remove(problem);
            }
        }
    }

    fn remember(&mut self, age: Age) {
        if self.seen.len() >= self.settings.limits.packets
            && let Some(Reverse(oldest)) = self.seen_ages.pop()
        {
            self.seen.remove(&oldest.id);
            self.evictions.packets += 1;
        }
        self.seen.insert(age.id);
        self.seen_ages.push(Reverse(age));
    }

    /// Takes one packet in, as of `now` (seconds since the epoch).
    pub fn ingest(&mut self, packet: &OutcomePacket, meta: &PacketMeta, now: f64) -> Ingest {
        let age = match self.arrival(packet, meta, now) {
            Ok(age) => age,
            Err(refused) => return refused,
        };
        let voter: Arc<str> = match self.settings.method {
            SynthesisMethod::Seed => meta.id.as_str().into(),
            _ => packet.agent_id.as_str().into(),
        };
        let old = self.previous_vote(&voter);
        let problem = match self.place_for(packet, age, old.as_ref()) {
            Ok(problem) => problem,
            Err(refused) => return refused,
        };
        self.remember(age);
        if let Some((old_age, old_problem)) = old {
            self.vote_ages.remove(&(old_age, voter.clone()));
            self.forget_problem(&old_problem);
        }
        *self.problems.entry(problem.clone()).or_default() += 1;
        self.vote_ages.insert((age, voter.clone()));
        let agent = match self.settings.method {
            SynthesisMethod::Seed => packet.agent_id.as_str().into(),
            _ => voter.clone(),
        };
        let vote = Vote {
            id: age.id,
            agent,
            problem,
            confidence: packet.confidence,
            timestamp: packet.timestamp,
        };
        self.votes.insert(voter, vote);
        Ingest::Voted
    }

    /// Where a packet stands, once the window is expired as of `now`; why it is no vote if
    /// it is none (a synthesis packet, outside the window or the clock skew, already seen).
    fn arrival(
        &mut self,
        packet: &OutcomePacket,
        meta: &PacketMeta,
        now: f64,
    ) -> Result<Age, Ingest> {
        if meta.kind == PacketKind::Synthesis {
            return Err(Ingest::NotAVote);
        }
        self.expire(now);
        if packet.timestamp < now - self.settings.window {
            return Err(Ingest::Expired);
        }
        if packet.timestamp > now + self.settings.max_clock_skew {
            return Err(Ingest::FromTheFuture);
        }
        let age = Age {
            timestamp: packet.timestamp,
            id: hash_id(&meta.id),
        };
        if self.seen.contains(&age.id) {
            return Err(Ingest::Duplicate);
        }
        Ok(age)
    }

    /// The age and problem of `voter`'s current vote, if it has one.
    fn previous_vote(&self, voter: &Arc<str>) -> Option<(Age, Arc<str>)> {
        self.votes.get(voter).map(|v| {
            let age = Age {
                timestamp: v.timestamp,
                id: v.id,
            };
            (age, v.problem.clone())
        })
    }

    /// The problem a new vote of age `age` counts for, replacing `old`; why it does not count
    /// if the window's limits leave no place for it (an older packet is remembered as seen).
    fn place_for(
        &mut self,
        packet: &OutcomePacket,
        age: Age,
        old: Option<&(Age, Arc<str>)>,
    ) -> Result<Arc<str>, Ingest> {
        match old {
            Some((old_age, _)) if age <= *old_age => {
                self.remember(age);
                return Err(Ingest::Superseded);
            }
            None if self.votes.len() >= self.settings.limits.voters => {
                self.evictions.voters += 1;
                return Err(Ingest::VotersFull);
            }
            _ => {}
        }
        let frees_a_place = old.is_some_and(|(_, p)| self.problems.get(p) == Some(&1));
        match self.problem_for(&packet.problem()) {
            Some(p) => Ok(p),
            None if frees_a_place => Ok(packet.problem().into()),
            None => {
                self.evictions.problems += 1;
                Err(Ingest::ProblemsFull)
            }
        }
    }

    /// Drops packets and votes older than the window; amortized O(log n) per packet.
    pub fn expire(&mut self, now: f64) {
        let horizon = now - self.settings.window;
        while self
            .seen_ages
            .peek()
            .is_some_and(|Reverse(a)| a.timestamp < horizon)
        {
            if let Some(Reverse(a)) = self.seen_ages.pop() {
                self.seen.remove(&a.id);
            }
        }
        while self
            .vote_ages
            .first()
            .is_some_and(|(a, _)| a.timestamp < horizon)
        {
            let Some((_, voter)) = self.vote_ages.pop_first() else {
                break;
            };
            if let Some(vote) = self.votes.remove(&voter) {
                self.forget_problem(&vote.problem);
            }
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
        // Weighed as of the newest vote (at most `now`): every result is a ratio of weights, so
        // this changes none, and the newest vote weighs 1. Weighed as of `now`, a window many
        // half-lives long made every weight underflow to 0 and the results 0/0.
        let reference = votes
            .iter()
            .map(|v| v.timestamp)
            .fold(f64::NEG_INFINITY, f64::max)
            .min(now);
        let weights: Vec<f64> = votes
            .iter()
            .map(|v| self.weight(v.timestamp, reference))
            .collect();
        let (problem, win_weight) = winner(&votes, &weights)?;
        let total: f64 = weights.iter().sum();
        let packets = self.seen.len() as u64;
        let agreeing: Vec<(f64, f64)> = votes
            .iter()
            .zip(&weights)
            .filter(|(v, _)| *v.problem == *problem)
            .map(|(v, w)| (v.confidence, *w))
            .collect();
        let agreeing_agents = u32::try_from(agreeing.len()).unwrap_or(u32::MAX);
        let dispersion = iqr(agreeing.iter().map(|(c, _)| *c).collect());
        let effective_n = total * total / weights.iter().map(|w| w * w).sum::<f64>();
        let n = votes.len();
        let strength = win_weight / total;
        let (reported_strength, confidence, alert) = self.verdict(&votes, agreeing, strength);
        let snapshot = Snapshot {
            recommendation: recommendation(alert, n, &problem, strength),
            problem,
            strength: reported_strength,
            weighted_confidence: confidence,
            agents: u32::try_from(n).unwrap_or(u32::MAX),
            agreeing_agents,
            newest: reference,
            packets,
            synthesis_pairs: pairs(n),
            dispersion,
            effective_n,
            alert,
        };
        Some(snapshot)
    }

    /// The strength and confidence as reported and whether to alert, by the method: the
    /// seed's (rounded, the mean confidence of all votes, the threshold alone) or a weighted
    /// one (the agreeing votes' confidence combined; threshold, quorum and confidence).
    fn verdict(
        &self,
        votes: &[&Vote],
        agreeing: Vec<(f64, f64)>,
        strength: f64,
    ) -> (f64, f64, bool) {
        let s = &self.settings;
        let n = votes.len();
        if s.method == SynthesisMethod::Seed {
            let confidence = votes.iter().map(|v| v.confidence).sum::<f64>() / n as f64;
            return (round3(strength), round3(confidence), strength > s.threshold);
        }
        let confidence = match s.method {
            SynthesisMethod::Median => weighted_median(agreeing),
            SynthesisMethod::TrimmedMean => trimmed_mean(agreeing, s.trim_fraction),
            _ => weighted_mean(&agreeing),
        };
        let alert =
            strength > s.threshold && n >= s.quorum as usize && confidence >= s.min_confidence;
        (strength, confidence, alert)
    }
}

/// The problem with the most vote weight (then the most votes, then the first by name), and
/// its weight.
fn winner(votes: &[&Vote], weights: &[f64]) -> Option<(String, f64)> {
    let mut tally: HashMap<&str, (f64, usize)> = HashMap::new();
    for (v, w) in votes.iter().zip(weights) {
        let t = tally.entry(&v.problem).or_default();
        t.0 += w;
        t.1 += 1;
    }
    tally
        .iter()
        .max_by(|a, b| {
            a.1.0
                .total_cmp(&b.1.0)
                .then(a.1.1.cmp(&b.1.1))
                .then(b.0.cmp(a.0))
        })
        .map(|(p, t)| (p.to_string(), t.0))
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

    /// Found by agent/tests/fuzz_config.rs (seed 6830398944098360811): with a half-life of
    /// 1.5 s, votes 30 minutes old weighed 0.5^1200 = 0 and the snapshot's strength was 0/0.
    #[test]
    fn old_votes_with_a_short_half_life_give_finite_figures() {
        let crd = qis_crds::SynthesisSettings {
            half_life: Some(std::time::Duration::from_millis(1500).into()),
            window: Some(std::time::Duration::from_secs(3 * 3600).into()),
            ..Default::default()
        };
        let mut s = Synthesizer::new(Settings::from_crd(&crd).expect("valid"));
        let now = 1_764_150_100.0;
        for (agent, age) in [("a", 1800.0), ("b", 1900.0)] {
            let p = OutcomePacket {
                agent_id: agent.into(),
                domain: "hvac".into(),
                problem_class: "x".into(),
                conclusion: "c".into(),
                confidence: 0.8,
                context_vector: vec![],
                timestamp: now - age,
                source_node: "n".into(),
            };
            let meta = PacketMeta::outcome(&p.encode().expect("valid"));
            assert_eq!(s.ingest(&p, &meta, now), Ingest::Voted);
        }
        let snap = s.snapshot(now).expect("votes in the window");
        assert_eq!(snap.strength, 1.0);
        assert!((snap.weighted_confidence - 0.8).abs() < 1e-12);
        assert!(snap.effective_n.is_finite() && snap.effective_n >= 1.0);
    }

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
