"""Helpers for the function tests: read a topic, wait for a counter."""

from __future__ import annotations

import anyio

from eventmesh import Event, Mesh
from eventmesh.testing.polling import eventually

FAST = {"max_attempts": 3, "backoff": {"initial": "1ms", "max": "5ms"}}
"""A delivery policy that retries at once, so retry tests run quickly."""


def order(n: int, **extra: object) -> Event:
    """An order event with data {"n": n}."""
    return Event(type="com.example.order", source="/shop", data={"n": n}, **extra)  # type: ignore[arg-type]


async def read(mesh: Mesh, topic: str, count: int, *, timeout: float = 20) -> list[Event]:
    """The first ``count`` events of ``topic`` (from the earliest), acked."""
    got: list[Event] = []
    with anyio.fail_after(timeout):
        async with mesh.subscribe(topic, f"reader-{topic}", start="earliest") as sub:
            async for delivery in sub:
                got.append(delivery.event)
                await delivery.ack()
                if len(got) >= count:
                    break
    return got


__all__ = ["FAST", "eventually", "order", "read"]
