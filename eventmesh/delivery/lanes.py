"""The lane router: which of a subscription's ``concurrency`` lanes handles a delivery.

Every subscription routes here, embedded or remote (the dispatcher is its one user).
Under ``ordering: partitionkey`` a delivery with a key goes to the lane its key hashes
to, so one key is handled one event at a time, in order, while different keys run in
parallel; a delivery without a key, and every delivery under ``ordering: none``, goes
to the next lane round robin. A lane is an unbounded queue: the dispatcher bounds what
is fetched (``max_in_flight``), so the lanes together never hold more.

A lane exists only while it is in use: :meth:`Lanes.route` makes it for its first
delivery and hands it to whoever serves it (the dispatcher's pool of workers, or a task
of its own for grouped sinks), which gives it back (:meth:`Lanes.free`) once it is
empty and its last delivery was handled. So a key's next delivery never finds a second
lane while one of its deliveries is still being handled, and a subscription holds no
lane for its ``concurrency``: one that never had an event holds nothing, and one that
had some a table of 8 bytes a lane (8 KB at the most, 1,000) and the few freed lanes
kept for reuse (``_SPARE``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Final

from eventmesh.connectors.base import Delivery

__all__ = ["Lane", "Lanes"]

_SPARE: Final = 16
"""Freed lanes kept for the next ones made: a lane (its deque) made afresh for each
burst cost the in-memory route 2% of its rate; 16 kept hold 13 KB at the most."""


class Lane:
    """One ordered queue of deliveries, lane number :attr:`slot` of its :class:`Lanes`."""

    __slots__ = ("items", "slot")

    def __init__(self, slot: int) -> None:
        self.items: deque[Delivery] = deque()
        self.slot = slot
        """Which of the ``count`` lanes it is (a freed one is used again for another)."""


class Lanes:
    """``count`` lanes and the rule that picks one per delivery (module docstring)."""

    __slots__ = ("_by_key", "_keep", "_next", "_spare", "_table", "count")

    def __init__(self, count: int, *, by_key: bool) -> None:
        self.count = count
        self._table: list[Lane | None] = []
        """The lane in use of each slot, or None; made by the first :meth:`route`. (A
        dict of the lanes in use would hold nothing at all while idle, but its lookups
        cost the in-memory route 2% of its rate.)"""
        self._by_key = by_key
        self._next = 0
        """The slot of the next delivery that goes round robin."""
        self._spare: list[Lane] = []
        """Freed lanes, empty, for :meth:`route` to use again."""
        self._keep = min(count, _SPARE)

    def __iter__(self) -> Iterator[Lane]:
        """The lanes in use, by slot."""
        return (lane for lane in self._table if lane is not None)

    def route(self, batch: Sequence[Delivery], made: deque[Lane] | None = None) -> None:
        """Append each delivery of ``batch`` to its lane, in order, and queue on ``made``
        each lane that was not in use (in the order of its first delivery, so that the
        lanes start in event order), for whoever serves it to take and, once it is
        empty and handled, to :meth:`free`."""
        if made is None:
            made = deque()
        lanes = self._table
        if not lanes:
            lanes = self._table = [None] * self.count
        spare = self._spare
        count = self.count
        by_key = self._by_key
        turn = self._next
        for delivery in batch:
            key = delivery.key
            if by_key and key is not None:
                slot = hash(key) % count
            else:
                slot = turn
                turn += 1
                if turn == count:
                    turn = 0
            lane = lanes[slot]
            if lane is None:
                if spare:
                    lane = spare.pop()
                    lane.slot = slot
                else:
                    lane = Lane(slot)
                lanes[slot] = lane
                made.append(lane)
            lane.items.append(delivery)
        self._next = turn

    def free(self, lane: Lane) -> None:
        """``lane``, made by :meth:`route`, is empty and was handled: it is no longer in
        use (its slot's next delivery makes one again)."""
        self._table[lane.slot] = None
        if len(self._spare) < self._keep:
            self._spare.append(lane)
