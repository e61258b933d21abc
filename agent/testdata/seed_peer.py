"""A peer that talks to JetStream exactly as the seed article's NATSOutcomeRouter does.

  seed_peer.py deposit URL SUBJECT N     publish N packets, one awaited js.publish each, no headers
  seed_peer.py subscribe URL SUBJECT DURABLE   create the durable pull consumer (DeliverPolicy.NEW)
  seed_peer.py fetch URL SUBJECT DURABLE       fetch a batch of 50, OutcomePacket(**data) each, ack;
                                               prints the packets as JSON

Written for the interop tests (the article's code is not copied); the body and the reader are
those of seed_client.py.
"""
import asyncio
import json
import sys
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from seed_client import OutcomePacket, decode, encode


async def main(cmd, url, subject, arg):
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        if cmd == "deposit":
            domain, problem_class = subject.split(".")[-2:]
            for i in range(int(arg)):
                p = OutcomePacket(
                    agent_id=f"seed-agent-{i}", domain=domain, problem_class=problem_class,
                    conclusion=f"seed conclusion {i}", confidence=0.75, context_vector=[0.1, 0.2],
                    timestamp=time.time(), source_node=f"seed-node-{i}")
                await js.publish(subject, encode(p))
            print(json.dumps({"deposited": int(arg)}))
        elif cmd == "subscribe":
            await js.pull_subscribe(subject, durable=arg, config=ConsumerConfig(
                deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT, filter_subject=subject))
            print(json.dumps({"subscribed": arg}))
        elif cmd == "fetch":
            psub = await js.pull_subscribe(subject, durable=arg)
            packets = []
            try:
                for msg in await psub.fetch(50, timeout=2.0):
                    packets.append(decode(msg.data).__dict__)
                    await msg.ack()
            except nats.errors.TimeoutError:
                pass
            print(json.dumps(packets))
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
