"""Fixtures: a real nats-server (JetStream) and a real standalone qis-agent, on free loopback
ports, started per test and stopped after it; helpers that poll with a deadline."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[3]
TESTDATA = ROOT / "agent" / "testdata"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(what: str, probe: Callable[[], Optional[T]], timeout: float = 30.0) -> T:
    """Polls `probe` until it returns something other than None; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _binary(env: str, default: Path) -> Path:
    path = Path(os.environ.get(env, default))
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing (set {env}, or run cargo build --workspace --bins "
                    f"and scripts/install-tools.sh)")
    return path


def _stop(proc: "subprocess.Popen[bytes]") -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Nats:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        binary = _binary("QIS_NATS_SERVER", ROOT / ".tools" / "venv" / "bin" / "nats-server")
        self.log = open(workdir / "nats.log", "wb")
        self.proc = subprocess.Popen(
            [str(binary), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(workdir / "js")],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        eventually("nats-server listening", self._listening, 20)

    def _listening(self) -> Optional[bool]:
        assert self.proc.poll() is None, "nats-server exited"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return None

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


class Agent:
    """A standalone `qis-agent run --config` on a free port, following hvac.energy-anomaly."""

    def __init__(self, workdir: Path, nats_url: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "agent.yaml"
        self.config.write_text(
            "agentId: sdk-test\nsite: a\n"
            f"nats: {{url: '{nats_url}'}}\n"
            "subjectPrefix: qis.iot\nstream: QIS_OUTCOMES\nmanageJetstream: true\n"
            f"listen: 127.0.0.1:{self.port}\ndataDir: {workdir / 'data'}\n"
            "subjects:\n- {name: hvac-energy, domain: hvac, problemClass: energy-anomaly}\n"
        )
        self.binary = _binary("QIS_AGENT_BIN", ROOT / "target" / "debug" / "qis-agent")
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    def start(self) -> "Agent":
        self.log = open(self.workdir / "agent.log", "ab")
        self.proc = subprocess.Popen([str(self.binary), "run", "--config", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        eventually("agent ready", self._ready, 30)
        return self

    def _ready(self) -> Optional[bool]:
        assert self.proc is not None and self.proc.poll() is None, "qis-agent exited"
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                return True if r.status == 200 else None
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None
            self.log.close()


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Nats]:
    server = Nats(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def agent_config(tmp_path: Path, nats: Nats) -> Iterator[Agent]:
    """An agent configured, not started (for tests that start it late)."""
    a = Agent(tmp_path, nats.url)
    yield a
    a.stop()


@pytest.fixture
def agent(agent_config: Agent) -> Agent:
    return agent_config.start()
