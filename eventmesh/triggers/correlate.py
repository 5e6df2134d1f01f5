"""Correlation triggers: fire once per complete set of related events.

A set is one event per filter of ``correlate.match`` with the same key (the ``by``
attribute, ``subject`` by default), all arrived within ``window`` of the set's first
event. An event goes to the oldest open set of its key that still wants it (the first
of its matching filters whose place is free), else it opens a new set. A complete set
is given to the function as a list in filter order, once; its events are acked when
the function returned, or dead-lettered (reason ``failed``) when every attempt under
the delivery policy failed. A set still incomplete when its window ends has its events
dead-lettered with reason ``uncorrelated``; so has an event without the ``by``
attribute. An event no filter matches is acked and left out.

**Acks are held** while a set waits: an event is acked only after its set fired or was
dead-lettered, so nothing is lost at a crash. After a restart the held events are
delivered again and wait anew, with a new window from their redelivery; events of
sets that had fired may come again too (where the backend commits positions in order),
so a correlated function should be idempotent. At most ``max_pending`` events are held;
beyond that, reading waits until sets fire or expire.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable

import anyio
import anyio.abc

from eventmesh.delivery.deadletter import dead_letter_event, describe_error, store_dead_letter
from eventmesh.delivery.policy import DeliveryPolicy, retry_delay
from eventmesh.event import Event
from eventmesh.subscription import Delivery
from eventmesh.triggers.function import CorrelateConfig
from eventmesh.triggers.stats import FunctionStats
from eventmesh.typing import Filter

__all__ = ["Correlator"]

log = logging.getLogger(__name__)

DeadLetter = Callable[[str, Event], Awaitable[None]]


class _Set:
    __slots__ = ("deadline", "done", "key", "slots")

    def __init__(self, key: str, size: int, deadline: float) -> None:
        self.key = key
        self.slots: list[Delivery | None] = [None] * size
        self.deadline = deadline
        self.done = False

    def complete(self) -> bool:
        return all(d is not None for d in self.slots)


class Correlator:
    """Groups a subscription's deliveries into sets and fires ``invoke`` once per set."""

    def __init__(
        self,
        spec: CorrelateConfig,
        filters: list[Filter],
        *,
        name: str,
        invoke: Callable[[list[Event]], Awaitable[None]],
        policy: DeliveryPolicy,
        dead_letter: DeadLetter,
        topic: str,
        group: str,
        stats: FunctionStats,
    ) -> None:
        self.spec = spec
        self.filters = filters
        self.name = name
        self.window = float(spec.window)
        self.stats = stats
        self._invoke = invoke
        self._policy = policy
        self._publish = dead_letter
        self._topic = topic
        self._group = group
        self._dlq = policy.dead_letter_topic(topic, group)
        self._open: dict[str, list[_Set]] = {}
        self._order: deque[_Set] = deque()
        self._held = 0
        self._changed = anyio.Event()
        self._room = anyio.Event()

    @property
    def held(self) -> int:
        """Events waiting in incomplete sets."""
        return self._held

    async def run(self, deliveries: AsyncIterable[Delivery], tg: anyio.abc.TaskGroup) -> None:
        """Read ``deliveries`` until they end; fired sets and expiry run in ``tg``."""
        tg.start_soon(self._expire_loop, tg)
        async for delivery in deliveries:
            while self._held >= self.spec.max_pending:
                self._room = anyio.Event()
                await self._room.wait()
            await self._add(delivery, tg)

    async def _add(self, delivery: Delivery, tg: anyio.abc.TaskGroup) -> None:
        event = delivery.event
        key = event.get(self.spec.by)
        if key is None:
            await self._give_up(
                delivery, "uncorrelated", f"the event has no {self.spec.by!r} attribute"
            )
            return
        key = str(key)
        try:
            wanted = [i for i, f in enumerate(self.filters) if f(event)]
        except Exception as exc:
            await self._give_up(delivery, "filter", describe_error(exc))
            return
        if not wanted:
            await delivery.ack()
            return
        target: _Set | None = None
        index = wanted[0]
        for candidate in self._open.get(key, ()):
            free = [i for i in wanted if candidate.slots[i] is None]
            if free:
                target, index = candidate, free[0]
                break
        if target is None:
            target = _Set(key, len(self.filters), time.monotonic() + self.window)
            self._open.setdefault(key, []).append(target)
            self._order.append(target)
            self._changed.set()
        target.slots[index] = delivery
        self._held += 1
        if target.complete():
            self._close(target)
            tg.start_soon(self._fire, target)

    def _close(self, item: _Set) -> None:
        item.done = True
        sets = self._open.get(item.key)
        if sets is not None:
            sets.remove(item)
            if not sets:
                del self._open[item.key]

    def _release(self, count: int) -> None:
        self._held -= count
        self._room.set()

    async def _fire(self, item: _Set) -> None:
        deliveries = [d for d in item.slots if d is not None]
        events = [d.event for d in deliveries]
        self.stats.sets_fired += 1
        attempt = max(d.attempt for d in deliveries)
        try:
            while True:
                try:
                    await self._invoke(events)
                except Exception as exc:
                    delay = retry_delay(self._policy, attempt, exc)
                    if delay is None:
                        for d in deliveries:
                            await self._give_up(d, "failed", describe_error(exc), attempt)
                        return
                    await anyio.sleep(delay)
                    attempt += 1
                    continue
                for d in deliveries:
                    await d.ack()
                return
        finally:
            self._release(len(deliveries))

    async def _expire_loop(self, tg: anyio.abc.TaskGroup) -> None:
        order = self._order
        while True:
            while order and order[0].done:
                order.popleft()
            if not order:
                self._changed = anyio.Event()
                await self._changed.wait()
                continue
            wait = order[0].deadline - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            item = order.popleft()
            self._close(item)
            tg.start_soon(self._expire, item)

    async def _expire(self, item: _Set) -> None:
        deliveries = [d for d in item.slots if d is not None]
        missing = [str(i) for i, d in enumerate(item.slots) if d is None]
        self.stats.sets_expired += 1
        error = (
            f"no event for correlate.match[{', '.join(missing)}] with {self.spec.by} "
            f"{item.key!r} arrived within {self.window:g}s"
        )
        try:
            for d in deliveries:
                await self._give_up(d, "uncorrelated", error)
        finally:
            self._release(len(deliveries))

    async def _give_up(
        self, delivery: Delivery, reason: str, error: str, attempts: int | None = None
    ) -> None:
        """Dead-letter the event (retrying the store), then ack it."""
        event = delivery.event
        if self._dlq is None:
            log.error(
                "function %s dropped event %s (%s: %s): no dead-letter topic is set",
                self.name,
                event.id,
                reason,
                error,
            )
        else:
            dead = dead_letter_event(
                event,
                reason=reason,
                error=error,
                attempts=attempts if attempts is not None else delivery.attempt,
                topic=self._topic,
                group=self._group,
            )
            await store_dead_letter(
                self._publish,
                self._dlq,
                dead,
                backoff=self._policy.backoff,
                where=f"function {self.name}",
            )
            log.warning(
                "function %s dead-lettered event %s to %s (%s: %s)",
                self.name,
                event.id,
                self._dlq,
                reason,
                error,
            )
        await delivery.ack()
