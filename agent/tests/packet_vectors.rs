//! The packet codec against the vectors made by the seed's own encoding (Python `json.dumps`),
//! and against a live Python peer on generated packets.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use qis_agent::packet::{OutcomePacket, PacketError, PacketKind, PacketMeta};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/packets.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json")
}

/// Proves the decoder accepts the seed's bodies and the encoder gives them back byte for byte.
#[test]
fn seed_bodies_round_trip_byte_for_byte() {
    let doc = vectors();
    let valid = doc["valid"].as_array().expect("valid");
    assert!(valid.len() >= 3);
    for v in valid {
        let body = v["body"].as_str().expect("body");
        let packet =
            OutcomePacket::decode(body.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", v["name"]));
        let encoded = packet.encode().expect("encodes");
        assert_eq!(
            String::from_utf8(encoded).expect("utf8"),
            body,
            "{}",
            v["name"]
        );
    }
}

/// Proves every refusal rule: each invalid vector is refused with the rule it names.
#[test]
fn invalid_bodies_are_refused_with_their_rule() {
    let doc = vectors();
    let invalid = doc["invalid"].as_array().expect("invalid");
    let mut rules = std::collections::BTreeSet::new();
    for v in invalid {
        let err = OutcomePacket::decode(v["body"].as_str().expect("body").as_bytes())
            .expect_err(v["name"].as_str().expect("name"));
        assert_eq!(
            err.rule(),
            v["rule"].as_str().expect("rule"),
            "{}: {err}",
            v["name"]
        );
        rules.insert(err.rule());
    }
    assert!(rules.len() >= 12, "{rules:?}");
}

/// Proves the NaN refusal names the field that holds it.
#[test]
fn non_finite_names_the_field() {
    let doc = vectors();
    let nan = doc["invalid"]
        .as_array()
        .expect("invalid")
        .iter()
        .find(|v| v["name"] == "infinite vector")
        .expect("case");
    let err = OutcomePacket::decode(nan["body"].as_str().expect("body").as_bytes()).unwrap_err();
    assert_eq!(err, PacketError::NonFinite("context_vector"));
}

/// Proves the encoder refuses what the decoder refuses (the firewall works both ways).
#[test]
fn encoder_refuses_oversize_and_bad_tokens() {
    let mut p = OutcomePacket::decode(
        vectors()["valid"][0]["body"]
            .as_str()
            .expect("body")
            .as_bytes(),
    )
    .expect("ok");
    p.conclusion = "x".repeat(500);
    assert!(matches!(p.encode(), Err(PacketError::TooLarge { .. })));
    p.conclusion = "ok".into();
    p.domain = "hvac.*".into();
    assert_eq!(p.encode().unwrap_err().rule(), "invalid_token");
}

/// Proves the header rules: absent headers mean a seed outcome; kinds and hops are checked.
#[test]
fn headers() {
    let body = b"{}";
    let none = |_: &str| None;
    let meta = PacketMeta::from_headers(none, body).expect("seed packet");
    assert_eq!((meta.kind, meta.hops), (PacketKind::Outcome, 0));
    assert_eq!(meta.id, qis_agent::packet::packet_id(body));
    let synth = PacketMeta::synthesis(body, 0);
    let headers = synth.headers();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        PacketMeta::from_headers(get, body).expect("round trip"),
        synth
    );
    for (kind, hops) in [
        (Some("vote"), None),
        (Some("outcome"), Some("1")),
        (Some("synthesis"), Some("0")),
        (None, Some("x")),
    ] {
        let get = |name: &str| match name {
            "Qis-Kind" => kind,
            "Qis-Hops" => hops,
            _ => None,
        };
        assert_eq!(
            PacketMeta::from_headers(get, body).unwrap_err().rule(),
            "bad_header",
            "{kind:?} {hops:?}"
        );
    }
}

fn packet_strategy() -> impl Strategy<Value = OutcomePacket> {
    let text = || proptest::string::string_regex("[ -~éü\n\"\\\\😀]{0,20}").expect("regex");
    let token = || proptest::string::string_regex("[a-z0-9_-]{1,12}").expect("regex");
    (
        text().prop_filter("non-empty", |s| !s.trim().is_empty()),
        token().prop_filter("not fp", |s| s != "fp"),
        token(),
        text(),
        0.0..=1.0f64,
        proptest::collection::vec(prop_oneof![-1e20..1e20f64, -1.0..1.0f64, Just(1e-7)], 0..6),
        1.0..4e9f64,
        text().prop_filter("non-empty", |s| !s.trim().is_empty()),
    )
        .prop_map(
            |(
                agent_id,
                domain,
                problem_class,
                conclusion,
                confidence,
                context_vector,
                timestamp,
                source_node,
            )| {
                OutcomePacket {
                    agent_id,
                    domain,
                    problem_class,
                    conclusion,
                    confidence,
                    context_vector,
                    timestamp,
                    source_node,
                }
            },
        )
}

/// Proves our bodies are byte-identical to what the seed's Python encoding makes of the same
/// packet, and that the seed's reader (`OutcomePacket(**data)`) takes them, on 300 generated
/// packets. Needs python3 (installed on every machine of this project); fails without it.
#[test]
fn live_python_peer_agrees_byte_for_byte() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut ours = Vec::new();
    for _ in 0..300 {
        let p = packet_strategy()
            .new_tree(&mut runner)
            .expect("tree")
            .current();
        if let Ok(body) = p.encode() {
            ours.push(String::from_utf8(body).expect("utf8"));
        }
    }
    assert!(ours.len() > 200);
    let script = r#"
import sys, json
sys.path.insert(0, sys.argv[1])
from seed_client import decode, encode
for line in sys.stdin:
    body = json.loads(line)
    print(json.dumps(encode(decode(body.encode())).decode()))
"#;
    let mut child = Command::new("python3")
        .args([
            "-c",
            script,
            concat!(env!("CARGO_MANIFEST_DIR"), "/testdata"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 must be installed for the interop test");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for body in &ours {
            writeln!(stdin, "{}", serde_json::to_string(body).expect("json")).expect("write");
        }
    }
    let out = child.wait_with_output().expect("python ran");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(theirs.len(), ours.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b);
    }
}

proptest! {
    /// Proves decode(encode(p)) == p for every valid packet (floats round-trip exactly).
    #[test]
    fn encode_decode_round_trip(p in packet_strategy()) {
        if let Ok(body) = p.encode() {
            prop_assert!(body.len() <= 512);
            prop_assert_eq!(OutcomePacket::decode(&body).expect("decodes"), p);
        }
    }
}
