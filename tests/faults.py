"""A backend in trouble, for tests of what the mesh does about it.

:class:`Troubled` is the memory connector with two hooks on its consumers' fetches: one
before each fetch (raise to fail it, as a broker that is away makes a real connector's
fetch raise) and one on each delivery fetched, to hand out a :class:`Forwarding`
delivery instead: one that passes every call to the real delivery but the one a test
overrides to fail or hang (an ack to a broker that is away). Importable from every test
directory (``tests/`` is on ``sys.path`` through its conftest).
"""

from __future__ import annotations

from typing import Any

from eventmesh.connectors.base import Consumer, Delivery, StartPosition
from eventmesh.connectors.memory import MemoryConnector


class Forwarding(Delivery):
    """A delivery that forwards ``ack``, ``nack`` and ``touch`` to ``inner``."""

    __slots__ = ("inner",)

    def __init__(self, inner: Delivery) -> None:
        super().__init__(
            inner.event,
            topic=inner.topic,
            partition=inner.partition,
            offset=inner.offset,
            key=inner.key,
            attempt=inner.attempt,
            timestamp=inner.timestamp,
        )
        self.inner = inner

    async def ack(self) -> None:
        await self.inner.ack()

    async def nack(self, delay: float = 0.0) -> None:
        await self.inner.nack(delay)

    async def touch(self) -> None:
        await self.inner.touch()


class Troubled(MemoryConnector):
    """The memory connector, with :meth:`trouble` before each fetch of its consumers and
    :meth:`wrap` on each delivery they fetch; by default neither changes anything."""

    def trouble(self, topic: str) -> None:
        """Called before each fetch on ``topic``: raise to fail the fetch."""

    def wrap(self, topic: str, delivery: Delivery) -> Delivery:
        """What is handed out for ``delivery``, fetched from ``topic``."""
        return delivery

    def subscribe(self, topic: str, group: str, *, start: StartPosition = "latest") -> Consumer:
        consumer = super().subscribe(topic, group, start=start)
        real_fetch = consumer.fetch

        async def fetch(max_events: int = 256, timeout: float | None = None) -> Any:
            self.trouble(topic)
            return [self.wrap(topic, d) for d in await real_fetch(max_events, timeout)]

        consumer.fetch = fetch  # type: ignore[method-assign]
        return consumer
