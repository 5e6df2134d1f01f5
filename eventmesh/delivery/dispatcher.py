"""The dispatcher: from a connector consumer to a sink, under a delivery policy.

One dispatcher runs per subscription in each process. It fetches batches from the
consumer and hands each event to one of ``concurrency`` lanes; with ``ordering:
partitionkey`` the lane is chosen by the event's key, so one key is handled one event at
a time, in order, while different keys run in parallel. In its lane an event is
checked against its TTL, filtered, transformed and passed to the sink, retried with
backoff while attempts remain, and otherwise dead-lettered. Only then is it acked: a
position is never committed for an event that was not handled (at-least-once).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque

import anyio
import anyio.abc

from eventmesh.connectors.base import Consumer, Delivery
from eventmesh.delivery.deadletter import (
    DeadLetterPublisher,
    dead_letter_event,
    describe_error,
    store_dead_letter,
)
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.delivery.stats import DeliveryStats
from eventmesh.errors import ClosedError, ConnectorError
from eventmesh.event import Event
from eventmesh.typing import Filter, Sink, Transform

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)


class _Lane:
    """One ordered queue of deliveries and the task that works through it."""

    __slots__ = ("items", "ready")

    def __init__(self) -> None:
        self.items: deque[Delivery] = deque()
        self.ready: anyio.Event | None = None

    def push(self, delivery: Delivery) -> None:
        self.items.append(delivery)
        ready = self.ready
        if ready is not None:
            self.ready = None
            ready.set()


class Dispatcher:
    """Runs one subscription: fetch, route to lanes, handle, ack."""

    def __init__(
        self,
        *,
        name: str,
        consumer: Consumer,
        sink: Sink,
        policy: DeliveryPolicy,
        dead_letter: DeadLetterPublisher,
        filter: Filter | None = None,
        transform: Transform | None = None,
        stats: DeliveryStats | None = None,
    ) -> None:
        self.name = name
        self.consumer = consumer
        self.sink = sink
        self.policy = policy
        self.filter = filter
        self.transform = transform
        self.stats = stats or DeliveryStats()
        self._dead_letter = dead_letter
        self._dlq_topic = policy.dead_letter_topic(consumer.topic, consumer.group)
        self._lanes = [_Lane() for _ in range(policy.concurrency)]
        self._round_robin = itertools.cycle(range(policy.concurrency))
        self._in_flight = 0
        self._room: anyio.Event | None = None
        self._idle: anyio.Event | None = None
        self._stopping = False
        self._route_scope = anyio.CancelScope()

    # -- lifecycle -----------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver until :meth:`stop` is called or the consumer closes."""
        async with anyio.create_task_group() as tg:
            for lane in self._lanes:
                tg.start_soon(self._work, lane)
            task_status.started()
            try:
                with self._route_scope:
                    await self._route()
                await self._wait_idle()
            finally:
                tg.cancel_scope.cancel()

    async def stop(self) -> None:
        """Stop fetching; :meth:`run` returns once the events in hand are handled.

        A fetch cut short here loses nothing: what it had not returned was never acked.
        """
        self._stopping = True
        self._route_scope.cancel()

    # -- the router ----------------------------------------------------------------------

    def _wake_router(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            room.set()

    async def _route(self) -> None:
        consumer = self.consumer
        lanes = self._lanes
        count = len(lanes)
        ordered = self.policy.ordering == "partitionkey"
        limit = self.policy.max_in_flight
        round_robin = self._round_robin
        failures = 0
        while not self._stopping:
            room = limit - self._in_flight
            if room <= 0:
                self._room = event = anyio.Event()
                await event.wait()
                continue
            try:
                batch = await consumer.fetch(min(room, 512))
            except ClosedError:
                return
            except ConnectorError as exc:
                # The backend may come back (a broker restart, a network blip): keep the
                # subscription alive and try again after a backoff.
                failures += 1
                delay = self.policy.backoff.delay(min(failures, 10))
                log.warning(
                    "subscription %s could not fetch (%s); retrying in %.1fs",
                    self.name,
                    exc,
                    delay,
                )
                await anyio.sleep(delay)
                continue
            failures = 0
            if not batch:
                if consumer.closed:
                    return
                continue
            self._in_flight += len(batch)
            self.stats.received += len(batch)
            for delivery in batch:
                key = delivery.key
                if ordered and key is not None:
                    lanes[hash(key) % count].push(delivery)
                else:
                    lanes[next(round_robin)].push(delivery)

    async def _wait_idle(self) -> None:
        while self._in_flight:
            self._idle = event = anyio.Event()
            await event.wait()

    # -- the lanes -----------------------------------------------------------------------

    async def _work(self, lane: _Lane) -> None:
        items = lane.items
        handle = self._handle
        while True:
            if not items:
                lane.ready = ready = anyio.Event()
                await ready.wait()
                continue
            delivery = items.popleft()
            try:
                await handle(delivery)
            finally:
                self._in_flight -= 1
                if self._room is not None:
                    self._wake_router()
                if self._idle is not None and not self._in_flight:
                    idle, self._idle = self._idle, None
                    idle.set()

    async def _handle(self, delivery: Delivery) -> None:
        event = delivery.event
        stats = self.stats
        if self.policy.ttl is not None and self._expired(delivery):
            await self._give_up(delivery, event, "expired", f"older than ttl {self.policy.ttl}s")
            return
        if self.filter is not None:
            try:
                wanted = self.filter(event)
            except Exception as exc:
                await self._give_up(delivery, event, "filter", describe_error(exc))
                return
            if not wanted:
                stats.filtered += 1
                await delivery.ack()
                return
        if self.transform is not None:
            try:
                changed = self.transform(event)
            except Exception as exc:  # a PipelineError, or a user callable's own error
                await self._give_up(delivery, event, "transform", describe_error(exc))
                return
            if changed is None:
                stats.dropped += 1
                await delivery.ack()
                return
            event = changed
        attempt = delivery.attempt
        sink = self.sink
        while True:
            try:
                await sink(event)
            except Exception as exc:
                stats.failed += 1
                if attempt >= self.policy.max_attempts:
                    await self._give_up(
                        delivery, event, "failed", describe_error(exc), attempts=attempt
                    )
                    return
                log.debug(
                    "subscription %s: attempt %d of event %s failed: %r; retrying",
                    self.name,
                    attempt,
                    event.id,
                    exc,
                )
                await anyio.sleep(self.policy.backoff.delay(attempt))
                attempt += 1
                stats.retried += 1
                if self.policy.ttl is not None and self._expired(delivery):
                    await self._give_up(
                        delivery, event, "expired", f"older than ttl {self.policy.ttl}s"
                    )
                    return
                continue
            break
        stats.delivered += 1
        await delivery.ack()

    def _expired(self, delivery: Delivery) -> bool:
        ttl = self.policy.ttl
        assert ttl is not None
        when = delivery.event.time
        born = when.timestamp() if when is not None else delivery.timestamp
        return born is not None and time.time() - born > ttl

    async def _give_up(
        self,
        delivery: Delivery,
        event: Event,
        reason: str,
        error: str,
        *,
        attempts: int | None = None,
    ) -> None:
        """Dead-letter the event as it was read (retrying the store itself), then ack it."""
        topic = self._dlq_topic
        if topic is None:
            log.error(
                "subscription %s dropped event %s (%s: %s): no dead-letter topic is set",
                self.name,
                event.id,
                reason,
                error,
            )
        else:
            dead = dead_letter_event(
                delivery.event,
                reason=reason,
                error=error,
                attempts=attempts if attempts is not None else delivery.attempt,
                topic=self.consumer.topic,
                group=self.consumer.group,
            )
            await store_dead_letter(
                self._dead_letter,
                topic,
                dead,
                backoff=self.policy.backoff,
                where=f"subscription {self.name}",
            )
            log.warning(
                "subscription %s dead-lettered event %s to %s (%s: %s)",
                self.name,
                event.id,
                topic,
                reason,
                error,
            )
        self.stats.dead_lettered += 1
        await delivery.ack()
