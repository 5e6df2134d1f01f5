"""Embedded pub/sub: the mesh runs inside this process on the in-memory connector.

    python examples/embedded_pubsub.py

An order service publishes orders; billing handles them with a handler (one failure is
retried), and an audit reader iterates the same topic in its own group, acking each.
"""

from __future__ import annotations

import anyio

import eventmesh
from eventmesh import Event


async def main() -> None:
    billed: list[int] = []
    failed_once: set[str] = set()
    done = anyio.Event()

    async def bill(event: Event) -> None:
        if event.id not in failed_once and event.data["id"] == 2:
            failed_once.add(event.id)
            raise RuntimeError("payment provider timed out")  # retried with backoff
        billed.append(event.data["id"])
        if len(billed) == 3:
            done.set()

    async with eventmesh.connect() as mesh:
        policy = {"max_attempts": 4, "backoff": {"initial": "50ms"}}
        async with mesh.subscribe("orders", group="billing", handler=bill, delivery=policy):
            await mesh.publish(
                "orders",
                [
                    Event(
                        type="com.example.order.created",
                        source="/shop",
                        data={"id": n, "amount": 10 * n},
                        extensions={"partitionkey": f"customer-{n % 2}"},
                    )
                    for n in (1, 2, 3)
                ],
            )
            with anyio.fail_after(10):
                await done.wait()
        print("billed orders:", sorted(billed))

        async with mesh.subscribe("orders", group="audit", start="earliest") as audit:
            seen = 0
            async for delivery in audit:
                print("audit saw", delivery.event.type, delivery.event.data)
                await delivery.ack()
                seen += 1
                if seen == 3:
                    break


if __name__ == "__main__":
    anyio.run(main)
