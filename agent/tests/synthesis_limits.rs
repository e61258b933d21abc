//! The window of one subject stays within its limits whatever is published: a flood of distinct
//! agent ids, of problem classes, of packets. Honest agents already voting keep their votes and
//! keep updating them; what the limits turned away is counted.

use qis_agent::packet::{OutcomePacket, PacketKind, PacketMeta};
use qis_agent::synthesis::{Evictions, Ingest, Limits, Settings, Synthesizer};
use qis_crds::SynthesisMethod;

const NOW: f64 = 1_764_150_100.0;

fn packet(agent: &str, class: &str, confidence: f64, timestamp: f64) -> OutcomePacket {
    OutcomePacket {
        agent_id: agent.into(),
        domain: "hvac".into(),
        problem_class: class.into(),
        conclusion: String::new(),
        confidence,
        context_vector: vec![],
        timestamp,
        source_node: "site".into(),
    }
}

/// A meta with a unique id per packet (no SHA-256 of a body: the flood is a million packets).
fn meta(id: String) -> PacketMeta {
    PacketMeta {
        id,
        kind: PacketKind::Outcome,
        hops: 0,
    }
}

fn settings(limits: Limits) -> Settings {
    Settings {
        method: SynthesisMethod::Mean,
        quorum: 3,
        limits,
        ..Settings::default()
    }
}

const HONEST: [&str; 3] = ["hall-a", "hall-b", "hall-c"];

fn honest_round(s: &mut Synthesizer, round: usize, t: f64) {
    for agent in HONEST {
        let p = packet(agent, "bearing-wear", 0.9, t);
        let outcome = s.ingest(&p, &meta(format!("{agent}-{round}")), t);
        assert_eq!(outcome, Ingest::Voted, "{agent} round {round}");
    }
}

#[test]
fn a_million_distinct_agents_do_not_grow_the_window_past_its_limits() {
    let limits = Limits {
        voters: 1_000,
        packets: 10_000,
        problems: 16,
    };
    let mut s = Synthesizer::new(settings(limits));
    honest_round(&mut s, 0, NOW);
    let flood = 1_000_000;
    let mut refused = 0u64;
    for i in 0..flood {
        // Every flood packet is newer than the honest votes and names another agent.
        let t = NOW + 1.0 + i as f64 * 1e-4;
        let p = packet(&format!("flood-{i}"), "none", 0.1, t);
        match s.ingest(&p, &meta(format!("f{i}")), t) {
            Ingest::VotersFull => refused += 1,
            Ingest::Voted => {}
            other => panic!("flood packet {i}: {other:?}"),
        }
        if i % 250_000 == 0 {
            honest_round(&mut s, i / 250_000 + 1, t);
        }
        assert!(s.voters() <= limits.voters);
        assert!(s.packets_in_window() <= limits.packets);
    }
    let t = NOW + 1.0 + flood as f64 * 1e-4;
    honest_round(&mut s, 99, t);
    assert_eq!(s.voters(), limits.voters);
    let e = s.evictions();
    assert_eq!(e.voters, refused);
    assert_eq!(
        e.voters,
        flood as u64 - (limits.voters - HONEST.len()) as u64
    );
    // Packets turned away are not remembered either: the ids held are the votes' and the
    // halls' updates (6 rounds of 3).
    assert_eq!(s.packets_in_window(), limits.voters - HONEST.len() + 6 * 3);
    // The halls' votes are still there: each update above was taken as their vote.
    let snap = s.snapshot(t).expect("votes");
    assert_eq!(snap.agents as usize, limits.voters);
    assert!(s.problems() <= limits.problems);
}

#[test]
fn honest_votes_survive_and_a_full_window_frees_as_votes_expire() {
    let limits = Limits {
        voters: 10,
        packets: 100,
        problems: 4,
    };
    let mut s = Synthesizer::new(Settings {
        window: 60.0,
        ..settings(limits)
    });
    honest_round(&mut s, 0, NOW);
    for i in 0..1_000 {
        let p = packet(&format!("flood-{i}"), "none", 0.1, NOW);
        s.ingest(&p, &meta(format!("f{i}")), NOW);
    }
    assert_eq!(s.voters(), 10);
    // The halls keep voting; the flood's votes expire with the window and new agents get in.
    let later = NOW + 61.0;
    honest_round(&mut s, 1, later);
    assert_eq!(s.voters(), 3, "the flood's votes expired");
    let p = packet("hall-d", "bearing-wear", 0.8, later);
    assert_eq!(s.ingest(&p, &meta("hall-d-1".into()), later), Ingest::Voted);
    let snap = s.snapshot(later).expect("votes");
    assert_eq!(snap.agents, 4);
    assert_eq!(snap.problem, "hvac.bearing-wear");
    assert!(snap.alert, "{snap:?}");
}

#[test]
fn problems_beyond_the_limit_are_not_counted_and_the_set_shrinks_as_votes_move() {
    let limits = Limits {
        voters: 1_000,
        packets: 10_000,
        problems: 3,
    };
    let mut s = Synthesizer::new(settings(limits));
    let mut n = 0;
    let mut ingest = |s: &mut Synthesizer, agent: &str, class: &str| {
        n += 1;
        let t = NOW + f64::from(n);
        s.ingest(&packet(agent, class, 0.5, t), &meta(format!("{n}")), t)
    };
    assert_eq!(ingest(&mut s, "a", "p1"), Ingest::Voted);
    assert_eq!(ingest(&mut s, "b", "p2"), Ingest::Voted);
    assert_eq!(ingest(&mut s, "c", "p3"), Ingest::Voted);
    for i in 0..100 {
        assert_eq!(
            ingest(&mut s, &format!("x{i}"), &format!("junk-{i}")),
            Ingest::ProblemsFull
        );
    }
    assert_eq!(s.problems(), 3);
    assert_eq!(s.evictions().problems, 100);
    // Agents moving to p1 free p2 and p3 (before, the set only emptied with the whole window).
    assert_eq!(ingest(&mut s, "b", "p1"), Ingest::Voted);
    assert_eq!(ingest(&mut s, "c", "p1"), Ingest::Voted);
    assert_eq!(s.problems(), 1);
    assert_eq!(ingest(&mut s, "d", "p4"), Ingest::Voted);
    assert_eq!(s.problems(), 2);
}

#[test]
fn forgotten_packet_ids_do_not_count_a_redelivered_vote_twice() {
    let limits = Limits {
        voters: 100,
        packets: 4,
        problems: 10,
    };
    let mut s = Synthesizer::new(settings(limits));
    let first = packet("hall-a", "bearing-wear", 0.9, NOW);
    assert_eq!(s.ingest(&first, &meta("a-0".into()), NOW), Ingest::Voted);
    for i in 1..=10 {
        let t = NOW + f64::from(i);
        let p = packet(&format!("hall-{i}"), "bearing-wear", 0.9, t);
        s.ingest(&p, &meta(format!("{i}")), t);
    }
    assert_eq!(s.packets_in_window(), 4);
    assert_eq!(s.evictions().packets, 7);
    // hall-a's packet id was forgotten; delivered again, it changes nothing.
    assert_eq!(
        s.ingest(&first, &meta("a-0".into()), NOW + 11.0),
        Ingest::Superseded
    );
    assert_eq!(s.voters(), 11);
    assert_eq!(
        s.evictions(),
        Evictions {
            voters: 0,
            packets: 8,
            problems: 0
        }
    );
}

/// Proves a packet stamped beyond the clock skew is not counted: under an honest agent's id it
/// would otherwise supersede every real packet of that agent and never expire.
#[test]
fn a_packet_from_the_future_is_not_counted() {
    let mut s = Synthesizer::new(settings(Limits::default()));
    let honest = packet("hall-b", "bearing-wear", 0.9, NOW);
    assert_eq!(s.ingest(&honest, &meta("b-0".into()), NOW), Ingest::Voted);
    let forged = packet("hall-b", "none", 0.1, NOW + 1e6);
    assert_eq!(
        s.ingest(&forged, &meta("forged".into()), NOW),
        Ingest::FromTheFuture
    );
    let within = packet("hall-b", "bearing-wear", 0.8, NOW + 10.0);
    assert_eq!(s.ingest(&within, &meta("b-1".into()), NOW), Ingest::Voted);
    let snap = s.snapshot(NOW).expect("votes");
    assert_eq!(snap.problem, "hvac.bearing-wear");
    assert_eq!(snap.weighted_confidence, 0.8);
}

/// Proves a replaced vote's old expiry entry is gone: when the old packet's time leaves the
/// window, the agent's current vote stays.
#[test]
fn a_replaced_vote_outlives_its_predecessors_expiry() {
    let mut s = Synthesizer::new(Settings {
        window: 60.0,
        ..settings(Limits::default())
    });
    let old = packet("hall-a", "bearing-wear", 0.5, NOW);
    assert_eq!(s.ingest(&old, &meta("a-0".into()), NOW), Ingest::Voted);
    let new = packet("hall-a", "bearing-wear", 0.9, NOW + 30.0);
    assert_eq!(
        s.ingest(&new, &meta("a-1".into()), NOW + 30.0),
        Ingest::Voted
    );
    // NOW has left the window, NOW + 30 has not.
    let snap = s.snapshot(NOW + 70.0).expect("the current vote stays");
    assert_eq!(snap.agents, 1);
    assert_eq!(snap.weighted_confidence, 0.9);
    assert_eq!(s.packets_in_window(), 1);
    assert!(
        s.snapshot(NOW + 91.0).is_none(),
        "and expires in its own time"
    );
}

/// Proves an agent that alone names a problem may move to a new one while the problems are
/// full: its move frees the place it held.
#[test]
fn the_only_voter_of_a_problem_may_move_when_the_problems_are_full() {
    let limits = Limits {
        voters: 10,
        packets: 100,
        problems: 2,
    };
    let mut s = Synthesizer::new(settings(limits));
    let a = packet("a", "p1", 0.5, NOW);
    let b = packet("b", "p2", 0.5, NOW);
    assert_eq!(s.ingest(&a, &meta("a0".into()), NOW), Ingest::Voted);
    assert_eq!(s.ingest(&b, &meta("b0".into()), NOW), Ingest::Voted);
    let moved = packet("b", "p3", 0.5, NOW + 1.0);
    assert_eq!(
        s.ingest(&moved, &meta("b1".into()), NOW + 1.0),
        Ingest::Voted
    );
    assert_eq!(s.problems(), 2);
    let other = packet("c", "p4", 0.5, NOW + 2.0);
    assert_eq!(
        s.ingest(&other, &meta("c0".into()), NOW + 2.0),
        Ingest::ProblemsFull
    );
}

/// Proves a window many half-lives long gives numbers, not 0/0: weights are taken relative to
/// the newest vote.
#[test]
fn a_window_of_many_half_lives_still_gives_a_consensus() {
    let mut s = Synthesizer::new(Settings {
        window: 3600.0,
        half_life: Some(1.0),
        ..settings(Limits::default())
    });
    for (i, agent) in ["a", "b", "c"].iter().enumerate() {
        let t = NOW - 3000.0 + i as f64;
        let p = packet(agent, "bearing-wear", 0.9, t);
        assert_eq!(s.ingest(&p, &meta(agent.to_string()), NOW), Ingest::Voted);
    }
    let snap = s.snapshot(NOW).expect("votes");
    assert!(
        snap.strength.is_finite() && snap.strength == 1.0,
        "{snap:?}"
    );
    assert!(snap.effective_n.is_finite(), "{snap:?}");
    assert!((snap.weighted_confidence - 0.9).abs() < 1e-12, "{snap:?}");
}
