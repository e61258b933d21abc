"""Writes packets.json: byte-exact seed bodies and refused bodies with the rule they break.

Run from this folder: python3 make_packet_vectors.py
"""
import json
from seed_client import OutcomePacket, encode, synthesize_locally

# The seed article's two demo packets, with the clock fixed.
demo_a = OutcomePacket(
    agent_id="hvac-building-a", domain="hvac", problem_class="energy-anomaly",
    conclusion="Compressor draw 18% above baseline at 14:32. Possible refrigerant loss.",
    confidence=0.87, context_vector=[0.18, 0.92, 0.03, 0.71],
    timestamp=1764150000.123456, source_node="building-a-floor-3")
demo_b = OutcomePacket(
    agent_id="hvac-building-b", domain="hvac", problem_class="energy-anomaly",
    conclusion="Energy consumption spike detected 09:15-09:47. Thermal load mismatch.",
    confidence=0.79, context_vector=[0.22, 0.88, 0.07, 0.65],
    timestamp=1764150002.654321, source_node="building-b-floor-1")
odd = OutcomePacket(
    agent_id="pump-7 \"east\"", domain="predictive-maintenance", problem_class="bearing_wear",
    conclusion="Ünusual 47 Hz harmonic\nrecommend inspection ≤72h", confidence=1.0,
    context_vector=[1e-05, 0.0, 1.5e16, -0.25, 3.0], timestamp=1.0, source_node="plant-2/line-4")

valid = [
    {"name": "seed demo packet A", "body": encode(demo_a).decode()},
    {"name": "seed demo packet B", "body": encode(demo_b).decode()},
    {"name": "escapes and float forms", "body": encode(odd).decode()},
]
base = json.loads(encode(demo_a))


def variant(**changes):
    d = dict(base)
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d)


invalid = [
    ("unknown key", variant(extra="x"), "unknown_field"),
    ("missing key", variant(source_node=None), "missing_field"),
    ("duplicate key", json.dumps(base)[:-1] + ', "domain": "hvac"}', "duplicate_field"),
    ("NaN confidence", variant(confidence=float("nan")), "non_finite"),
    ("infinite vector", variant(context_vector=[0.1, float("inf")]), "non_finite"),
    ("-Infinity timestamp", variant(timestamp=float("-inf")), "non_finite"),
    ("confidence above 1", variant(confidence=1.01), "confidence_range"),
    ("confidence below 0", variant(confidence=-0.1), "confidence_range"),
    ("empty agent_id", variant(agent_id=""), "empty_field"),
    ("blank source_node", variant(source_node="  "), "empty_field"),
    ("subject injection in domain", variant(domain="hvac.>"), "invalid_token"),
    ("wildcard problem class", variant(problem_class="*"), "invalid_token"),
    ("uppercase domain", variant(domain="HVAC"), "invalid_token"),
    ("reserved domain", variant(domain="fp"), "invalid_token"),
    ("vector too long", variant(context_vector=[0] * 65, conclusion="x"), "vector_too_long"),
    ("confidence as string", variant(confidence="0.9"), "wrong_type"),
    ("agent_id as number", variant(agent_id=7), "wrong_type"),
    ("vector of strings", variant(context_vector=["a"]), "wrong_type"),
    ("negative timestamp", variant(timestamp=-5.0), "invalid_timestamp"),
    ("body over 512 bytes", variant(conclusion="x" * 600), "too_large"),
    ("not an object", "[1, 2]", "malformed"),
    ("not JSON", "agent_id=1", "malformed"),
]
doc = {
    "description": "Outcome-packet bodies. valid: exact bytes of the seed client's json.dumps(asdict(p)); "
                   "our encoder must reproduce them and our decoder accept them. invalid: must be refused "
                   "with the named rule. seed_synthesis: the seed's synthesize_locally(B, [A]).",
    "valid": valid,
    "invalid": [{"name": n, "body": b, "rule": r} for n, b, r in invalid],
    "seed_synthesis": synthesize_locally("hvac-building-b", demo_b, [demo_a]),
}
with open("packets.json", "w") as f:
    json.dump(doc, f, indent=2, ensure_ascii=False)
    f.write("\n")
