"""The lane router: which of a subscription's ``concurrency`` lanes handles a delivery.

Every subscription routes here, embedded or remote (the dispatcher is its one user).
Under ``ordering: partitionkey`` a delivery with a key goes to the lane its key hashes
to, so one key is handled one event at a time, in order, while different keys run in
parallel; a delivery without a key, and every delivery under ``ordering: none``, goes
to the next lane round robin. A lane is an unbounded queue: the dispatcher bounds what
is fetched (``max_in_flight``), so the lanes together never hold more. A lane is either
served by a task of its own (:meth:`Lanes.route`, for grouped sinks) or queued as ready
for the dispatcher's pool of workers (:meth:`Lanes.fill`).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Sequence

import anyio

from eventmesh.connectors.base import Delivery

__all__ = ["Lane", "Lanes"]


class Lane:
    """One ordered queue of deliveries; its task waits on :attr:`ready` when it is empty."""

    __slots__ = ("held", "items", "ready")

    def __init__(self) -> None:
        self.items: deque[Delivery] = deque()
        self.ready: anyio.Event | None = None
        """Set by the lane's task while it waits for work; :meth:`wake` sets it."""
        self.held = False
        """Under :meth:`Lanes.fill`: the lane is queued as ready or a worker handles one
        of its deliveries (so no other worker takes the next one: its order holds)."""

    def wake(self) -> None:
        """Wake the lane's task if it waits for work."""
        ready = self.ready
        if ready is not None:
            self.ready = None
            ready.set()


class Lanes:
    """``count`` lanes and the rule that picks one per delivery (module docstring)."""

    __slots__ = ("_by_key", "_next", "lanes")

    def __init__(self, count: int, *, by_key: bool) -> None:
        self.lanes = [Lane() for _ in range(count)]
        self._by_key = by_key
        self._next = itertools.cycle(self.lanes)

    def __iter__(self) -> Iterator[Lane]:
        return iter(self.lanes)

    def __len__(self) -> int:
        return len(self.lanes)

    def route(self, batch: Sequence[Delivery]) -> None:
        """Append each delivery of ``batch`` to its lane, in order, and wake the lanes
        that wait (in the order of their first delivery, so lanes start in event order)."""
        lanes = self.lanes
        count = len(lanes)
        by_key = self._by_key
        round_robin = self._next
        for delivery in batch:
            key = delivery.key
            lane = lanes[hash(key) % count] if by_key and key is not None else next(round_robin)
            lane.items.append(delivery)
            if lane.ready is not None:
                lane.wake()

    def fill(self, batch: Sequence[Delivery], ready: deque[Lane]) -> None:
        """Append each delivery of ``batch`` to its lane, in order, as :meth:`route`
        does, and queue on ``ready`` each lane that was neither queued nor in work (for
        a pool of workers that take a ready lane's next delivery, one lane at a time)."""
        lanes = self.lanes
        count = len(lanes)
        by_key = self._by_key
        round_robin = self._next
        for delivery in batch:
            key = delivery.key
            lane = lanes[hash(key) % count] if by_key and key is not None else next(round_robin)
            lane.items.append(delivery)
            if not lane.held:
                lane.held = True
                ready.append(lane)
