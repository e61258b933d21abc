"""The client against a real standalone qis-agent and nats-server: deposits (single, batch),
the agent's own refusals, the consensus view, and the spool with the agent down then up."""

import time

import pytest

from qis_sdk import AgentClient, Backoff, OutcomePacket, Refused, Spool

from conftest import eventually

SUBJECT = "qis.iot.hvac.energy-anomaly"


def packet(agent_id, confidence=0.8):
    return OutcomePacket(agent_id, "hvac", "energy-anomaly", "compressor draw high",
                         confidence, [0.2, 0.9], time.time(), f"{agent_id}-node")


def agents_counted(client, n):
    def probe():
        c = client.consensus("hvac-energy").consensus
        return c if c is not None and c.agents >= n else None
    return probe


def test_single_and_batch_deposits_reach_the_consensus(agent):
    client = AgentClient(agent.url)
    p = packet("hall-a")
    d = client.deposit(p)
    assert (d.id, d.subject, d.spooled) == (p.packet_id(), SUBJECT, False)
    batch = [packet("hall-b"), packet("hall-c")]
    ids = [x.id for x in client.deposit_batch(batch)]
    assert ids == [b.packet_id() for b in batch]
    c = eventually("three agents in the consensus", agents_counted(client, 3))
    assert (c.problem, c.agents, c.alert) == ("hvac.energy-anomaly", 3, True)
    view = client.consensus_all()
    assert [v.subject for v in view] == ["hvac-energy"] and view[0].address == SUBJECT


def test_the_agents_refusal_is_raised_with_its_rule(agent):
    body = packet("hall-a").encode().replace(b"}", b', "extra": 1}')
    with pytest.raises(Refused) as err:
        AgentClient(agent.url).deposit(body)
    assert (err.value.status, err.value.rule) == (400, "unknown_field")
    with pytest.raises(Refused) as err:
        AgentClient(agent.url).consensus("no-such-subject")
    assert err.value.status == 404


def test_the_agent_refuses_timestamps_outside_its_bounds_by_rule(agent):
    client = AgentClient(agent.url)
    now = time.time()
    for ts, rule in [(1000.0, "clock_unset"), (now + 1e6, "timestamp_in_future"),
                     (now - 2 * 86400, "timestamp_too_old")]:
        p = packet("hall-a")
        p.timestamp = ts
        with pytest.raises(Refused) as err:
            client.deposit(p)
        assert (err.value.status, err.value.rule) == (422, rule), err.value.error
    assert "clock looks unset" in _refusal(client, 1000.0).error
    assert client.deposit(packet("hall-a")).id


def _refusal(client, ts):
    p = packet("hall-z")
    p.timestamp = ts
    with pytest.raises(Refused) as err:
        client.deposit(p)
    return err.value


def test_the_spool_keeps_packets_while_the_agent_is_down_and_drains_when_it_is_up(
        agent_config, tmp_path):
    spool = Spool(tmp_path / "spool")
    client = AgentClient(agent_config.url, spool=spool, backoff=Backoff(attempts=2, base=0.01))
    down = [client.deposit(packet(f"hall-{i}")) for i in range(3)]
    assert all(d.spooled for d in down) and len(spool) == 3
    batch = client.deposit_batch([packet("hall-3")])
    assert batch[0].spooled and len(spool) == 4

    agent_config.start()
    up = client.deposit(packet("hall-4"))
    assert not up.spooled and up.subject == SUBJECT
    assert len(spool) == 0
    c = eventually("every spooled agent in the consensus", agents_counted(client, 5))
    assert c.agents == 5


def test_the_spool_is_bounded_dropping_the_oldest(tmp_path):
    spool = Spool(tmp_path / "s", max_packets=3)
    bodies = [packet(f"hall-{i}").encode() for i in range(5)]
    for b in bodies:
        spool.put(b)
    assert [p.body for p in spool.pending()] == bodies[2:]
    assert spool.dropped == 2
    small = Spool(tmp_path / "b", max_bytes=512)
    for b in bodies:
        small.put(b)
    fit = 512 // len(bodies[0])
    assert 1 <= fit < len(bodies)
    assert [p.body for p in small.pending()] == bodies[-fit:]
