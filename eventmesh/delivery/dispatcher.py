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
from collections import deque

import anyio
import anyio.abc

from eventmesh.connectors.base import Consumer, Delivery
from eventmesh.delivery.deadletter import describe_error
from eventmesh.delivery.gate import Gate
from eventmesh.delivery.policy import retry_delay
from eventmesh.errors import ClosedError, ConnectorError
from eventmesh.typing import Sink

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

    def __init__(self, *, consumer: Consumer, sink: Sink, gate: Gate) -> None:
        self.consumer = consumer
        self.sink = sink
        self.gate = gate
        self.name = gate.name
        self.policy = policy = gate.policy
        self.stats = gate.stats
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
        gate = self.gate
        event = await gate.prepare(delivery)
        if event is None:
            return  # expired, filtered out, dropped or dead-lettered: already settled
        stats = self.stats
        attempt = delivery.attempt
        sink = self.sink
        while True:
            try:
                await sink(event)
            except Exception as exc:
                stats.failed += 1
                delay = retry_delay(self.policy, attempt, exc)
                if delay is None:
                    await gate.give_up(delivery, "failed", describe_error(exc), attempts=attempt)
                    return
                log.debug(
                    "subscription %s: attempt %d of event %s failed: %r; retrying",
                    self.name,
                    attempt,
                    event.id,
                    exc,
                )
                await anyio.sleep(delay)
                attempt += 1
                stats.retried += 1
                if gate.expired(delivery):
                    await gate.expire(delivery)
                    return
                continue
            break
        stats.delivered += 1
        await delivery.ack()
