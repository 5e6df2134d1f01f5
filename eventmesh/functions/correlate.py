"""Correlation triggers: fire once per complete set of related events.

A set is one event per filter of ``correlate.match`` sharing the ``by`` key, all
arrived within ``window`` of the set's first event; a complete set is given to the
function once, an incomplete one is dead-lettered ``uncorrelated`` when its window
ends. Acks are held while a set waits (at most ``max_pending`` events), so a crash loses
nothing. See docs/functions.md, 'Correlation triggers'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from eventmesh.delivery.deadletter import dead_letter, describe_error
from eventmesh.delivery.policy import DeliveryPolicy, retry_delay
from eventmesh.delivery.stats import DeliveryStats
from eventmesh.errors import ConnectorError
from eventmesh.event import Event
from eventmesh.functions.function import CorrelateConfig
from eventmesh.functions.stats import FunctionStats
from eventmesh.subscription import Delivery
from eventmesh.typing import Filter

if TYPE_CHECKING:
    from eventmesh.subscription import Subscription

__all__ = ["Correlator"]

log = logging.getLogger(__name__)

DeadLetter = Callable[[str, Event], Awaitable[None]]


class _Set:
    __slots__ = ("copies", "deadline", "ids", "key", "slots")

    def __init__(self, key: str, size: int, deadline: float) -> None:
        self.key = key
        self.slots: list[Delivery | None] = [None] * size
        self.copies: list[Delivery] = []  # deliveries again of events it holds
        self.ids: list[tuple[str, str]] = []
        self.deadline = deadline

    def complete(self) -> bool:
        return all(d is not None for d in self.slots)

    def held(self) -> list[Delivery]:
        return [d for d in self.slots if d is not None] + self.copies


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
        delivery_stats: DeliveryStats,
    ) -> None:
        self.spec = spec
        self.filters = filters
        self.name = name
        self.window = float(spec.window)
        self.stats = stats
        self.delivery_stats = delivery_stats
        """The subscription's counters: failed attempts and retries of sets go here."""
        self._invoke = invoke
        self._policy = policy
        self._publish = dead_letter
        self._topic = topic
        self._group = group
        self._dlq = policy.dead_letter_topic(topic, group)
        self._open: dict[str, list[_Set]] = {}  # open sets by key, oldest first
        self._sets: dict[_Set, None] = {}  # open sets, oldest (soonest to expire) first
        self._settling: dict[_Set, None] = {}  # fired or expired, not yet settled
        self._ids: dict[tuple[str, str], _Set] = {}  # (source, id) -> the set holding it
        self._held = 0
        self._touching = False
        self._changed = anyio.Event()
        self._room = anyio.Event()

    @property
    def held(self) -> int:
        """Events held unacked, in open sets and in sets being fired or dead-lettered."""
        return self._held

    async def run(self, subscription: Subscription, tg: anyio.abc.TaskGroup) -> None:
        """Read ``subscription`` until it closes; fired sets and expiry run in ``tg``.

        A :class:`~eventmesh.errors.ConnectorError` while reading is logged and reading
        resumes after the policy's backoff; any other error is raised.
        """
        tg.start_soon(self._expire_loop, tg)
        failures = 0
        while not subscription.closed:
            try:
                async for delivery in subscription:
                    failures = 0
                    if not self._touching:
                        self._start_touching(delivery, tg)
                    while self._held >= self.spec.max_pending:
                        self._room = anyio.Event()
                        await self._room.wait()
                    await self._add(delivery, tg)
                    del delivery  # keep nothing of a settled set while the next is awaited
                return
            except ConnectorError as exc:
                # The backend may come back (a broker restart, a network blip): keep the
                # group membership and the held sets, and read again after a backoff.
                failures += 1
                delay = self._policy.backoff.delay(min(failures, 10))
                log.warning(
                    "function %s could not read its trigger topic %s (%s); retrying in %.1fs",
                    self.name,
                    self._topic,
                    exc,
                    delay,
                )
                await anyio.sleep(delay)

    def _start_touching(self, delivery: Delivery, tg: anyio.abc.TaskGroup) -> None:
        self._touching = True
        timeout = delivery.redelivery_timeout
        if timeout is not None:
            tg.start_soon(self._touch_loop, timeout / 3)

    async def _touch_loop(self, every: float) -> None:
        """Tell the backend the held events are still in work, before it redelivers them."""
        while True:
            await anyio.sleep(every)
            for item in [*self._sets, *self._settling]:
                for delivery in item.held():
                    try:
                        await delivery.touch()
                    except Exception as exc:  # a blip: the next round touches it again
                        log.debug("function %s: a progress ack failed: %s", self.name, exc)

    async def _add(self, delivery: Delivery, tg: anyio.abc.TaskGroup) -> None:
        event = delivery.event
        key = event.get(self.spec.by)
        if key is None:
            await self._give_up(
                delivery, "uncorrelated", f"the event has no {self.spec.by!r} attribute"
            )
            return
        ident = (event.source, event.id)
        holder = self._ids.get(ident)
        if holder is not None:  # delivered again while held: settled with its set
            holder.copies.append(delivery)
            self._hold(1)
            return
        key = str(key)
        try:
            wanted = [i for i, f in enumerate(self.filters) if f(event)]
        except Exception as exc:
            await self._give_up(delivery, "filter", describe_error(exc))
            return
        if not wanted:
            await delivery.ack_as("filtered")
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
            self._sets[target] = None
            self.stats.sets_open = len(self._sets)
            self._changed.set()
        target.slots[index] = delivery
        target.ids.append(ident)
        self._ids[ident] = target
        self._hold(1)
        if target.complete():
            self._close(target)
            tg.start_soon(self._settle_set, self._fire, target)

    def _hold(self, count: int) -> None:
        self._held += count
        self.stats.events_held = self._held
        if count < 0:
            self._room.set()

    def _close(self, item: _Set) -> None:
        """The set takes no more events: it fires or expires now."""
        del self._sets[item]
        self.stats.sets_open = len(self._sets)
        self._settling[item] = None
        sets = self._open[item.key]
        sets.remove(item)
        if not sets:
            del self._open[item.key]

    def _forget(self, item: _Set) -> None:
        """The set is settled (or abandoned at shutdown): drop everything of it."""
        del self._settling[item]
        for ident in item.ids:
            self._ids.pop(ident, None)
        self._hold(-(len(item.ids) + len(item.copies)))
        item.slots.clear()
        item.copies.clear()

    async def _settle_set(self, settle: Callable[[_Set], Awaitable[None]], item: _Set) -> None:
        """Fire or expire ``item`` in a task of its own. An ack or a dead letter that
        fails there (a broker blip, the mesh closing) is logged: the set's events stay
        unacked and are given back (nacked), so they are delivered again; raised, it
        would end every task of the function, and the block the mesh was opened in."""
        held = list(item.held())
        try:
            await settle(item)
        except Exception as exc:
            log.warning(
                "function %s: settling a correlated set of %s %r failed (%s); its events "
                "are delivered again",
                self.name,
                self.spec.by,
                item.key,
                exc,
            )
            for delivery in held:  # an acked one ignores it
                try:
                    await delivery.nack()
                except Exception as again:  # the backend redelivers it in its own time
                    log.debug("function %s: a nack failed too: %s", self.name, again)

    async def _fire(self, item: _Set) -> None:
        deliveries = [d for d in item.slots if d is not None]
        events = [d.event for d in deliveries]
        counts = self.delivery_stats
        self.stats.sets_fired += 1
        attempt = max(d.attempt for d in deliveries)
        try:
            while True:
                try:
                    await self._invoke(events)
                except Exception as exc:
                    counts.failed += len(deliveries)
                    delay = retry_delay(self._policy, attempt, exc)
                    if delay is None:
                        for d in deliveries:
                            await self._give_up(d, "failed", describe_error(exc), attempt)
                        break
                    await anyio.sleep(delay)
                    attempt += 1
                    counts.retried += len(deliveries)
                    continue
                for d in deliveries:
                    await d.ack()
                break
            for d in item.copies:
                await d.ack_as("dropped")
        finally:
            self._forget(item)

    async def _expire_loop(self, tg: anyio.abc.TaskGroup) -> None:
        sets = self._sets
        while True:
            if not sets:
                self._changed = anyio.Event()
                await self._changed.wait()
                continue
            oldest = next(iter(sets))  # every set has the same window: the first ends first
            wait = oldest.deadline - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            self._close(oldest)
            tg.start_soon(self._settle_set, self._expire, oldest)

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
            for d in item.copies:
                await d.ack_as("dropped")
        finally:
            self._forget(item)

    async def _give_up(
        self, delivery: Delivery, reason: str, error: str, attempts: int | None = None
    ) -> None:
        """Dead-letter the event (retrying the store), then ack it."""
        await dead_letter(
            self._publish,
            self._dlq,
            delivery.event,
            reason=reason,
            error=error,
            attempts=attempts if attempts is not None else delivery.attempt,
            topic=self._topic,
            group=self._group,
            backoff=self._policy.backoff,
            kind="function",
            name=self.name,
            logger=log,
        )
        await delivery.ack_as("dead_lettered")
