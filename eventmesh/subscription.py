"""A subscription as the SDK user holds it: iterate deliveries, or let a handler run.

Two forms, one object:

* iteration, ``async with mesh.subscribe(topic, group=g) as sub: async for d in sub``:
  the user acks or nacks each :class:`Delivery`; a nack is retried under the policy
  (after its backoff, up to ``max_attempts``, then the dead-letter topic);
* a handler, ``mesh.subscribe(topic, group=g, handler=fn)``: the dispatcher calls ``fn``
  with each event; returning acks, raising retries. Start it with ``async with`` (it
  stops at the end of the block) or ``await`` (it runs until the mesh closes or
  :meth:`Subscription.close`).

The same class serves the embedded mesh and the remote clients: what differs is the
:class:`~eventmesh.connectors.base.Consumer` it reads (a connector's, or a sidecar's pull
or stream connection), the :class:`~eventmesh.delivery.services.Services` of its owner,
and who runs the delivery policy (:mod:`eventmesh.delivery.settle`).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Generator
from functools import partial
from typing import Any, Final, Literal, Self

import anyio
import anyio.to_thread
import msgspec

from eventmesh._lifecycle import ClosedOnExit
from eventmesh._requests import send_replies
from eventmesh.connectors.base import Consumer
from eventmesh.connectors.base import Delivery as ConnectorDelivery
from eventmesh.delivery.dispatcher import Dispatcher
from eventmesh.delivery.gate import Gate
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.delivery.services import Publish, Services, delivering
from eventmesh.delivery.settle import RetryHere, Settle
from eventmesh.errors import ClosedError, LifecycleError
from eventmesh.event import Event
from eventmesh.observability.histogram import Histogram
from eventmesh.typing import Filter, Handler, Sink, Transform

__all__ = ["Delivery", "Handler", "Subscription"]

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT: Final = 30.0
"""Seconds :meth:`Subscription.close` lets the events in hand finish, by default."""
_ITER_BATCH: Final = 64
"""Events the iterator form fetches at a time (it has no dispatcher)."""

Outcome = Literal["delivered", "dead_lettered", "filtered", "dropped"]
"""What became of an acked event, as the subscription's stats count it."""


class Delivery:
    """One event given to an iterating subscriber; ack or nack it once."""

    __slots__ = ("_delivery", "_settled", "_subscription", "event")

    def __init__(self, subscription: Subscription, delivery: ConnectorDelivery, event: Event):
        self._subscription = subscription
        self._delivery = delivery
        self._settled = False
        self.event = event

    @property
    def attempt(self) -> int:
        """1 on the first delivery of this event to this group, then 2, 3, ..."""
        return self._delivery.attempt

    @property
    def topic(self) -> str:
        """The topic the event was read from."""
        return self._delivery.topic

    async def ack(self) -> None:
        """The event is handled: its position may be committed. Only the first ack or
        nack of a delivery counts."""
        if self._settled:
            return
        self._settled = True
        try:
            await self._delivery.ack()
        except BaseException:
            self._settled = False  # not acked: it may still be nacked, or acked again
            raise
        self._subscription.stats.delivered += 1
        latency = self._subscription.latency
        if latency is not None and self._delivery.timestamp is not None:
            latency.observe(time.time() - self._delivery.timestamp)

    async def ack_as(self, outcome: Outcome) -> None:
        """Ack the event, counted in the subscription's stats as ``outcome`` rather than
        ``delivered``: for a consumer that settles events itself (a correlation trigger
        acks its dead letters as ``dead_lettered``, events it leaves out as
        ``filtered``)."""
        if outcome == "delivered":
            await self.ack()
            return
        if self._settled:
            return
        self._settled = True
        try:
            await self._delivery.ack()
        except BaseException:
            self._settled = False  # not acked: it may still be nacked, or acked again
            raise
        stats = self._subscription.stats
        setattr(stats, outcome, getattr(stats, outcome) + 1)

    async def touch(self) -> None:
        """Tell the backend the event is still in work, so it does not deliver it again
        after :attr:`redelivery_timeout`; does nothing once settled, or for a backend
        without such a timeout."""
        if not self._settled:
            await self._delivery.touch()

    @property
    def redelivery_timeout(self) -> float | None:
        """Seconds after which the backend delivers the event again by itself unless it
        was settled or touched (JetStream's ``ack_wait``); None when it never does while
        this member lives."""
        return self._subscription._consumer.redelivery_timeout

    async def nack(self, error: BaseException | str | None = None) -> None:
        """The event failed: retry it after the policy's backoff, or dead-letter it when
        this was the last attempt. ``error`` is recorded on the dead letter."""
        if self._settled:
            return
        self._settled = True
        await self._subscription._nack(self._delivery, self.event, error)

    def __repr__(self) -> str:
        return f"<Delivery {self.event.type} id={self.event.id!r} attempt={self.attempt}>"


def _as_sink(handler: Handler) -> Sink:
    """The handler as a sink: itself when it is async, else a coroutine that runs it in a
    worker thread."""
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004  # an object with an async __call__
    ):
        return handler

    async def in_thread(event: Event) -> Any:
        return await anyio.to_thread.run_sync(partial(handler, event))

    return in_thread


def _replying(sink: Sink, publish: Publish, reply_to: str | None) -> Sink:
    """The sink, publishing what it returns to ``reply_to`` and, for a request, to its
    reply inbox, before the event is acked (through the owner's ``Services.publish``,
    which still stores while the owner closes; eventmesh._requests)."""

    async def replying(event: Event) -> Any:
        result = await sink(event)
        if result is not None:
            await send_replies(publish, event, result, reply_to)
        return result

    return replying


class Subscription(ClosedOnExit):
    """A consumer group membership on one topic, in iterator or handler form.

    ``services`` is what its owner (a Mesh, a remote client) provides; ``settle`` says
    who runs ``policy`` (by default this process: :class:`RetryHere`). With a
    :class:`~eventmesh.delivery.settle.HandBack` the source runs it, so ``filter``,
    ``transform`` and the TTL are not applied here either.
    """

    latency: Histogram | None = None
    """Seconds from stored to acked per delivered event (None with metrics off)."""

    def __init__(
        self,
        services: Services[Subscription],
        *,
        name: str,
        topic: str,
        group: str,
        consumer: Consumer,
        policy: DeliveryPolicy,
        handler: Handler | None,
        filter: Filter | None,
        transform: Transform | None,
        reply_to: str | None = None,
        settle: Settle | None = None,
    ) -> None:
        self._services = services
        self.name = name
        self.topic = topic
        self.group = group
        self.policy = policy
        self._consumer = consumer
        # One gate for both forms: TTL, filter, transform and dead letters act the same.
        self._gate = Gate(
            name=name,
            topic=topic,
            group=group,
            # The source checks the TTL when it runs the policy.
            policy=policy if settle is None or settle.here else _without_ttl(policy),
            dead_letter=services.publish,
            filter=filter,
            transform=transform,
        )
        self._settle = settle if settle is not None else RetryHere(self._gate)
        self.stats = self._gate.stats
        self._dispatcher: Dispatcher | None = None
        self._done: anyio.Event | None = None
        self._scope = anyio.CancelScope()
        self._buffer: deque[ConnectorDelivery] = deque()
        self.reply_to = reply_to
        self.latency = Histogram() if services.measure else None
        if handler is not None:
            sink = _as_sink(handler)
            # With reply_to every result is published; without, only a request's (an
            # event with replyto) is, so other events skip the wrapper (_requests).
            answering = _replying(sink, services.publish, reply_to)
            if reply_to is not None:
                sink = answering
            tracing = services.tracing
            traced = None
            if tracing is not None:  # events with a traceparent are delivered under a span
                traced = tracing.traced_sink(sink, subscription=name, topic=topic)
                answering = tracing.traced_sink(answering, subscription=name, topic=topic)
            self._dispatcher = Dispatcher(
                consumer=consumer,
                sink=sink,
                gate=self._gate,
                latency=self.latency,
                traced_sink=traced,
                request_sink=answering if reply_to is None else None,
                settle=self._settle,
            )
        self._state = "new"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> Self:
        """Join the group (and, with a handler, start delivering). Raises what the
        consumer raises when it cannot join; the subscription is closed then."""
        if self._state != "new":
            raise LifecycleError(f"subscription {self.name!r} was already started")
        self._state = "open"
        try:
            await self._consumer.start()
        except BaseException:
            self._state = "closed"
            with anyio.CancelScope(shield=True):
                await self._consumer.close()
            self._services.unregister(self)
            raise
        self._services.register(self)
        if self._dispatcher is not None:
            self._done = anyio.Event()
            await self._services.task_group().start(self._run_dispatcher)
        return self

    async def _run_dispatcher(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        assert self._dispatcher is not None
        assert self._done is not None
        delivering.set((self._services, self))  # this task's context, and its workers'
        try:
            with self._scope:
                await self._dispatcher.run(task_status=task_status)
        except Exception:
            log.exception("subscription %s stopped on an unexpected error", self.name)
        finally:
            self._done.set()
            if self._state == "open" and self._consumer.closed:
                # The consumer ended by itself (a sidecar's stream): nothing more comes.
                self._state = "closed"
                with anyio.CancelScope(shield=True):
                    await self._consumer.close()
                self._services.unregister(self)

    def __await__(self) -> Generator[Any, None, Self]:
        return self.start().__await__()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def close(self, timeout: float | None = None) -> None:
        """Stop: finish the events in hand (up to ``timeout`` seconds, 30 by default),
        then cancel the handlers still running and leave the group.

        What was not acked by then is delivered again to the group. Idempotent.
        """
        if self._state == "closed":
            return
        current = delivering.get()
        if current is not None and current[1] is self:
            # One of its own handlers: closing waits for the handlers to finish, so the
            # close runs in a task of its own, and this returns at once.
            self._services.task_group().start_soon(self._close_apart, timeout)
            return
        self._state = "closed"
        self._buffer.clear()  # fetched, never yielded: back to the group with the consumer
        try:
            if self._dispatcher is not None and self._done is not None:
                await self._dispatcher.stop()
                with anyio.move_on_after(timeout if timeout is not None else _CLOSE_TIMEOUT):
                    await self._done.wait()
                self._scope.cancel()  # handlers still running are cut short: not acked
                await self._done.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self._consumer.close()
            self._services.unregister(self)

    async def _close_apart(self, timeout: float | None) -> None:
        """The close one of its handlers asked for, in a task of the owner's task group
        (whose context came from the handler's, so it is cleared first)."""
        delivering.set(None)
        await self.close(timeout)

    @property
    def closed(self) -> bool:
        """True once the subscription was closed."""
        return self._state == "closed"

    @property
    def in_flight(self) -> int | None:
        """Deliveries handed to the handler and not yet settled; None without a handler."""
        return self._dispatcher.in_flight if self._dispatcher is not None else None

    @property
    def lag(self) -> int | None:
        """Events stored on the topic that the group has not yet acked, when the
        connector can tell (else None)."""
        if self._state != "open":
            return None
        try:
            return self._consumer.lag()
        except Exception:  # a figure for the metrics must not break a scrape
            log.debug("subscription %s: the connector could not tell its lag", self.name)
            return None

    # -- iterator form -------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Delivery]:
        if self._dispatcher is not None:
            raise LifecycleError(
                f"subscription {self.name!r} has a handler; iterate only a subscription "
                "made without one"
            )
        if self._state == "new":
            raise LifecycleError(
                "enter the subscription first: 'async with mesh.subscribe(...) as sub'"
            )
        # Closed (by its owner, or by the mesh closing, perhaps before the loop began):
        # the loop ends at once, as one running when it closed does.
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        # Fetched deliveries wait on the subscription, not in this generator: a loop
        # left with 'break' and started again goes on where it stopped.
        consumer = self._consumer
        buffer = self._buffer
        gate = self._gate
        open_gate = gate.passes_all  # no TTL, filter or transform: skip its coroutine
        while self._state == "open":
            if not buffer:
                try:
                    batch = await consumer.fetch(_ITER_BATCH)
                except ClosedError:
                    if self._state != "open":
                        return  # closed here
                    raise  # closed under it: by the backend, or a sidecar shutting down
                if not batch and consumer.closed:
                    return  # it ended by itself (a sidecar's stream the client half-closed)
                buffer.extend(batch)
                continue
            delivery = buffer.popleft()
            event = delivery.event if open_gate else await gate.prepare(delivery)
            if event is not None:
                self.stats.received += 1
                yield Delivery(self, delivery, event)

    async def _nack(
        self, delivery: ConnectorDelivery, event: Event, error: BaseException | str | None
    ) -> None:
        self.stats.failed += 1
        delay = await self._settle.failed(delivery, error, delivery.attempt)
        if delay is not None:
            self.stats.retried += 1
            await delivery.nack(delay)


def _without_ttl(policy: DeliveryPolicy) -> DeliveryPolicy:
    return msgspec.structs.replace(policy, ttl=None) if policy.ttl is not None else policy
