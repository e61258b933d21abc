"""The SDK's codec against the vectors the agent's Rust codec is tested with
(agent/testdata/packets.json): same bytes for valid bodies, same rule for invalid ones."""

import json
import math

import pytest

from qis_sdk import OutcomePacket, PacketError, decode, encode, packet_id

from conftest import TESTDATA

VECTORS = json.loads((TESTDATA / "packets.json").read_text())


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["name"])
def test_valid_bodies_round_trip_byte_for_byte(case):
    body = case["body"].encode()
    assert encode(decode(body)) == body


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_invalid_bodies_are_refused_with_the_agents_rule(case):
    with pytest.raises(PacketError) as err:
        decode(case["body"].encode())
    assert err.value.rule == case["rule"]


def test_the_vectors_cover_every_body_rule():
    rules = {c["rule"] for c in VECTORS["invalid"]}
    assert len(rules) >= 12, rules


def test_the_seed_demo_lines_decode():
    lines = (TESTDATA / "seed-demo.jsonl").read_text().splitlines()
    packets = [decode(line) for line in lines if line.strip()]
    assert [p.agent_id for p in packets[:2]] == ["hvac-building-a", "hvac-building-b"]
    assert all(p.encode() == line.encode() for p, line in zip(packets, lines))


def packet(**kw):
    base = dict(agent_id="a", domain="hvac", problem_class="energy-anomaly", conclusion="c",
                confidence=0.5, context_vector=[1, 0.25], timestamp=1764150000, source_node="n")
    base.update(kw)
    return OutcomePacket(**base)


def test_integers_are_written_as_floats_as_the_agent_writes_them():
    body = packet().encode()
    assert b'"confidence": 0.5, "context_vector": [1.0, 0.25], "timestamp": 1764150000.0' in body
    assert packet_id(body) == packet().packet_id() and len(packet_id(body)) == 32


@pytest.mark.parametrize(
    "change,rule",
    [
        (dict(conclusion="x" * 500), "too_large"),
        (dict(domain="hvac.*"), "invalid_token"),
        (dict(domain="fp"), "invalid_token"),
        (dict(confidence=math.nan), "non_finite"),
        (dict(confidence=True), "wrong_type"),
        (dict(confidence=1.5), "confidence_range"),
        (dict(context_vector=[0.0] * 65), "vector_too_long"),
        (dict(source_node="  "), "empty_field"),
        (dict(timestamp=0), "invalid_timestamp"),
    ],
)
def test_the_encoder_refuses_what_the_agent_refuses(change, rule):
    with pytest.raises(PacketError) as err:
        packet(**change).encode()
    assert err.value.rule == rule
