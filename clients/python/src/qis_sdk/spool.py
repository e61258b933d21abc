"""The local spool: packets kept on the device while the agent is away.

A directory holding one file per pending packet body, named by a sequence number so they drain
oldest first. Each file is written whole to a temporary name, synced, then linked to its final
name (which never exists half-written, and is never overwritten), so a crash leaves either the
whole packet or none. The spool is bounded in packets and bytes; past either bound the oldest
packets are dropped, as the agent's outbox does: on an edge device the newest outcomes matter
most. One client at a time per directory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Union

log = logging.getLogger(__name__)

_SUFFIX = ".json"
_TMP = ".tmp-"


@dataclass(frozen=True)
class Pending:
    """One spooled packet: its file and its body."""

    path: Path
    body: bytes


class Spool:
    """A bounded directory of pending packet bodies."""

    def __init__(
        self,
        directory: Union[str, "os.PathLike[str]"],
        *,
        max_packets: int = 10_000,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        if max_packets < 1 or max_bytes < 512:
            raise ValueError("a spool holds at least one packet and 512 bytes")
        self.directory = Path(directory)
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.dropped = 0
        """Packets dropped (oldest first) to keep within the bounds, since this object was made."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(_TMP + "*"):
            stale.unlink(missing_ok=True)

    def _files(self) -> List[Path]:
        return sorted(
            p for p in self.directory.iterdir() if p.name.endswith(_SUFFIX) and p.name[0] != "."
        )

    def __len__(self) -> int:
        return len(self._files())

    def pending(self) -> List[Pending]:
        """The spooled packets, oldest first."""
        out = []
        for path in self._files():
            try:
                out.append(Pending(path, path.read_bytes()))
            except FileNotFoundError:
                continue
        return out

    def put(self, body: bytes) -> Path:
        """Keeps one body (atomically), then drops the oldest packets past the bounds."""
        files = self._files()
        seq = int(files[-1].name.split("-", 1)[0]) + 1 if files else 1
        tmp = self.directory / f"{_TMP}{os.getpid()}-{seq}"
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        try:
            while True:
                final = self.directory / f"{seq:020d}-{len(body)}{_SUFFIX}"
                try:
                    os.link(tmp, final)
                    break
                except FileExistsError:
                    seq += 1
        finally:
            tmp.unlink(missing_ok=True)
        self._sync_dir()
        self._enforce_bounds()
        return final

    def remove(self, item: Pending) -> None:
        """Forgets a packet the agent has kept."""
        item.path.unlink(missing_ok=True)

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _enforce_bounds(self) -> None:
        files = self._files()
        sizes = [int(p.name[:-len(_SUFFIX)].split("-", 1)[1]) for p in files]
        total = sum(sizes)
        drop = 0
        while drop < len(files) - 1 and (
            len(files) - drop > self.max_packets or total > self.max_bytes
        ):
            total -= sizes[drop]
            drop += 1
        for path in files[:drop]:
            path.unlink(missing_ok=True)
        if drop:
            self.dropped += drop
            log.warning("spool full: dropped the %d oldest packet(s) in %s", drop, self.directory)
