"""The facade's own rules: which subject covers a problem, what query_twins returns when none
does or the agent is away (a spool), and what synthesize_locally takes."""

import asyncio
import time

import pytest

from qis_sdk import NATSOutcomeRouter, OutcomePacket
from qis_sdk.router import Twins, covers


def packet(agent_id, problem_class="energy-anomaly"):
    return OutcomePacket(agent_id, "hvac", problem_class, "c", 0.7, [0.1], time.time(), "n")


def test_covers_exact_and_domain_wide_addresses_only():
    assert covers("qis.iot.hvac.energy-anomaly", "hvac", "energy-anomaly")
    assert covers("qis.iot.hvac.>", "hvac", "energy-anomaly")
    assert not covers("qis.iot.hvac.refrigerant-loss", "hvac", "energy-anomaly")
    assert not covers("qis.iot.power.>", "hvac", "energy-anomaly")


def test_an_unfollowed_problem_gives_no_view_after_the_wait(agent):
    async def run():
        r = NATSOutcomeRouter(agent_id="hvac-x", agent_url=agent.url, twin_timeout=0.5)
        await r.connect()
        await r.deposit_outcome(packet("hvac-x", "refrigerant-loss"))
        started = time.monotonic()
        twins = await r.query_twins("hvac", "refrigerant-loss")
        waited = time.monotonic() - started
        synthesis = r.synthesize_locally(packet("hvac-x"), twins)
        await r.close()
        return twins, waited, synthesis

    twins, waited, synthesis = asyncio.run(run())
    assert twins.view is None and len(twins) == 0 and 0.5 <= waited < 5
    assert (synthesis["n_agents"], synthesis["alert"]) == (0, False)
    with pytest.raises(TypeError):
        NATSOutcomeRouter().synthesize_locally(packet("a"), [packet("b")])


def test_close_sends_the_spool_when_the_agent_came_back(agent_config, tmp_path):
    async def deposit_while_down():
        r = NATSOutcomeRouter(agent_id="hvac-y", agent_url=agent_config.url,
                              spool_dir=str(tmp_path / "spool"))
        await r.connect()  # no agent, but a spool: allowed
        await r.deposit_outcome(packet("hvac-y"))
        return r

    router = asyncio.run(deposit_while_down())
    assert len(router.client.spool) == 1
    agent_config.start()
    asyncio.run(router.close())
    assert len(router.client.spool) == 0
    twins = Twins("hvac", "energy-anomaly", router.client.consensus("hvac-energy"))
    assert twins.view is not None and twins.view.address == "qis.iot.hvac.energy-anomaly"
