"""The seed article's client pattern, timed: one awaited js.publish per packet (as
deposit_outcome does), then a durable pull consumer fetching batches of 50 with
OutcomePacket(**data) and an ack per message (as query_twins does). Prints two rates."""
import asyncio
import json
import sys
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


async def main(url, n):
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await js.delete_stream("SEED")
    except Exception:
        pass
    await js.add_stream(name="SEED", subjects=["qis.seed.>"])
    body = {"agent_id": "seed", "domain": "predictive-maintenance", "problem_class": "bearing-wear",
            "conclusion": "x" * 200, "confidence": 0.8, "context_vector": [0.1] * 13,
            "timestamp": time.time(), "source_node": "node"}
    start = time.perf_counter()
    for i in range(n):
        body["timestamp"] = time.time()
        await js.publish("qis.seed.pm.bw", json.dumps(body).encode())
    pub = n / (time.perf_counter() - start)
    psub = await js.pull_subscribe("qis.seed.pm.bw", durable="seed", config=ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT))
    got = 0
    start = time.perf_counter()
    while got < n:
        for msg in await psub.fetch(50, timeout=5):
            data = json.loads(msg.data.decode())
            assert set(data) == set(body)
            await msg.ack()
            got += 1
    fetch = n / (time.perf_counter() - start)
    print(f"{pub:.1f} {fetch:.1f}")
    await nc.close()


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
