//! The synthesis core: the seed's numbers on its demo packets, and the properties
//! `docs/synthesis.md` states (order independence, duplicates, one vote per agent, quorum,
//! decay).

use proptest::prelude::*;
use qis_agent::packet::{OutcomePacket, PacketMeta};
use qis_agent::synthesis::{Ingest, Settings, Synthesizer};
use qis_crds::SynthesisMethod;
use serde_json::Value;

const NOW: f64 = 1_764_150_100.0;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/packets.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json")
}

fn packet(
    agent: &str,
    problem_class: &str,
    confidence: f64,
    timestamp: f64,
) -> (OutcomePacket, PacketMeta) {
    let p = OutcomePacket {
        agent_id: agent.into(),
        domain: "hvac".into(),
        problem_class: problem_class.into(),
        conclusion: format!("{agent} saw {problem_class}"),
        confidence,
        context_vector: vec![0.1, 0.2],
        timestamp,
        source_node: format!("{agent}-node"),
    };
    let meta = PacketMeta::outcome(&p.encode().expect("valid"));
    (p, meta)
}

fn full(method: SynthesisMethod) -> Settings {
    Settings {
        method,
        window: 3600.0,
        half_life: None,
        threshold: 0.6,
        quorum: 2,
        min_confidence: 0.5,
        trim_fraction: 0.1,
        limits: Default::default(),
        max_clock_skew: Settings::DEFAULT_MAX_CLOCK_SKEW,
    }
}

/// Proves seed mode gives the seed's `synthesize_locally(B, [A])` numbers, as the seed's own
/// Python code computed them into the vectors file.
#[test]
fn seed_mode_reproduces_the_demo_numbers() {
    let doc = vectors();
    let want = &doc["seed_synthesis"];
    let mut s = Synthesizer::new(Settings::seed());
    for v in doc["valid"].as_array().expect("valid").iter().take(2) {
        let body = v["body"].as_str().expect("body").as_bytes();
        let p = OutcomePacket::decode(body).expect("valid");
        assert_eq!(s.ingest(&p, &PacketMeta::outcome(body), NOW), Ingest::Voted);
    }
    let snap = s.snapshot(NOW).expect("votes");
    assert_eq!(
        snap.weighted_confidence,
        want["weighted_confidence"].as_f64().expect("num")
    );
    assert_eq!(
        snap.strength,
        want["consensus_strength"].as_f64().expect("num")
    );
    assert_eq!(
        snap.synthesis_pairs,
        want["synthesis_pairs"].as_u64().expect("num")
    );
    assert_eq!(
        u64::from(snap.agents),
        want["n_agents"].as_u64().expect("num")
    );
    assert_eq!(
        snap.problem,
        want["consensus_problem"].as_str().expect("str")
    );
    assert_eq!(
        snap.recommendation,
        want["recommendation"].as_str().expect("str")
    );
}

/// Proves seed mode counts packets (as the seed does) while full mode counts agents.
#[test]
fn seed_counts_packets_full_counts_agents() {
    let flood: Vec<_> = (0..5)
        .map(|i| packet("a", "energy-anomaly", 0.9, NOW - f64::from(i)))
        .collect();
    let other = packet("b", "refrigerant-loss", 0.4, NOW);
    let mut seed = Synthesizer::new(Settings::seed());
    let mut fair = Synthesizer::new(full(SynthesisMethod::Mean));
    for (p, m) in flood.iter().chain([&other]) {
        seed.ingest(p, m, NOW);
        fair.ingest(p, m, NOW);
    }
    let seed = seed.snapshot(NOW).expect("votes");
    assert_eq!(
        (seed.agents, seed.problem.as_str()),
        (6, "hvac.energy-anomaly")
    );
    let fair = fair.snapshot(NOW).expect("votes");
    assert_eq!(fair.agents, 2);
    assert_eq!(fair.packets, 6);
    assert_eq!(fair.strength, 0.5);
    assert!(!fair.alert);
}

/// Proves the alert needs the quorum of distinct agents as well as the strength.
#[test]
fn alert_needs_quorum() {
    let mut s = Synthesizer::new(Settings {
        quorum: 3,
        ..full(SynthesisMethod::Mean)
    });
    for agent in ["a", "b"] {
        let (p, m) = packet(agent, "energy-anomaly", 0.9, NOW);
        s.ingest(&p, &m, NOW);
    }
    let snap = s.snapshot(NOW).expect("votes");
    assert_eq!(snap.strength, 1.0);
    assert!(!snap.alert, "two agents are below a quorum of three");
    let (p, m) = packet("c", "energy-anomaly", 0.8, NOW);
    s.ingest(&p, &m, NOW);
    assert!(s.snapshot(NOW).expect("votes").alert);
}

/// Proves agreement alone is not an alarm: every agent agreeing on a single problem gives
/// strength 1.0 and a quorum, but no alert while their combined confidence is under
/// `minConfidence`; the seed method keeps alerting on strength alone.
#[test]
fn alert_needs_confidence() {
    let votes = |s: &mut Synthesizer, confidence: f64| {
        for agent in ["a", "b", "c"] {
            let (p, m) = packet(agent, "energy-anomaly", confidence, NOW);
            s.ingest(&p, &m, NOW);
        }
        s.snapshot(NOW).expect("votes")
    };
    let mut s = Synthesizer::new(full(SynthesisMethod::Mean));
    let snap = votes(&mut s, 0.2);
    assert_eq!((snap.strength, snap.agents), (1.0, 3));
    assert!(!snap.alert, "three agents at 20 % are not an alarm");
    assert!(snap.recommendation.starts_with("Monitoring"));
    // Newer, surer votes from the same agents replace theirs.
    let snap = votes(&mut s, 0.7);
    assert!(snap.alert, "{snap:?}");
    let mut lenient = Synthesizer::new(Settings {
        min_confidence: 0.1,
        ..full(SynthesisMethod::Mean)
    });
    assert!(votes(&mut lenient, 0.2).alert);
    let mut seed = Synthesizer::new(Settings::seed());
    assert!(
        votes(&mut seed, 0.2).alert,
        "the seed alerts on strength alone"
    );
}

/// Proves the window: old packets are refused, and votes leave the window as time passes.
#[test]
fn window_expires_votes() {
    let mut s = Synthesizer::new(Settings {
        window: 60.0,
        ..full(SynthesisMethod::Mean)
    });
    let (old, m) = packet("a", "energy-anomaly", 0.9, NOW - 61.0);
    assert_eq!(s.ingest(&old, &m, NOW), Ingest::Expired);
    let (p, m) = packet("a", "energy-anomaly", 0.9, NOW - 30.0);
    assert_eq!(s.ingest(&p, &m, NOW), Ingest::Voted);
    assert!(s.snapshot(NOW).is_some());
    assert_eq!(s.snapshot(NOW + 31.0), None);
    assert_eq!(s.packets_in_window(), 0);
}

/// Proves synthesis packets never vote.
#[test]
fn synthesis_packets_do_not_vote() {
    let mut s = Synthesizer::new(full(SynthesisMethod::Mean));
    let (p, _) = packet("a", "energy-anomaly", 0.9, NOW);
    let meta = PacketMeta::synthesis(&p.encode().expect("valid"), 0);
    assert_eq!(s.ingest(&p, &meta, NOW), Ingest::NotAVote);
    assert_eq!(s.snapshot(NOW), None);
}

/// Proves median and trimmed mean resist one outlier where the mean does not.
#[test]
fn robust_estimators() {
    let confidences = [0.8, 0.82, 0.79, 0.81, 0.8, 0.78, 0.83, 0.8, 0.81, 0.02];
    let mut snaps = Vec::new();
    for method in [
        SynthesisMethod::Mean,
        SynthesisMethod::TrimmedMean,
        SynthesisMethod::Median,
    ] {
        let mut s = Synthesizer::new(full(method));
        for (i, c) in confidences.iter().enumerate() {
            let (p, m) = packet(&format!("agent-{i}"), "energy-anomaly", *c, NOW);
            s.ingest(&p, &m, NOW);
        }
        snaps.push(s.snapshot(NOW).expect("votes"));
    }
    assert!(snaps[0].weighted_confidence < 0.75);
    assert!((snaps[1].weighted_confidence - 0.8).abs() < 0.01);
    assert_eq!(snaps[2].weighted_confidence, 0.8);
    assert!(snaps[0].dispersion > 0.0 && snaps[0].dispersion < 0.05);
    assert_eq!(snaps[0].synthesis_pairs, 45);
}

/// Proves a domain-wide subject takes the plurality across problem classes.
#[test]
fn domain_wide_plurality() {
    let mut s = Synthesizer::new(full(SynthesisMethod::Mean));
    for (agent, class) in [
        ("a", "bearing-wear"),
        ("b", "bearing-wear"),
        ("c", "gear-fatigue"),
    ] {
        let (p, m) = packet(agent, class, 0.7, NOW);
        s.ingest(&p, &m, NOW);
    }
    let snap = s.snapshot(NOW).expect("votes");
    assert_eq!(snap.problem, "hvac.bearing-wear");
    assert!((snap.strength - 2.0 / 3.0).abs() < 1e-12);
    assert!(snap.alert);
}

fn arb_packets() -> impl Strategy<Value = Vec<(OutcomePacket, PacketMeta)>> {
    proptest::collection::vec((0..6usize, 0..3usize, 0.0..=1.0f64, 0.0..3000.0f64), 1..40).prop_map(
        |raw| {
            raw.into_iter()
                .map(|(a, c, conf, age)| {
                    packet(&format!("agent-{a}"), ["x", "y", "z"][c], conf, NOW - age)
                })
                .collect()
        },
    )
}

fn run(
    settings: &Settings,
    packets: &[(OutcomePacket, PacketMeta)],
) -> Option<qis_agent::synthesis::Snapshot> {
    let mut s = Synthesizer::new(settings.clone());
    for (p, m) in packets {
        s.ingest(p, m, NOW);
    }
    s.snapshot(NOW)
}

fn methods() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![
            Just(SynthesisMethod::Seed),
            Just(SynthesisMethod::Mean),
            Just(SynthesisMethod::TrimmedMean),
            Just(SynthesisMethod::Median)
        ],
        proptest::option::of(10.0..5000.0f64),
    )
        .prop_map(|(method, half_life)| Settings {
            method,
            half_life,
            ..full(method)
        })
}

proptest! {
    /// Proves the snapshot does not depend on arrival order.
    #[test]
    fn order_independent(settings in methods(), packets in arb_packets(), seed in any::<u64>()) {
        let mut shuffled = packets.clone();
        let mut rng = seed;
        for i in (1..shuffled.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (rng >> 33) as usize % (i + 1));
        }
        prop_assert_eq!(run(&settings, &packets), run(&settings, &shuffled));
    }

    /// Proves redelivered duplicates change nothing.
    #[test]
    fn duplicates_change_nothing(settings in methods(), packets in arb_packets(), every in 1..4usize) {
        let mut doubled = packets.clone();
        doubled.extend(packets.iter().step_by(every).cloned());
        prop_assert_eq!(run(&settings, &packets), run(&settings, &doubled));
    }

    /// Proves one agent flooding N packets is one vote: agents counts distinct agent ids.
    #[test]
    fn flooding_counts_once(packets in arb_packets(), n in 1..50usize) {
        let settings = full(SynthesisMethod::Mean);
        let mut flooded = packets.clone();
        for i in 0..n {
            flooded.push(packet("agent-0", "x", 1.0, NOW - 3000.0 - i as f64 * 0.01));
        }
        let distinct: std::collections::HashSet<_> = flooded.iter().map(|(p, _)| p.agent_id.clone()).collect();
        let snap = run(&settings, &flooded).expect("votes");
        prop_assert_eq!(snap.agents as usize, distinct.len());
        prop_assert_eq!(snap.packets as usize, flooded.len() - dupes(&flooded));
    }

    /// Proves decay is monotone: a vote weighs less the older it is, a problem whose votes are all
    /// newer than the others' weighs at least as much with decay as without, and it never loses
    /// strength as time passes.
    #[test]
    fn decay_is_monotone(half_life in 10.0..5000.0f64, ages in proptest::collection::vec(0.0..1000.0f64, 2..10), later in 0.0..1000.0f64) {
        let settings = Settings { half_life: Some(half_life), ..full(SynthesisMethod::Mean) };
        let s = Synthesizer::new(settings.clone());
        let mut sorted = ages.clone();
        sorted.sort_by(f64::total_cmp);
        for pair in sorted.windows(2) {
            prop_assert!(s.weight(NOW - pair[1], NOW) <= s.weight(NOW - pair[0], NOW));
        }
        let mut packets = Vec::new();
        for (i, age) in sorted.iter().enumerate() {
            packets.push(packet(&format!("old-{i}"), "x", 0.5, NOW - 1000.0 - age));
        }
        packets.push(packet("new", "y", 0.5, NOW));
        let undecayed = run(&Settings { half_life: None, ..settings.clone() }, &packets).expect("votes");
        let mut s = Synthesizer::new(settings);
        for (p, m) in &packets { s.ingest(p, m, NOW); }
        let share = |snap: qis_agent::synthesis::Snapshot| if snap.problem == "hvac.y" { snap.strength } else { 1.0 - snap.strength };
        let before = share(s.snapshot(NOW).expect("votes"));
        prop_assert!(before >= share(undecayed) - 1e-12);
        let after = share(s.snapshot(NOW + later).expect("votes"));
        prop_assert!(after >= before - 1e-12, "{} < {}", after, before);
    }
}

fn dupes(packets: &[(OutcomePacket, PacketMeta)]) -> usize {
    let ids: std::collections::HashSet<_> = packets.iter().map(|(_, m)| m.id.clone()).collect();
    packets.len() - ids.len()
}
