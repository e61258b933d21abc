"""`NATSOutcomeRouter` with the article's method names, on top of the agent.

The article's router talks to NATS itself: it creates the stream, publishes packets, pulls
twins through its own consumer and synthesizes them. Here the agent does all of that (with the
firewall, the outbox, one vote per agent and a quorum), and this facade only keeps the method
names and their call shapes, so a program written against the article runs by changing its
import. Where the meaning differs:

- `connect()` reaches the agent (`agent_url`, else `$QIS_AGENT_URL`, else 127.0.0.1:8080);
  `nats_url` is accepted and ignored: the agent holds the NATS connection and the stream.
- `deposit_outcome()` returns the packet id (32 hex, the `Nats-Msg-Id`), not `stream:seq`;
  the subject is the agent's (`<prefix>.<domain>.<problem_class>`, or the hashed address it
  is configured with). While the agent is away the packet is spooled when a spool is set.
- `query_twins()` returns the agent's view of the subject that covers the domain and problem
  class (`Twins`), not the packets: the agent does not hand out its twins' packets. It waits,
  up to `twin_timeout`, until that view counts every agent that deposited to the address
  through a router of this process and was answered (read your writes; spooled packets are
  not waited for); then it returns what the view holds.
  `max_packets` and `consumer_name` are accepted and ignored (the agent's consumer is
  per site, durable, and reads the whole window).
- `synthesize_locally()` reports the agent's consensus under the article's keys: one vote per
  agent per window, decayed confidence, a quorum and `minConfidence` before an alert; the
  article counted every packet and alerted on agreement alone. `my_packet` is already in the
  view when it was deposited; it is not counted again.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Set, Tuple

from .client import DEFAULT_URL, AgentClient, Backoff, SubjectView
from .packet import OutcomePacket
from .spool import Spool

# Agents that deposited to an address through any router of this process: (agent url,
# domain, problem class) -> agent ids. `query_twins` waits until the view counts them.
_DEPOSITED: Dict[Tuple[str, str, str], Set[str]] = {}


@dataclass(frozen=True)
class Twins:
    """What `query_twins` found: the agent's view of the subject covering the problem."""

    domain: str
    problem_class: str
    view: Optional[SubjectView]
    """None when no subject the agent follows covers the domain and problem class."""

    @property
    def agents(self) -> int:
        """Distinct agents in the window (this device's own included)."""
        c = self.view.consensus if self.view else None
        return c.agents if c else 0

    def __len__(self) -> int:
        c = self.view.consensus if self.view else None
        return c.packets if c else 0


def covers(address: str, domain: str, problem_class: str) -> bool:
    """Whether a readable subject address covers `<domain>.<problem_class>`."""
    tokens = address.split(".")
    if len(tokens) >= 2 and tokens[-2:] == [domain, problem_class]:
        return True
    return len(tokens) >= 2 and tokens[-1] == ">" and tokens[-2] == domain


class NATSOutcomeRouter:
    """The article's router API, served by the agent's intake and consensus view."""

    STREAM_NAME = "QIS_OUTCOMES"
    SUBJECT_PREFIX = "qis.iot"
    MAX_PACKET_BYTES = 512

    def __init__(
        self,
        nats_url: str = "nats://localhost:4222",
        agent_id: str = "agent-001",
        *,
        agent_url: Optional[str] = None,
        token: Optional[str] = None,
        spool_dir: Optional[str] = None,
        twin_timeout: float = 10.0,
        backoff: Backoff = Backoff(),
    ) -> None:
        self.nats_url = nats_url
        self.agent_id = agent_id
        self.agent_url = agent_url or os.environ.get("QIS_AGENT_URL") or DEFAULT_URL
        self.twin_timeout = twin_timeout
        self.client = AgentClient(
            self.agent_url,
            token=token,
            backoff=backoff,
            spool=Spool(spool_dir) if spool_dir else None,
        )
        self._connected = False

    async def connect(self) -> None:
        """Checks the agent answers; raises `ConnectionError` when it does not (no spool)."""
        healthy = await asyncio.to_thread(self.client.healthy)
        if not healthy and self.client.spool is None:
            raise ConnectionError(f"no qis-agent answers at {self.agent_url}")
        self._connected = True
        print(f"[{self.agent_id}] Connected to the qis-agent at {self.agent_url}")

    async def deposit_outcome(self, packet: OutcomePacket) -> str:
        """Deposits a packet through the agent; returns its packet id."""
        if not self._connected:
            raise RuntimeError("Call connect() before deposit_outcome()")
        d = await asyncio.to_thread(self.client.deposit, packet)
        if not d.spooled:  # a spooled packet is not in any view yet: do not wait for it
            key = (self.agent_url, packet.domain, packet.problem_class)
            _DEPOSITED.setdefault(key, set()).add(packet.agent_id)
        where = "spooled" if d.spooled else f"to {d.subject}"
        print(f"[{self.agent_id}] Deposited {where} (id={d.id})")
        return d.id

    async def query_twins(
        self,
        domain: str,
        problem_class: str,
        max_packets: int = 50,
        consumer_name: Optional[str] = None,
    ) -> Twins:
        """The agent's view of the subject covering the problem, once it counts our deposits."""
        del max_packets, consumer_name  # see the module doc
        want = len(_DEPOSITED.get((self.agent_url, domain, problem_class), ()))
        deadline = time.monotonic() + self.twin_timeout
        delay = 0.05
        while True:
            twins = await asyncio.to_thread(self._find, domain, problem_class)
            if twins.view is not None and twins.agents >= want:
                break
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)
        print(f"[{self.agent_id}] {twins.agents} agent(s), {len(twins)} packet(s) "
              f"on {domain}.{problem_class}")
        return twins

    def _find(self, domain: str, problem_class: str) -> Twins:
        views = self.client.consensus_all()
        exact = [v for v in views if covers(v.address, domain, problem_class)
                 and not v.address.endswith(">")]
        wide = [v for v in views if covers(v.address, domain, problem_class)]
        found = exact or wide
        view = found[0] if found else None
        return Twins(domain, problem_class, view)

    def synthesize_locally(self, my_packet: OutcomePacket, twin_packets: Twins) -> Dict[str, Any]:
        """The agent's consensus under the article's synthesis keys (plus `alert`)."""
        if not isinstance(twin_packets, Twins):
            raise TypeError("synthesize_locally takes what query_twins returned")
        c = twin_packets.view.consensus if twin_packets.view else None
        if c is None:
            problem = my_packet.problem()
            return {
                "agent_id": self.agent_id, "synthesis_pairs": 0, "n_agents": 0,
                "consensus_problem": problem, "consensus_strength": 0.0,
                "weighted_confidence": 0.0, "alert": False,
                "recommendation": f"No consensus on {problem} yet",
                "synthesized_at": time.time(),
            }
        synthesis = {
            "agent_id": self.agent_id,
            "synthesis_pairs": c.synthesis_pairs,
            "n_agents": c.agents,
            "consensus_problem": c.problem,
            "consensus_strength": round(c.strength, 3),
            "weighted_confidence": round(c.weighted_confidence, 3),
            "alert": c.alert,
            "recommendation": c.recommendation,
            "synthesized_at": time.time(),
        }
        print(f"[{self.agent_id}] Consensus of {c.agents} agents over {c.synthesis_pairs} "
              f"pairs: {c.problem} @ {c.strength:.0%}")
        return synthesis

    async def close(self) -> None:
        """Sends what is spooled, one try; what is left stays spooled for the next run."""
        if self.client.spool is not None and len(self.client.spool):
            await asyncio.to_thread(self.client.flush)
        self._connected = False
