"""Device SDK for the qis-agent: outcome packets, deposits through the agent's intake (with
retries and a local spool), the agent's local consensus, and `NATSOutcomeRouter`, the seed
article's router API served by the agent."""

from .client import (
    AgentClient,
    AgentError,
    Backoff,
    Consensus,
    Deposit,
    Refused,
    SubjectView,
    Unavailable,
)
from .packet import FIELDS, MAX_BODY_BYTES, OutcomePacket, PacketError, decode, encode, packet_id
from .router import NATSOutcomeRouter, Twins
from .spool import Spool

__all__ = [
    "AgentClient",
    "AgentError",
    "Backoff",
    "Consensus",
    "Deposit",
    "FIELDS",
    "MAX_BODY_BYTES",
    "NATSOutcomeRouter",
    "OutcomePacket",
    "PacketError",
    "Refused",
    "Spool",
    "SubjectView",
    "Twins",
    "Unavailable",
    "decode",
    "encode",
    "packet_id",
]
