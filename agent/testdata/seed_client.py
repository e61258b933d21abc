"""The seed article's packet format, reduced to what our tests compare against.

`OutcomePacket` and `encode` are the article's dataclass and `json.dumps(asdict(packet))`;
`decode` is its reader's `OutcomePacket(**json.loads(body))`. Written for the tests, not copied.
"""
import json
from dataclasses import asdict, dataclass


@dataclass
class OutcomePacket:
    agent_id: str
    domain: str
    problem_class: str
    conclusion: str
    confidence: float
    context_vector: list
    timestamp: float
    source_node: str


def encode(packet: OutcomePacket) -> bytes:
    return json.dumps(asdict(packet)).encode("utf-8")


def decode(body: bytes) -> OutcomePacket:
    return OutcomePacket(**json.loads(body.decode("utf-8")))


def synthesize_locally(agent_id, my_packet, twin_packets):
    """The seed's synthesis arithmetic (without its clock and prints)."""
    all_packets = [my_packet] + twin_packets
    n = len(all_packets)
    votes = {}
    for p in all_packets:
        key = f"{p.domain}.{p.problem_class}"
        votes[key] = votes.get(key, 0) + 1
    problem = max(votes, key=votes.get)
    strength = votes[problem] / n
    return {
        "synthesis_pairs": n * (n - 1) // 2,
        "n_agents": n,
        "consensus_problem": problem,
        "consensus_strength": round(strength, 3),
        "weighted_confidence": round(sum(p.confidence for p in all_packets) / n, 3),
        "recommendation": (
            f"ALERT: {n} agents agree on {problem} (consensus={strength:.0%})"
            if strength > 0.6
            else f"Monitoring: weak signal on {problem} ({n} inputs)"
        ),
    }
