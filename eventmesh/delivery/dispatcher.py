"""The dispatcher: from a connector consumer to a sink, under a delivery policy.

One dispatcher runs per subscription in each process, embedded or remote alike. It
fetches batches from the consumer and queues each event on one of ``concurrency`` lanes
(:mod:`eventmesh.delivery.lanes`; by key under ``ordering: partitionkey``), a lane made
for its first event and freed once it is empty and handled, so an idle subscription
holds no lanes (a few freed ones at most, for reuse). Workers take the next event of a
ready lane, one worker per lane at a time (so a key keeps its order): two from the
start, more, up to ``concurrency``, once handlers wait (see ``_more``), so a subscription
whose handler never waits costs two tasks, not one per lane. (A sink that takes groups
has a task per lane instead, started for the lane's first event and ending once it is
empty: :mod:`eventmesh.delivery.grouped`.) In its lane an event is checked against its
TTL, filtered, transformed and passed to the sink; a failed attempt goes to the
subscription's settle strategy (:mod:`eventmesh.delivery.settle`), which retries it here
with backoff while attempts remain and otherwise dead-letters it, or, for a subscription
a sidecar runs, hands it back to the sidecar. Only a handled event is acked: a position
is never committed for an event that was not (at-least-once).

Per event this is the hot path of every subscription, so it is kept short: a gate with
no TTL, filter or transform is skipped rather than called, and events are fetched a
small batch at a time, each batch handed to the lanes before the next (see
``_FETCH_BATCH``). Observability adds two checks per event: with metrics on, an ack adds
one observation to the subscription's publish-to-ack histogram; with tracing on, an event
that carries a ``traceparent`` goes to the traced sink (docs/operations.md).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import anyio
import anyio.abc
import anyio.lowlevel

from eventmesh._logging import event_fields
from eventmesh.connectors.base import Consumer, Delivery
from eventmesh.delivery.deadletter import describe_error
from eventmesh.delivery.gate import Gate
from eventmesh.delivery.grouped import GroupLanes, group_sink
from eventmesh.delivery.lanes import Lane, Lanes
from eventmesh.delivery.settle import RetryHere, Settle
from eventmesh.errors import ClosedError, ConnectorError, EventMeshError
from eventmesh.event import Event
from eventmesh.observability.histogram import Histogram
from eventmesh.typing import Sink

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

_FETCH_BATCH: Final = 128
"""Events fetched at a time. Small batches, each handed to the lanes before the next
fetch, keep the events alive at once few: Python's cyclic garbage collector then runs
rarely and finds little, which at high rates costs more than the fetches saved by
larger batches. The prefetch limit (``max_in_flight``) still bounds the total."""


class Dispatcher:
    """Runs one subscription: fetch, route to lanes, handle, ack."""

    def __init__(
        self,
        *,
        consumer: Consumer,
        sink: Sink,
        gate: Gate,
        latency: Histogram | None = None,
        traced_sink: Sink | None = None,
        request_sink: Sink | None = None,
        settle: Settle | None = None,
    ) -> None:
        self.consumer = consumer
        self.sink = sink
        self.gate = gate
        self.latency = latency
        """Where the seconds from stored to acked go, per delivered event (metrics on)."""
        self.traced_sink = traced_sink
        """The sink under a delivery span (tracing on), for events that carry a
        ``traceparent``; the others go to :attr:`sink` without a wrapper's coroutine."""
        self.request_sink = request_sink
        """The sink that also answers requests (eventmesh._requests), for events that
        carry a ``replyto``; None when :attr:`sink` answers them itself."""
        self.settle = settle if settle is not None else RetryHere(gate)
        """What becomes of a failed attempt (by default the gate's policy, here)."""
        self.name = gate.name
        self.policy = policy = gate.policy
        self.stats = gate.stats
        self._lanes = Lanes(policy.concurrency, by_key=policy.ordering == "partitionkey")
        self._ready: deque[Lane] = deque()
        """Lanes with deliveries that no worker handles (the pool's queue, in order)."""
        self._sleepers: list[anyio.Event] = []
        """What each idle worker waits on."""
        self._workers = 0
        self._spare = 0
        """Workers woken or started that have not looked at :attr:`_ready` yet."""
        self._tg: anyio.abc.TaskGroup | None = None
        self._in_flight = 0
        self._room: anyio.Event | None = None
        self._idle: anyio.Event | None = None
        self._stopping = False
        self._route_scope = anyio.CancelScope()
        self._new_event: Callable[[], anyio.Event] = anyio.Event
        self._fill: Callable[[Sequence[Delivery]], None] = self._to_workers

    # -- lifecycle -----------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver until :meth:`stop` is called or the consumer closes."""
        # The running backend's own Event class: anyio.Event() looks the backend up on
        # every call, and the lanes and the router make one each time they wait.
        self._new_event = type(anyio.Event())
        # A sink that batches takes each lane's queued events as one group.
        grouping = group_sink(self.sink)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if grouping is not None:
                # A task per lane with events, started as the lane gets its first.
                self._fill = GroupLanes(self, grouping, tg).route
            else:
                # Two workers from the start, a second one for the first to wake (see
                # _more); more are started once handlers wait (I/O), up to concurrency.
                for _ in range(min(2, self.policy.concurrency)):
                    self._spare += 1
                    self._workers += 1
                    tg.start_soon(self._work, name=f"eventmesh-worker {self.name}")
            task_status.started()
            try:
                with self._route_scope:
                    await self._route()
                await self._wait_idle()
            finally:
                tg.cancel_scope.cancel()

    @property
    def in_flight(self) -> int:
        """Deliveries fetched and not yet settled (acked, retried or dead-lettered)."""
        return self._in_flight

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
        route = self._fill
        limit = self.policy.max_in_flight
        failures = 0
        while not self._stopping:
            room = limit - self._in_flight
            if room <= 0:
                self._room = event = self._new_event()
                await event.wait()
                continue
            try:
                batch = await consumer.fetch(min(room, _FETCH_BATCH))
            except EventMeshError as exc:
                if self._stopping or consumer.closed:
                    return  # closed here, or a remote stream that ended (it logged why)
                if not isinstance(exc, ConnectorError | ClosedError):
                    raise
                # The backend may come back (a broker restart, a sidecar shutting down, a
                # network blip): keep the subscription alive and try again after a backoff.
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
            latency = self.latency
            if latency is not None and len(latency.pending) >= latency.FOLD_AT:
                latency.fold()  # the lanes append to it; bucketed here, in bulk
            route(batch)
            # Not held while the next fetch waits: a delivery is freed once it was handled
            # (kept here, 1,000 idle subscriptions would keep 100,000s of them alive,
            # long enough for the collector to move them to its oldest generation).
            del batch
            # Let the lanes work through this batch before fetching the next (handlers
            # that wait on I/O give the turn back at once, so the prefetch still fills).
            await anyio.lowlevel.checkpoint()

    def _release(self, count: int) -> None:
        """``count`` deliveries were settled: make room for the router, wake an idle wait."""
        self._in_flight -= count
        if self._room is not None:
            self._wake_router()
        if self._idle is not None and not self._in_flight:
            idle, self._idle = self._idle, None
            idle.set()

    async def _wait_idle(self) -> None:
        while self._in_flight:
            self._idle = event = self._new_event()
            await event.wait()

    # -- the lanes -----------------------------------------------------------------------

    def _to_workers(self, batch: Sequence[Delivery]) -> None:
        """Queue ``batch`` on its lanes, and have a worker take the lanes it made ready."""
        ready = self._ready
        self._lanes.route(batch, ready)
        if ready and not self._spare:
            self._more()

    def _more(self) -> None:
        """One more worker for the ready lanes: an idle one woken, else a new one (up to
        ``concurrency``). Called when one is about to handle a delivery while lanes wait
        and no worker is on its way: were that handler to wait on I/O, the next worker
        takes the next lane; were it not to, the next worker finds nothing and sleeps.
        So a handler that never waits keeps one worker busy and one spare, not one task
        per lane, and one that waits gets as many as ``concurrency`` allows."""
        sleepers = self._sleepers
        if sleepers:
            self._spare += 1
            sleepers.pop().set()
        elif self._workers < self.policy.concurrency and self._tg is not None:
            self._spare += 1
            self._workers += 1
            self._tg.start_soon(self._work, name=f"eventmesh-worker {self.name}")

    async def _work(self) -> None:
        """One worker: handle the next delivery of the first ready lane, repeat."""
        ready = self._ready
        free = self._lanes.free
        sleepers = self._sleepers
        gate = self.gate
        sink = self.sink
        stats = self.stats
        # Without a TTL, filter or transform the gate hands every event through as it
        # is: skip it, and its coroutine, on the hot path.
        open_gate = gate.passes_all
        new_event = self._new_event
        latency = self.latency
        record = latency.pending.append if latency is not None else None
        now = time.time
        traced = self.traced_sink
        answering = self.request_sink
        # Cleared while the worker sleeps: an idle worker holds no lane, delivery or event.
        lane: Lane | None = None
        items: deque[Delivery] | None = None
        delivery: Delivery | None = None
        event: Event | None = None
        prepared: Event | None = None
        self._spare -= 1
        while True:
            if not ready:
                lane = items = delivery = event = prepared = None
                sleepers.append(woken := new_event())
                await woken.wait()
                self._spare -= 1
                continue
            lane = ready.popleft()
            items = lane.items
            delivery = items.popleft()
            if ready and not self._spare:
                self._more()
            try:
                if open_gate:
                    event = delivery.event
                else:
                    prepared = await gate.prepare(delivery)
                    if prepared is None:
                        continue  # expired, filtered out, dropped or dead-lettered: settled
                    event = prepared
                try:
                    if answering is not None and "replyto" in event.extensions:
                        await answering(event)
                    elif traced is not None and "traceparent" in event.extensions:
                        await traced(event)
                    else:
                        await sink(event)
                except Exception as exc:
                    await self._retry(delivery, event, exc)
                else:
                    stats.delivered += 1
                    await delivery.ack()
                    if record is not None and delivery.timestamp is not None:
                        record(now() - delivery.timestamp)
            finally:
                # The lane's next delivery may go now, to whichever worker comes first;
                # an empty lane goes (the key's next delivery makes it again).
                if items:
                    ready.append(lane)
                else:
                    free(lane)
                self._in_flight -= 1
                if self._room is not None:
                    self._wake_router()
                if self._idle is not None and not self._in_flight:
                    idle, self._idle = self._idle, None
                    idle.set()

    async def _retry(self, delivery: Delivery, event: Event, error: Exception) -> None:
        """After a failed attempt: as the settle strategy says, retry with backoff while
        the event has not expired, then ack it (or hand it back, or dead-letter it). A
        ``ClosedError`` while the subscription stops leaves the event unacked."""
        gate = self.gate
        stats = self.stats
        settle = self.settle
        sink = self.sink
        if self.request_sink is not None and "replyto" in event.extensions:
            sink = self.request_sink
        elif self.traced_sink is not None and "traceparent" in event.extensions:
            sink = self.traced_sink
        attempt = delivery.attempt
        while True:
            if isinstance(error, ClosedError) and (self._stopping or self.consumer.closed):
                # The mesh closes under the handler (a reply could not be stored): a
                # retry cannot help and the event is not the handler's fault. Left
                # unacked, it is delivered again after a restart.
                log.info(
                    "subscription %s: event %s left unacked while closing (%s)",
                    self.name,
                    event.id,
                    error,
                    extra=event_fields(event, self.name, attempt=attempt),
                )
                return
            stats.failed += 1
            try:
                delay = await settle.failed(delivery, error, attempt)
            except ClosedError as exc:
                # Dead-lettering found the mesh closed: the event stays unacked, to be
                # delivered again (a retry could not store it).
                log.info(
                    "subscription %s: event %s left unacked, as it could not be settled (%s)",
                    self.name,
                    event.id,
                    exc,
                )
                return
            if delay is None:
                return
            log.debug(
                "subscription %s: attempt %d of event %s failed: %r; retrying in %.1fs",
                self.name,
                attempt,
                event.id,
                error,
                delay,
                extra=event_fields(event, self.name, attempt=attempt, error=describe_error(error)),
            )
            await anyio.sleep(delay)
            attempt += 1
            stats.retried += 1
            if gate.expired(delivery):
                await gate.expire(delivery)
                return
            try:
                await sink(event)
            except Exception as exc:
                error = exc
                continue
            stats.delivered += 1
            await delivery.ack()
            if self.latency is not None and delivery.timestamp is not None:
                self.latency.observe(time.time() - delivery.timestamp)
            return
