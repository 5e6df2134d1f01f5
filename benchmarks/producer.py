"""A producer in its own process, so a consume benchmark's CPU figures are the consumer's.

    python benchmarks/producer.py nats-core URL SUBJECT N
    python benchmarks/producer.py nats-js URL SUBJECT N

Sends N structured CloudEvents of about 200 bytes (eventmesh's NATS binding, the bytes
every consumer in the scenario reads) as fast as the raw client goes: core in batches of
100 with a flush, JetStream pipelined with 256 awaiting their stream ack. Prints the rate.
"""

from __future__ import annotations

import asyncio
import sys
import time

import nats
import uvloop

from eventmesh import Event
from eventmesh.bindings.nats import to_structured

BATCH = 100
IN_FLIGHT = 256


def messages(n: int) -> list[tuple[dict[str, str], bytes]]:
    return [
        to_structured(
            Event(type="io.eventmesh.bench", source="/bench", data={"n": i, "text": "x" * 100})
        )
        for i in range(n)
    ]


async def produce(kind: str, url: str, subject: str, n: int) -> float:
    todo = messages(n)
    nc = await nats.connect(url)
    try:
        start = time.perf_counter()
        if kind == "nats-core":
            for i in range(0, n, BATCH):
                for headers, payload in todo[i : i + BATCH]:
                    await nc.publish(subject, payload, headers=headers)
                await nc.flush()
        else:
            js = nc.jetstream(publish_async_max_pending=IN_FLIGHT)
            futures = [
                await js.publish_async(subject, payload, headers=dict(headers))
                for headers, payload in todo
            ]
            await asyncio.gather(*futures)
        return n / (time.perf_counter() - start)
    finally:
        await nc.close()


if __name__ == "__main__":
    kind, url, subject, count = sys.argv[1:5]
    rate = uvloop.run(produce(kind, url, subject, int(count)))
    print(f"{rate:.0f}")
