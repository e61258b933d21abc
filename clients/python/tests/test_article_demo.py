"""The article's demo, run through the SDK facade against a real agent and nats-server: the
program in examples/article_demo.py, as a user runs it."""

import ast
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import eventually

DEMO = Path(__file__).resolve().parents[1] / "examples" / "article_demo.py"


def synthesis_of(output):
    """The `  key: value` lines the demo prints after `-- synthesis --`."""
    lines = output.split("-- synthesis --", 1)[1].splitlines()
    pairs = (line.strip().split(": ", 1) for line in lines if line.startswith("  "))
    return {k: v for k, v in pairs}


def test_the_article_demo_runs_through_the_facade(agent):
    env = dict(os.environ, QIS_AGENT_URL=agent.url)
    run = subprocess.run([sys.executable, str(DEMO)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    s = synthesis_of(run.stdout)
    assert s["agent_id"] == "hvac-building-b"
    assert s["consensus_problem"] == "hvac.energy-anomaly"
    assert (s["n_agents"], s["synthesis_pairs"], s["alert"]) == ("2", "1", "True")
    assert 0.5 <= float(s["weighted_confidence"]) <= 0.87
    assert "Deposited to qis.iot.hvac.energy-anomaly" in run.stdout
    # The same consensus is in the agent's Prometheus metrics (a standalone agent exports it).
    gauges = eventually("the consensus gauges of hvac-energy", lambda: consensus_gauges(agent.url))
    assert (gauges["alert"], gauges["agents"], gauges["agreeing_agents"]) == (1.0, 2.0, 2.0)
    assert abs(gauges["confidence"] - float(s["weighted_confidence"])) < 0.001


def consensus_gauges(url):
    """The `qis_agent_consensus_*{subject="hvac-energy"}` samples of the agent's /metrics by
    short name, or None while it has none."""
    with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
        text = r.read().decode()
    prefix, label = "qis_agent_consensus_", '{subject="hvac-energy"}'
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(prefix) and name.endswith(label):
            found[name[len(prefix):-len(label)]] = float(value)
    return found or None


def test_the_demo_differs_from_an_article_program_only_in_its_import():
    imports = [n for n in ast.walk(ast.parse(DEMO.read_text())) if isinstance(n, ast.ImportFrom)]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [
        ("qis_sdk", ["NATSOutcomeRouter", "OutcomePacket"])
    ]
