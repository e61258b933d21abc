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

/// A meta with a unique id per packet (no hashing: the flood is a million packets).
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
