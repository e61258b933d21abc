"""The outcome packet: the eight fields, the rules the agent's firewall checks, and the body.

The body is `json.dumps` of the fields in their order with Python's default separators and
ASCII escapes, every number a float: exactly the bytes the agent's codec writes for the same
packet (docs/wire-format.md), so the 512-byte limit and the packet id mean the same thing on
both sides. The checks here are the agent's, rule for rule (the rule names are the agent's), so
a packet is refused on the device before it is sent, and never spooled when it cannot pass.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple, Union

MAX_BODY_BYTES = 512
"""Largest body, in bytes of its encoded form."""
MAX_CONTEXT_DIMS = 64
"""Most components of a context vector."""
MAX_TOKEN_LEN = 64
"""Longest domain or problem class."""
RESERVED_DOMAIN = "fp"
"""The domain token that marks hashed addresses; no packet may use it."""

FIELDS: Tuple[str, ...] = (
    "agent_id",
    "domain",
    "problem_class",
    "conclusion",
    "confidence",
    "context_vector",
    "timestamp",
    "source_node",
)
"""The body's fields, in their order on the wire."""

_STRINGS = ("agent_id", "domain", "problem_class", "conclusion", "source_node")
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


class PacketError(ValueError):
    """A packet the agent would refuse; `rule` is the agent's name for the broken rule."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.message = message


@dataclass
class OutcomePacket:
    """What a device concluded. Raw data never goes here: only the distilled outcome."""

    agent_id: str
    domain: str
    problem_class: str
    conclusion: str
    confidence: float
    context_vector: List[float] = field(default_factory=list)
    timestamp: float = 0.0
    """Seconds since the Unix epoch."""
    source_node: str = ""

    def problem(self) -> str:
        """`<domain>.<problem_class>`: the problem this packet votes for."""
        return f"{self.domain}.{self.problem_class}"

    def validate(self) -> None:
        """Raises `PacketError` when a rule is broken (every rule but the size)."""
        for name in _STRINGS:
            if not isinstance(getattr(self, name), str):
                raise PacketError("wrong_type", f"field {name!r} must be a string")
        _number("confidence", self.confidence)
        if not isinstance(self.context_vector, (list, tuple)):
            raise PacketError("wrong_type", "field 'context_vector' must be an array of numbers")
        if len(self.context_vector) > MAX_CONTEXT_DIMS:
            raise _too_long(len(self.context_vector))
        for x in self.context_vector:
            _number("context_vector", x)
        _number("timestamp", self.timestamp)
        _check_values(self)

    def encode(self) -> bytes:
        """The body, checked: raises `PacketError` for a broken rule or a body over 512 bytes."""
        return encode(self)

    def packet_id(self) -> str:
        """The id the agent gives this packet (first 32 hex of SHA-256 of the body)."""
        return packet_id(self.encode())


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PacketError("wrong_type", f"field {name!r} must be a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise PacketError("non_finite", f"field {name!r} holds NaN or an infinity")
    return number


def _too_long(n: int) -> PacketError:
    return PacketError(
        "vector_too_long", f"context_vector has {n} components, the limit is {MAX_CONTEXT_DIMS}"
    )


def _check_token(name: str, value: str) -> None:
    if not value:
        raise PacketError("invalid_token", f"field {name!r} is empty")
    if len(value) > MAX_TOKEN_LEN:
        raise PacketError("invalid_token", f"field {name!r} is over {MAX_TOKEN_LEN} characters")
    bad = next((c for c in value if c not in _TOKEN_CHARS), None)
    if bad is not None:
        raise PacketError("invalid_token", f"field {name!r} holds {bad!r}: only [a-z0-9_-]")


def _check_values(p: OutcomePacket) -> None:
    """The value rules, in the agent's order (types are already checked)."""
    for name in ("agent_id", "source_node"):
        if not getattr(p, name).strip():
            raise PacketError("empty_field", f"field {name!r} is empty")
    _check_token("domain", p.domain)
    if p.domain == RESERVED_DOMAIN:
        raise PacketError("invalid_token", f"domain {RESERVED_DOMAIN!r} is reserved")
    _check_token("problem_class", p.problem_class)
    if not 0.0 <= p.confidence <= 1.0:
        raise PacketError("confidence_range", f"confidence {p.confidence} is outside [0, 1]")
    if p.timestamp <= 0:
        raise PacketError(
            "invalid_timestamp",
            f"timestamp {p.timestamp} is not a positive number of seconds since the epoch",
        )


def encode(packet: OutcomePacket) -> bytes:
    """The body of a packet, checked (raises `PacketError`)."""
    packet.validate()
    doc: Dict[str, Any] = {
        "agent_id": packet.agent_id,
        "domain": packet.domain,
        "problem_class": packet.problem_class,
        "conclusion": packet.conclusion,
        "confidence": float(packet.confidence),
        "context_vector": [float(x) for x in packet.context_vector],
        "timestamp": float(packet.timestamp),
        "source_node": packet.source_node,
    }
    body = json.dumps(doc).encode("ascii")
    if len(body) > MAX_BODY_BYTES:
        raise PacketError(
            "too_large", f"body is {len(body)} bytes, the limit is {MAX_BODY_BYTES}"
        )
    return body


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs, so duplicate keys can be seen."""


def _parse(body: bytes) -> "_Pairs":
    try:
        text = body.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_Pairs)
    except (UnicodeDecodeError, ValueError) as e:
        raise PacketError("malformed", f"body is not a JSON object: {e}") from None
    if not isinstance(doc, _Pairs):
        raise PacketError("malformed", "body is not a JSON object")
    return doc


def decode(body: Union[bytes, str]) -> OutcomePacket:
    """Reads and checks a body as the agent does: exactly the eight fields, every rule."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    if len(raw) > MAX_BODY_BYTES:
        raise PacketError("too_large", f"body is {len(raw)} bytes, the limit is {MAX_BODY_BYTES}")
    slots: Dict[str, Any] = {}
    for key, value in _parse(raw):
        if key not in FIELDS:
            raise PacketError("unknown_field", f"unknown field {key!r}")
        if key in slots:
            raise PacketError("duplicate_field", f"field {key!r} appears twice")
        slots[key] = value
    for name in FIELDS:
        if name not in slots:
            raise PacketError("missing_field", f"missing field {name!r}")
    for name in _STRINGS[:4]:
        _string(name, slots[name])
    confidence = _number("confidence", slots["confidence"])
    vector = slots["context_vector"]
    if not isinstance(vector, list) or isinstance(vector, _Pairs):
        raise PacketError("wrong_type", "field 'context_vector' must be an array of numbers")
    if len(vector) > MAX_CONTEXT_DIMS:
        raise _too_long(len(vector))
    packet = OutcomePacket(
        agent_id=slots["agent_id"],
        domain=slots["domain"],
        problem_class=slots["problem_class"],
        conclusion=slots["conclusion"],
        confidence=confidence,
        context_vector=[_number("context_vector", x) for x in vector],
        timestamp=_number("timestamp", slots["timestamp"]),
        source_node=_string("source_node", slots["source_node"]),
    )
    _check_values(packet)
    return packet


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise PacketError("wrong_type", f"field {name!r} must be a string")
    return value


def packet_id(body: bytes) -> str:
    """The packet id of a body: the first 32 hex digits of its SHA-256."""
    return hashlib.sha256(body).hexdigest()[:32]
