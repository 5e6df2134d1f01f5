"""Lanes that hand a batching sink groups of events, not one event at a time.

A sink that sends events in batches (a webhook in ``batch`` mode) would, called one
event per lane, hold at most ``concurrency`` events per batch and wait out its window
for more that cannot come: every lane is waiting on it. A :class:`GroupSink` takes a
whole group instead. Each lane of the dispatcher that holds events has a task, started
when the lane is made for its first event (:meth:`GroupLanes.route`), which takes every
event queued on it (up to the sink's :attr:`~GroupSink.group_limit`), in order, passes
them through the gate and hands them over as one group, which returns once the batch
holding it was delivered; only then are they acked (at-least-once) and does the lane
take its next group, so the events of one key still reach the sink in order, one group
after another. A lane found empty is then freed and its task ends: an idle subscription
has no lane task, whatever its ``concurrency``.

A batch is sent when it is full, when its window ends, or as soon as nothing more can
join it: when no lane is preparing a group and every lane with queued events is waiting
on a batch (:meth:`GroupLanes.nothing_more`). When a group fails, the settle strategy
decides for each of its events, as for one event (retry after the backoff while attempts
remain, else dead-letter or hand back), and what is retried goes again as one group.
Events that carry a ``replyto`` (when the subscription answers requests) or a
``traceparent`` (tracing on) leave the group and go one at a time to the sink that
handles them, after the group before them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio
import anyio.abc

from eventmesh.connectors.base import Delivery
from eventmesh.delivery.lanes import Lane
from eventmesh.errors import ClosedError
from eventmesh.event import Event

if TYPE_CHECKING:
    from eventmesh.delivery.dispatcher import Dispatcher

__all__ = ["GroupLanes", "GroupSink", "group_sink"]

log = logging.getLogger(__name__)


@runtime_checkable
class GroupSink(Protocol):
    """A sink that takes events in groups (a :data:`~eventmesh.typing.Sink` as well)."""

    @property
    def group_limit(self) -> int:
        """The most events one group may hold; 0 when the sink takes one at a time."""
        ...

    async def deliver_group(self, events: Sequence[Event], *, last: bool) -> None:
        """Deliver ``events`` in order, as one; raise to have each of them retried.
        ``last``: nothing more will join their batch, so it is sent at once."""
        ...

    def flush(self) -> None:
        """Nothing more will join the pending batch: send it now."""
        ...


def group_sink(sink: object) -> GroupSink | None:
    """``sink`` when it takes groups of events (a limit above 0), else None."""
    if isinstance(sink, GroupSink) and sink.group_limit > 0:
        return sink
    return None


class GroupLanes:
    """The grouped lane loop of one dispatcher, and what its lanes are doing."""

    def __init__(self, dispatcher: Dispatcher, sink: GroupSink, tg: anyio.abc.TaskGroup) -> None:
        self.dispatcher = dispatcher
        self.sink = sink
        self.limit = sink.group_limit
        self._tg = tg
        """The dispatcher's task group, which the lanes' tasks join."""
        self._made: deque[Lane] = deque()
        """Lanes made by the last :meth:`route`, whose tasks are to start."""
        self._in_use: set[Lane] = set()
        """Lanes in use, each with its task."""
        self._preparing: set[Lane] = set()
        """Lanes that took events and have not handed them over yet."""
        self._waiting: set[Lane] = set()
        """Lanes waiting on the sink (a group's batch, or a retry)."""

    def nothing_more(self) -> bool:
        """True when no lane can join the pending batch (module docstring): none is
        preparing a group, and every lane with queued events waits on the sink."""
        if self._preparing:
            return False
        waiting = self._waiting
        # A lane with events that is not waiting has a task about to take them.
        return all(not lane.items or lane in waiting for lane in self._in_use)

    def settle_point(self) -> None:
        """Send the sink's pending batch if nothing more can join it."""
        if self.nothing_more():
            self.sink.flush()

    def route(self, batch: Sequence[Delivery]) -> None:
        """Queue ``batch`` on its lanes, and start a task for each lane it made (in the
        order of their first events); a lane already in use has its task."""
        made = self._made
        self.dispatcher._lanes.route(batch, made)
        if made:
            in_use = self._in_use
            start = self._tg.start_soon
            work = self.work
            name = f"eventmesh-lane {self.dispatcher.name}"
            while made:
                lane = made.popleft()
                in_use.add(lane)
                start(work, lane, name=name)

    async def work(self, lane: Lane) -> None:
        """One lane: take its queued events as a group, hand it over, ack, repeat until
        the lane is empty; then it goes (the next event makes it again, with a task)."""
        dispatcher = self.dispatcher
        items = lane.items
        limit = self.limit
        preparing = self._preparing
        while items:
            taken = [items.popleft() for _ in range(min(len(items), limit))]
            preparing.add(lane)
            try:
                await self._handle(lane, taken)
            finally:
                preparing.discard(lane)
                dispatcher._release(len(taken))
                self.settle_point()
        self._in_use.discard(lane)
        dispatcher._lanes.free(lane)

    async def _handle(self, lane: Lane, taken: list[Delivery]) -> None:
        dispatcher = self.dispatcher
        gate = dispatcher.gate
        open_gate = gate.passes_all
        answering = dispatcher.request_sink
        traced = dispatcher.traced_sink
        group: list[tuple[Delivery, Event]] = []
        for delivery in taken:
            if open_gate:
                event = delivery.event
            else:
                prepared = await gate.prepare(delivery)
                if prepared is None:
                    continue  # expired, filtered out, dropped or dead-lettered: settled
                event = prepared
            extensions = event.extensions
            if (answering is not None and "replyto" in extensions) or (
                traced is not None and "traceparent" in extensions
            ):
                await self._send(lane, group)
                group = []
                await self._send_one(lane, delivery, event)
            else:
                group.append((delivery, event))
        await self._send(lane, group)

    async def _send(self, lane: Lane, group: list[tuple[Delivery, Event]]) -> None:
        if not group:
            return
        self._preparing.discard(lane)
        self._waiting.add(lane)
        try:
            try:
                await self.sink.deliver_group(
                    [event for _, event in group], last=self.nothing_more()
                )
            except Exception as exc:
                await self._retry([(d, e, d.attempt) for d, e in group], exc)
                return
            await self._delivered(group)
        finally:
            self._waiting.discard(lane)
            self._preparing.add(lane)

    async def _delivered(self, group: Sequence[tuple[Delivery, Event]]) -> None:
        dispatcher = self.dispatcher
        dispatcher.stats.delivered += len(group)
        latency = dispatcher.latency
        now = time.time()
        for delivery, _ in group:
            await delivery.ack()
            if latency is not None and delivery.timestamp is not None:
                latency.pending.append(now - delivery.timestamp)

    async def _retry(self, group: list[tuple[Delivery, Event, int]], error: Exception) -> None:
        """After a failed group: each event as the settle strategy says (retried after
        its backoff while attempts remain, else dead-lettered or handed back), and what
        is retried goes again as one group, after the longest of their delays. A
        ``ClosedError`` while the subscription stops leaves the events unacked."""
        dispatcher = self.dispatcher
        gate = dispatcher.gate
        stats = dispatcher.stats
        settle = dispatcher.settle
        while group:
            if isinstance(error, ClosedError) and (
                dispatcher._stopping or dispatcher.consumer.closed
            ):
                log.info(
                    "subscription %s: %d events left unacked while closing (%s)",
                    dispatcher.name,
                    len(group),
                    error,
                )
                return
            stats.failed += len(group)
            again: list[tuple[Delivery, Event, int]] = []
            wait = 0.0
            for delivery, event, attempt in group:
                delay = await settle.failed(delivery, error, attempt)
                if delay is not None:
                    again.append((delivery, event, attempt + 1))
                    wait = max(wait, delay)
            if not again:
                return
            log.debug(
                "subscription %s: a group of %d events failed: %r; retrying in %.1fs",
                dispatcher.name,
                len(group),
                error,
                wait,
            )
            await anyio.sleep(wait)
            stats.retried += len(again)
            group = []
            for delivery, event, attempt in again:
                if gate.expired(delivery):
                    await gate.expire(delivery)
                else:
                    group.append((delivery, event, attempt))
            if not group:
                return
            try:
                await self.sink.deliver_group([e for _, e, _ in group], last=self.nothing_more())
            except Exception as exc:
                error = exc
                continue
            await self._delivered([(d, e) for d, e, _ in group])
            return

    async def _send_one(self, lane: Lane, delivery: Delivery, event: Event) -> None:
        dispatcher = self.dispatcher
        answering = dispatcher.request_sink
        sink = (
            answering
            if answering is not None and "replyto" in event.extensions
            else dispatcher.traced_sink
        )
        assert sink is not None
        self._preparing.discard(lane)
        self._waiting.add(lane)
        try:
            self.settle_point()
            try:
                await sink(event)
            except Exception as exc:
                await dispatcher._retry(delivery, event, exc)
                return
            dispatcher.stats.delivered += 1
            await delivery.ack()
            latency = dispatcher.latency
            if latency is not None and delivery.timestamp is not None:
                latency.pending.append(time.time() - delivery.timestamp)
        finally:
            self._waiting.discard(lane)
            self._preparing.add(lane)
