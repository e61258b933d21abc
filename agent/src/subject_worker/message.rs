//! The one path of a received packet (a twin), in every state that handles messages: decode
//! its headers and body, check the hop limit, ingest it into the synthesis state, count what
//! became of it, and tell the consumer (ack once it is in the synthesis state, terminate a
//! packet that breaks the rules; the standby follower is not acked).

use crate::metrics::Metrics;
use crate::packet::{OutcomePacket, PacketKind, PacketMeta};
use crate::synthesis::{Ingest, Synthesizer};
use async_nats::HeaderMap;
use std::time::Instant;

/// What became of one received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// In the synthesis state (a vote, superseded, not counted for a window limit…).
    Ingested,
    /// Seen before: changed nothing.
    Duplicate,
    /// Broke a rule (named as in `qis_agent_packets_refused_total`), a timestamp outside the
    /// window or the clock skew included: it changed nothing.
    Refused(&'static str),
}

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The site's durable consumer: acked.
    Durable,
    /// The standby follower (an ordered consumer): nothing to ack.
    Follower,
}

/// What the consumer is told about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Ack,
    /// A packet that breaks the rules never will not: not redelivered.
    Terminate,
    Nothing,
}

/// Decodes a packet and ingests it into `synth`, uncounted (the rebuild reads the window
/// this way); the rule it broke, if it did.
pub fn decode_and_ingest(
    synth: &mut Synthesizer,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    max_hops: u8,
    metrics: &Metrics,
) -> Result<Ingest, &'static str> {
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let meta = PacketMeta::from_headers(get, payload).map_err(|e| e.rule())?;
    let packet = OutcomePacket::decode(payload).map_err(|e| e.rule())?;
    if meta.kind == PacketKind::Synthesis && meta.hops > max_hops {
        return Err("hop_limit");
    }
    let started = Instant::now();
    let outcome = synth.ingest(&packet, &meta, super::now());
    metrics
        .synthesis_latency
        .observe(started.elapsed().as_secs_f64());
    // Outside `[now − window, now + maxClockSkew]`: ignored (nothing changed) and counted.
    match outcome {
        Ingest::FromTheFuture => Err("timestamp_in_future"),
        Ingest::Expired => Err("timestamp_too_old"),
        _ => Ok(outcome),
    }
}

/// A received packet through the one path: ingested and counted (`twins_in`, then
/// `twins_duplicate` or `packets_refused` by rule).
pub fn receive(
    synth: &mut Synthesizer,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    max_hops: u8,
    metrics: &Metrics,
) -> Outcome {
    metrics.twins_in.inc();
    match decode_and_ingest(synth, headers, payload, max_hops, metrics) {
        Ok(Ingest::Duplicate) => {
            metrics.twins_duplicate.inc();
            Outcome::Duplicate
        }
        Ok(_) => Outcome::Ingested,
        Err(rule) => {
            metrics.refused(rule);
            Outcome::Refused(rule)
        }
    }
}

/// What to tell the consumer a message came from.
pub fn reply(delivery: Delivery, outcome: Outcome) -> Reply {
    match (delivery, outcome) {
        (Delivery::Follower, _) => Reply::Nothing,
        (Delivery::Durable, Outcome::Refused(_)) => Reply::Terminate,
        (Delivery::Durable, Outcome::Ingested | Outcome::Duplicate) => Reply::Ack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RuleLabel;
    use crate::synthesis::Settings;
    use qis_crds::constants::{HEADER_HOPS, HEADER_KIND};

    fn body(agent: &str, at: f64) -> Vec<u8> {
        vote(agent, "overload", 0.9, at)
    }

    fn vote(agent: &str, class: &str, confidence: f64, at: f64) -> Vec<u8> {
        OutcomePacket {
            agent_id: agent.to_owned(),
            domain: "grid".to_owned(),
            problem_class: class.to_owned(),
            conclusion: "shed load".to_owned(),
            confidence,
            context_vector: vec![],
            timestamp: at,
            source_node: "site-a".to_owned(),
        }
        .encode()
        .expect("a small packet encodes")
    }

    fn synthesis_headers(hops: u8) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_KIND, "synthesis");
        h.insert(HEADER_HOPS, hops.to_string().as_str());
        h
    }

    fn refused(m: &Metrics, rule: &'static str) -> u64 {
        m.packets_refused.get_or_create(&RuleLabel { rule }).get()
    }

    #[test]
    fn a_packet_is_ingested_once_and_its_repeat_is_a_counted_duplicate() {
        let (m, mut synth) = (Metrics::default(), Synthesizer::new(Settings::default()));
        let b = body("a1", super::super::now());
        assert_eq!(receive(&mut synth, None, &b, 1, &m), Outcome::Ingested);
        assert_eq!(receive(&mut synth, None, &b, 1, &m), Outcome::Duplicate);
        assert_eq!((m.twins_in.get(), m.twins_duplicate.get()), (2, 1));
        assert_eq!(
            synth.snapshot(super::super::now()).map(|s| s.agents),
            Some(1)
        );
    }

    #[test]
    fn refusals_are_counted_by_rule_and_leave_the_synthesis_state_alone() {
        let (m, mut synth) = (Metrics::default(), Synthesizer::new(Settings::default()));
        let now = super::super::now();
        let cases: [(Option<HeaderMap>, Vec<u8>, &str); 5] = [
            (None, b"{not json".to_vec(), "malformed"),
            (Some(synthesis_headers(2)), body("a1", now), "hop_limit"),
            (None, body("a2", now + 3600.0), "timestamp_in_future"),
            (Some(synthesis_headers(0)), body("a3", now), "bad_header"),
            (None, body("a4", now - 3600.5), "timestamp_too_old"),
        ];
        for (headers, b, rule) in &cases {
            let got = receive(&mut synth, headers.as_ref(), b, 1, &m);
            assert_eq!(got, Outcome::Refused(rule), "{rule}");
            assert_eq!(refused(&m, rule), 1, "{rule} counted once");
        }
        assert_eq!(m.twins_in.get(), 5);
        assert_eq!(m.twins_duplicate.get(), 0);
        assert!(
            synth.snapshot(now).is_none(),
            "nothing refused was ingested"
        );
        // Within the hop limit, the same synthesis packet is taken (never a vote).
        let h = synthesis_headers(1);
        assert_eq!(
            receive(&mut synth, Some(&h), &body("a1", now), 1, &m),
            Outcome::Ingested
        );
    }

    /// Proves the measured attack fails on the receiving side: a twin stamped 10^6 s ahead under
    /// an honest agent's id is ignored and counted, and the agent's later packets still vote;
    /// a twin older than the window does not replace the agent's vote either.
    #[test]
    fn twins_outside_the_time_bounds_do_not_replace_an_honest_vote() {
        let (m, mut synth) = (Metrics::default(), Synthesizer::new(Settings::default()));
        let now = super::super::now();
        let honest = vote("a1", "overload", 0.9, now - 10.0);
        assert_eq!(receive(&mut synth, None, &honest, 1, &m), Outcome::Ingested);
        let forged = vote("a1", "none", 0.1, now + 1e6);
        let got = receive(&mut synth, None, &forged, 1, &m);
        assert_eq!(got, Outcome::Refused("timestamp_in_future"));
        let stale = vote("a1", "stale", 0.2, now - 3600.0 - 60.0);
        let got = receive(&mut synth, None, &stale, 1, &m);
        assert_eq!(got, Outcome::Refused("timestamp_too_old"));
        let later = vote("a1", "overload", 0.8, now - 5.0);
        assert_eq!(receive(&mut synth, None, &later, 1, &m), Outcome::Ingested);
        let snap = synth.snapshot(super::super::now()).expect("a1 votes");
        assert_eq!(snap.problem, "grid.overload");
        assert_eq!((snap.agents, snap.weighted_confidence), (1, 0.8));
        assert_eq!(refused(&m, "timestamp_in_future"), 1);
        assert_eq!(refused(&m, "timestamp_too_old"), 1);
    }

    #[test]
    fn the_durable_consumer_is_acked_or_told_to_drop_and_the_follower_is_not() {
        let refused = Outcome::Refused("malformed");
        assert_eq!(reply(Delivery::Durable, Outcome::Ingested), Reply::Ack);
        assert_eq!(reply(Delivery::Durable, Outcome::Duplicate), Reply::Ack);
        assert_eq!(reply(Delivery::Durable, refused), Reply::Terminate);
        for outcome in [Outcome::Ingested, Outcome::Duplicate, refused] {
            assert_eq!(reply(Delivery::Follower, outcome), Reply::Nothing);
        }
    }

    #[test]
    fn the_uncounted_path_counts_nothing() {
        let (m, mut synth) = (Metrics::default(), Synthesizer::new(Settings::default()));
        let got = decode_and_ingest(&mut synth, None, b"[", 1, &m);
        assert_eq!(got, Err("malformed"));
        assert_eq!((m.twins_in.get(), refused(&m, "malformed")), (0, 0));
    }
}
