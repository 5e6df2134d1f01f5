"""Deliveries of a backend in trouble, for tests of what the mesh does about it.

:class:`Forwarding` is a connector delivery that passes every call to the real one it
wraps (a memory delivery, say); a test subclasses it and overrides the one call that
should fail or hang, as an ack to a broker that is away does. Importable from every test
directory (``tests/`` is on ``sys.path`` through its conftest).
"""

from __future__ import annotations

from eventmesh.connectors.base import Delivery


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
