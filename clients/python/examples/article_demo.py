"""The article's demo flow on this system: two HVAC controllers deposit what they concluded,
the second asks for its twins and synthesizes. The only change an article program needs is
the import below; the agent's address comes from $QIS_AGENT_URL (default 127.0.0.1:8080).

    qis-agent run --config agent.yaml &      # see clients/python/README.md
    QIS_AGENT_URL=http://127.0.0.1:8080 python examples/article_demo.py
"""

import asyncio
import time

from qis_sdk import NATSOutcomeRouter, OutcomePacket  # the one changed import


async def demo() -> None:
    building_a = NATSOutcomeRouter(agent_id="hvac-building-a")
    await building_a.connect()
    mine_a = OutcomePacket(
        agent_id="hvac-building-a",
        domain="hvac",
        problem_class="energy-anomaly",
        conclusion="Compressor draws 18% over its baseline since 14:32; refrigerant loss?",
        confidence=0.87,
        context_vector=[0.18, 0.92, 0.03, 0.71],
        timestamp=time.time(),
        source_node="building-a-floor-3",
    )
    await building_a.deposit_outcome(mine_a)

    building_b = NATSOutcomeRouter(agent_id="hvac-building-b")
    await building_b.connect()
    mine_b = OutcomePacket(
        agent_id="hvac-building-b",
        domain="hvac",
        problem_class="energy-anomaly",
        conclusion="Energy spike 09:15-09:47 against the thermal load.",
        confidence=0.79,
        context_vector=[0.22, 0.88, 0.07, 0.65],
        timestamp=time.time(),
        source_node="building-b-floor-1",
    )
    await building_b.deposit_outcome(mine_b)

    twins = await building_b.query_twins("hvac", "energy-anomaly", max_packets=20)
    synthesis = building_b.synthesize_locally(mine_b, twins)
    print("\n-- synthesis --")
    for key, value in synthesis.items():
        print(f"  {key}: {value}")

    await building_a.close()
    await building_b.close()


if __name__ == "__main__":
    asyncio.run(demo())
