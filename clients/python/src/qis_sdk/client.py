"""A client of the agent's local API: deposits (single and batch) and the consensus view.

Packets are checked on the device first (`qis_sdk.packet`), then posted. A refusal by the
agent (4xx: the packet or batch breaks a rule) is raised at once, never retried. An agent that
is busy (503, which carries `Retry-After`) or away (connection refused, timeout, 5xx) is tried
again with bounded exponential back-off and full jitter; when the tries are spent the packets go
to the spool, if there is one, and are sent before anything else on the next successful call.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from .packet import OutcomePacket, packet_id
from .spool import Pending, Spool

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080"
MAX_BATCH_PACKETS = 1000
"""The agent's batch limit in packets."""
MAX_BATCH_BYTES = 1024 * 1024
"""The agent's batch limit in bytes."""


class AgentError(Exception):
    """Anything the agent did not take."""


class Refused(AgentError):
    """The agent refused the request (4xx): sending it again would not help."""

    def __init__(self, status: int, rule: str, error: str, refused: Optional[List[Any]] = None):
        super().__init__(f"{status} {rule}: {error}")
        self.status = status
        self.rule = rule
        self.error = error
        self.refused: List[Any] = refused or []
        """For a batch: the refused lines (line number, rule, error), at most 10."""


class Unavailable(AgentError):
    """The agent was busy or away on every try."""


@dataclass(frozen=True)
class Backoff:
    """Bounded exponential back-off with full jitter: try `n` waits up to `base * 2**n`."""

    attempts: int = 4
    base: float = 0.2
    cap: float = 5.0

    def delay(self, attempt: int, retry_after: Optional[float], rng: random.Random) -> float:
        """The wait before try `attempt + 1` (at least the agent's `Retry-After`, at most `cap`)."""
        wait = rng.uniform(0.0, min(self.cap, self.base * (2**attempt)))
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, self.cap)


@dataclass(frozen=True)
class Deposit:
    """One deposited packet: its id, and its subject when the agent answered (not spooled)."""

    id: str
    subject: Optional[str]
    spooled: bool = False


@dataclass(frozen=True)
class Consensus:
    """The agent's consensus over one subject's window (docs/synthesis.md)."""

    problem: str
    strength: float
    weighted_confidence: float
    agents: int
    packets: int
    synthesis_pairs: int
    dispersion: float
    effective_n: float
    alert: bool
    recommendation: str

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Consensus":
        return cls(
            problem=d["problem"],
            strength=float(d["strength"]),
            weighted_confidence=float(d["weightedConfidence"]),
            agents=int(d["agents"]),
            packets=int(d["packets"]),
            synthesis_pairs=int(d["synthesisPairs"]),
            dispersion=float(d["dispersion"]),
            effective_n=float(d["effectiveN"]),
            alert=bool(d["alert"]),
            recommendation=d["recommendation"],
        )


@dataclass(frozen=True)
class SubjectView:
    """What the agent knows of one subject it follows (`GET /v1/consensus/{subject}`)."""

    subject: str
    address: str
    consumer: str
    bound: bool
    standby: bool
    refused: Optional[str]
    consensus: Optional[Consensus]
    raw: Dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "SubjectView":
        c = d.get("consensus")
        return cls(
            subject=d["subject"],
            address=d["address"],
            consumer=d.get("consumer", ""),
            bound=bool(d.get("bound")),
            standby=bool(d.get("standby")),
            refused=d.get("refused"),
            consensus=Consensus.from_json(c) if c else None,
            raw=d,
        )


Body = Tuple[int, Dict[str, str], bytes]


def _retry_after(headers: Dict[str, str]) -> Optional[float]:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class AgentClient:
    """The agent's intake and local API over HTTP (stdlib only).

    `token` sends `Authorization: Bearer <token>` on every request, for an intake that
    requires it. `spool` (a `Spool` or a directory) keeps packets while the agent is away.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: Optional[str] = None,
        timeout: float = 5.0,
        backoff: Backoff = Backoff(),
        spool: Union[Spool, str, None] = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.backoff = backoff
        self.spool = Spool(spool) if isinstance(spool, str) else spool
        self._sleep = sleep
        self._rng = rng or random.Random()

    # -- transport ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Optional[bytes] = None) -> Body:
        """One HTTP exchange; raises OSError when nothing answered."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, _lower(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, _lower(e.headers.items()), e.read()

    def _call(self, method: str, path: str, body: Optional[bytes] = None, tries: int = 0) -> Body:
        """An exchange with retries: returns the first answer that is not worth retrying."""
        attempts = tries or self.backoff.attempts
        last = "no try"
        for attempt in range(attempts):
            retry_after = None
            try:
                status, headers, data = self._request(method, path, body)
                if status < 500 and status not in (408, 429):
                    return status, headers, data
                retry_after = _retry_after(headers)
                last = f"{status} {data[:200]!r}"
            except (OSError, socket.timeout) as e:
                last = f"{type(e).__name__}: {e}"
            if attempt + 1 < attempts:
                wait = self.backoff.delay(attempt, retry_after, self._rng)
                log.debug("agent %s: %s; retrying in %.2fs", self.url, last, wait)
                self._sleep(wait)
        raise Unavailable(f"{method} {self.url}{path}: {last} (after {attempts} tries)")

    def _json(self, method: str, path: str, body: Optional[bytes] = None, tries: int = 0) -> Any:
        status, _, data = self._call(method, path, body, tries)
        doc = _loads(data)
        if status >= 400:
            d = doc if isinstance(doc, dict) else {}
            raise Refused(status, d.get("rule", "refused"), d.get("error", repr(data[:200])),
                          d.get("refused"))
        return doc

    # -- deposits ----------------------------------------------------------------------------

    def deposit(self, packet: Union[OutcomePacket, bytes]) -> Deposit:
        """Deposits one packet (checked here first: `PacketError`). Sends the spool first.

        Returns the agent's id and subject; when the agent stays away and there is a spool,
        the packet is spooled and the `Deposit` says so. Raises `Refused` (4xx) or
        `Unavailable` (no spool)."""
        body = packet.encode() if isinstance(packet, OutcomePacket) else packet
        if self.spool is not None and not self._drain():
            return self._to_spool([body])[0]
        try:
            doc = self._json("POST", "/v1/outcomes", body)
        except Unavailable:
            if self.spool is None:
                raise
            return self._to_spool([body])[0]
        return Deposit(id=doc["id"], subject=doc.get("subject"))

    def deposit_batch(self, packets: Iterable[Union[OutcomePacket, bytes]]) -> List[Deposit]:
        """Deposits packets through the batch route, in chunks within the agent's limits.

        Each chunk is all or nothing: a refused chunk raises `Refused` (naming its lines,
        counted from 1 within the chunk) and the chunks before it stay deposited."""
        bodies = [p.encode() if isinstance(p, OutcomePacket) else p for p in packets]
        if self.spool is not None and not self._drain():
            return self._to_spool(bodies)
        out: List[Deposit] = []
        for i, chunk in enumerate(_chunks(bodies)):
            try:
                doc = self._json("POST", "/v1/outcomes/batch", b"\n".join(chunk) + b"\n")
            except Unavailable:
                if self.spool is None:
                    raise
                rest = [b for c in list(_chunks(bodies))[i:] for b in c]
                return out + self._to_spool(rest)
            out.extend(Deposit(id=x, subject=None) for x in doc["ids"])
        return out

    def _to_spool(self, bodies: Sequence[bytes]) -> List[Deposit]:
        assert self.spool is not None  # callers check
        for body in bodies:
            self.spool.put(body)
        log.info("agent %s away: %d packet(s) spooled", self.url, len(bodies))
        return [Deposit(id=packet_id(b), subject=None, spooled=True) for b in bodies]

    def flush(self) -> bool:
        """Sends the spool now; True when it is empty after."""
        return self.spool is None or self._drain()

    def _drain(self) -> bool:
        """Sends spooled packets, oldest first, one try per chunk; True when the spool is empty.

        A chunk the agent refuses is sent again packet by packet, and a packet it refuses is
        dropped (logged): it would be refused forever."""
        assert self.spool is not None
        pending = self.spool.pending()
        while pending:
            chunk = pending[: len(next(_chunks([p.body for p in pending])))]
            try:
                self._json("POST", "/v1/outcomes/batch",
                           b"\n".join(p.body for p in chunk) + b"\n", tries=1)
            except Unavailable:
                return False
            except Refused:
                if not self._drain_one_by_one(chunk):
                    return False
            for p in chunk:
                self.spool.remove(p)
            pending = pending[len(chunk):]
        return True

    def _drain_one_by_one(self, chunk: Sequence[Pending]) -> bool:
        assert self.spool is not None
        for p in chunk:
            try:
                self._json("POST", "/v1/outcomes", p.body, tries=1)
            except Unavailable:
                return False
            except Refused as e:
                log.warning("spooled packet %s refused by the agent, dropped: %s",
                            packet_id(p.body), e)
            self.spool.remove(p)
        return True

    # -- the local view ----------------------------------------------------------------------

    def consensus(self, subject: str) -> SubjectView:
        """The agent's view of one subject it follows (by the subject's name)."""
        path = "/v1/consensus/" + urllib.parse.quote(subject, safe="")
        return SubjectView.from_json(self._json("GET", path))

    def consensus_all(self) -> List[SubjectView]:
        """The agent's views of every subject it follows."""
        return [SubjectView.from_json(d) for d in self._json("GET", "/v1/consensus")]

    def healthy(self) -> bool:
        """Whether the agent answers `/healthz` (one try)."""
        try:
            return self._request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def ready(self) -> bool:
        """Whether the agent is ready: connected to NATS and every subject bound (one try)."""
        try:
            return self._request("GET", "/readyz")[0] == 200
        except OSError:
            return False


def _lower(items: Iterable[Tuple[str, str]]) -> Dict[str, str]:
    return {k.lower(): v for k, v in items}


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8")) if data else None
    except ValueError:
        return None


def _chunks(bodies: Sequence[bytes]) -> Iterator[Sequence[bytes]]:
    """Consecutive runs of bodies within the agent's batch limits."""
    start, size = 0, 0
    for i, body in enumerate(bodies):
        if i > start and (i - start >= MAX_BATCH_PACKETS or size + len(body) + 1 > MAX_BATCH_BYTES):
            yield bodies[start:i]
            start, size = i, 0
        size += len(body) + 1
    if start < len(bodies):
        yield bodies[start:]
