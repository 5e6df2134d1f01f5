"""Core mode: plain NATS publish and queue-group subscriptions, nothing stored.

A publish goes to the server and is flushed (so a refused or lost connection surfaces
as a PublishError), and reaches the groups that have a member subscribed at that moment;
nothing is kept for anyone else. A member is a queue subscription (queue = the group,
escaped as a stream name is) without a callback: nats-py queues its messages (bounded:
``core.buffer`` + ``core.pending_limit``, then it drops them and says so), and ``fetch``
takes them off that queue in batches and decodes them, with no task switch per message.
nats-py also bounds the queue by bytes (``core.pending_bytes``), counting what its own
reads take off; this module takes messages off the queue itself, so it subtracts them
(:meth:`CoreConsumer._unqueued`), or the count would only grow and, once past the bound,
every message would be dropped.

Redelivery happens in the process that holds the event: a nack puts it back in the
member's own buffer after its delay. A member that leaves hands what it held and had
not acked to another member of its group: one in this connector if there is one, else
one in another process (a request on the group's hand-off subject, answered once it is
buffered there), else the connector keeps it for the next member of the group that
joins here. A member that dies with its process loses what it held: that is what "not
durable" means.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, cast

import anyio
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from eventmesh.connectors.base import Consumer, Delivery, StartPosition
from eventmesh.errors import PublishError, SubscribeError
from eventmesh.event import Event
from eventmesh_nats._errors import NATS_ERRORS, tolerated, translated
from eventmesh_nats.config import escape_name

if TYPE_CHECKING:
    from eventmesh_nats.connector import NatsConnector

__all__ = ["CoreConsumer", "CoreGroups", "publish_core"]

log = logging.getLogger(__name__)

_ATTEMPT_HEADER = "Eventmesh-Attempt"
_HANDOFF_TIMEOUT = 2.0
_seq = itertools.count()


async def publish_core(
    connector: NatsConnector,
    subject: str,
    messages: Sequence[tuple[dict[str, str], bytes]],
    where: str,
) -> None:
    """Publish each message, then flush: returns once the server has taken them all."""
    nc = connector.nc
    with translated(PublishError, where):
        for headers, payload in messages:
            await nc.publish(subject, payload, headers=headers)
        await nc.flush(timeout=max(1, round(connector.config.publish_timeout)))


class _Held:
    """An event a member held and did not ack, on its way to another member."""

    __slots__ = ("attempt", "due", "event")

    def __init__(self, event: Event, attempt: int, due: float) -> None:
        self.event = event
        self.attempt = attempt
        self.due = due


class CoreDelivery(Delivery):
    """A delivery in core mode: ack forgets it, nack puts it back after the delay."""

    __slots__ = ("_consumer", "_settled")

    def __init__(self, consumer: CoreConsumer, event: Event, offset: int, attempt: int = 1) -> None:
        # The base's fields, set directly: this runs once per message on the hot path.
        self.event = event
        self.topic = consumer.topic
        self.partition = 0
        self.offset = offset
        self.key = event.partitionkey
        self.attempt = attempt
        self.timestamp = None  # core NATS does not say when a message was sent
        self._consumer = consumer
        self._settled = False

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            self._consumer.outstanding.discard(self)

    async def nack(self, delay: float = 0.0) -> None:
        if not self._settled:
            self._settled = True
            self._consumer.outstanding.discard(self)
            due = time.monotonic() + max(0.0, delay)
            await self._consumer.put_back(_Held(self.event, self.attempt + 1, due))


class CoreConsumer(Consumer):
    """One member of a queue group on one subject."""

    def __init__(
        self, connector: NatsConnector, topic: str, group: str, start: StartPosition
    ) -> None:
        self._connector = connector
        self.topic = topic
        self.group = group
        self._start_at = start
        self._sub: Subscription | None = None  # the subscription to the topic's subject
        self._queue: asyncio.Queue[Msg] | None = None  # nats-py's, for the subscription
        self._first: deque[Msg] = deque()  # taken off the queue while waiting for it
        self._later: list[tuple[float, int, _Held]] = []  # nacked, by due time
        self._wakeup: asyncio.Event | None = None
        self._subs: list[Subscription] = []
        self._not_before: float | None = None
        self._skip = 0  # queued when the start time was seen: dropped if sent before it
        self._skip_before = 0.0  # that start time (seconds since the epoch)
        self._timer: asyncio.TimerHandle | None = None
        self._offset = 0
        self.outstanding: set[CoreDelivery] = set()
        self.handoff_subject = ""

    async def _start(self) -> None:
        connector = self._connector
        subject, _ = connector.route(self.topic, SubscribeError)
        start = self._start_at
        if isinstance(start, datetime):
            self._not_before = start.timestamp()
        elif start not in ("earliest", "latest"):
            raise SubscribeError(f"start must be 'earliest', 'latest' or a datetime, got {start!r}")
        queue = escape_name(self.group)
        self.handoff_subject = f"_EVENTMESH.handoff.{queue}.{subject}"
        settings = connector.config.core
        nc = connector.nc
        try:
            with translated(SubscribeError, f"joining group {self.group!r} on {subject!r}"):
                sub = await nc.subscribe(
                    subject,
                    queue=queue,
                    pending_msgs_limit=settings.buffer + settings.pending_limit,
                    pending_bytes_limit=settings.pending_bytes,
                )
                self._subs.append(sub)
                self._sub = sub
                # Read in bulk by fetch; nats-py has no public bulk read.
                self._queue = sub._pending_queue
                self._subs.append(
                    await nc.subscribe(self.handoff_subject, queue=queue, cb=self._on_handoff)
                )
                await nc.flush()  # the server knows this member before start returns
        except BaseException:
            for sub in self._subs:
                with tolerated("undoing a failed join"):
                    await sub.unsubscribe()
            raise
        if self._not_before is not None:
            delay = self._not_before - time.time()
            if delay > 0:
                # What is queued when the start time comes was sent before it.
                self._timer = asyncio.get_running_loop().call_later(delay, self._started)
            else:
                self._not_before = None
        connector.consumers.add(self)
        for held in connector.core_groups.join(self):
            self._take(held)

    def _started(self) -> None:
        """The start time came: what is queued now was sent before it, but for what the
        loop took in between. The loop may see the start time late (a busy loop, the
        timer and a waiting fetch racing), after messages sent since were queued: those
        whose event time is the start time or later are kept (:meth:`_sent_before`)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._skip = len(self._first) + (self._queue.qsize() if self._queue is not None else 0)
        self._skip_before = self._not_before or 0.0
        self._not_before = None

    def _sent_before(self, msg: Msg) -> bool:
        """Whether ``msg``, queued when the start time was seen, was sent before it: core
        NATS says nothing of when, so its event's ``time`` decides (as Kafka's start from a
        time reads record timestamps); an event without one counts as sent before."""
        sent = self._connector.decode(msg).time
        return sent is None or sent.timestamp() < self._skip_before

    def _before_start(self) -> float | None:
        """Seconds until the start time, having dropped what came before it; None once
        it has come (the timer may not have run yet: a busy loop, or a fetch that never
        gave the loop a turn)."""
        not_before = self._not_before
        if not_before is None:
            return None
        left = not_before - time.time()
        if left <= 0:
            self._started()
            return None
        self._first.clear()
        queue = self._queue
        while queue is not None and not queue.empty():
            self._unqueued(queue.get_nowait())
            queue.task_done()
        return left

    def _unqueued(self, msg: Msg) -> Msg:
        """``msg``, taken off nats-py's queue: no longer counted against
        ``core.pending_bytes`` (nats-py subtracts only what its own reads take)."""
        sub = self._sub
        if sub is not None:
            sub._pending_size -= len(msg.data)
        return msg

    # -- receiving ----------------------------------------------------------------------------

    async def _on_handoff(self, msg: Msg) -> None:
        attempt = int((msg.headers or {}).get(_ATTEMPT_HEADER, "1"))
        event = self._connector.decode(msg)
        if self.closed:
            return  # no answer: the sender keeps it
        self._take(_Held(event, attempt, 0.0))
        with tolerated("answering a hand-off"):
            await msg.respond(b"")

    def _take(self, held: _Held) -> None:
        """Hold an event given back by a nack or handed over by another member."""
        heapq.heappush(self._later, (held.due, next(_seq), held))
        wakeup = self._wakeup
        if wakeup is not None:
            wakeup.set()

    async def put_back(self, held: _Held) -> None:
        """A nacked event: hold it again, or hand it on when this member has left."""
        if self.closed:
            await self._connector.core_groups.hand_over(self, [held])
        else:
            self._take(held)

    # -- fetching -----------------------------------------------------------------------------

    async def fetch(self, max_events: int = 256, timeout: float | None = None) -> list[Delivery]:
        self._check_fetch()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self._take_batch(max(1, max_events))
            if batch or self.closed:
                return cast("list[Delivery]", batch)
            now = time.monotonic()
            wait = None if deadline is None else deadline - now
            if wait is not None and wait <= 0:
                return []
            if self._later:
                due = max(self._later[0][0] - now, 0.0)
                wait = due if wait is None else min(wait, due)
            left = self._before_start()
            if left is not None:
                wait = left if wait is None else min(wait, left)
            await self._wait(wait)

    async def _wait(self, timeout: float | None) -> None:
        """Until a message is queued, an event is held again, or ``timeout`` passes."""
        queue = self._queue
        if queue is None or not queue.empty():
            return
        self._wakeup = wakeup = asyncio.Event()
        get = asyncio.ensure_future(queue.get())
        woken = asyncio.ensure_future(wakeup.wait())
        try:
            await asyncio.wait((get, woken), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wakeup = None
            woken.cancel()
            self._took(get)

    def _take_batch(self, max_events: int) -> list[CoreDelivery]:
        out: list[CoreDelivery] = []
        later = self._later
        if later and later[0][0] <= time.monotonic():
            now = time.monotonic()
            while later and later[0][0] <= now and len(out) < max_events:
                held = heapq.heappop(later)[2]
                self._offset += 1
                out.append(CoreDelivery(self, held.event, self._offset, held.attempt))
        if self._before_start() is None:
            msgs = self._received(max_events - len(out))
            if msgs:
                decode = self._connector.decode
                offset = self._offset
                for msg in msgs:
                    offset += 1
                    out.append(CoreDelivery(self, decode(msg), offset))
                self._offset = offset
        if out:
            self.outstanding.update(out)
        return out

    async def _drain(self, sub: Subscription) -> None:
        """``sub.drain()``, which returns once its queue is empty and each message taken
        marked done: the main subscription's are moved here as they come."""
        # nats-py leaves Subscription.drain unannotated.
        drain = asyncio.ensure_future(sub.drain())  # type: ignore[no-untyped-call]
        queue = self._queue if sub is self._subs[0] else None
        get: asyncio.Future[Msg] | None = None
        try:
            while queue is not None and not drain.done():
                while not queue.empty():
                    self._first.append(self._unqueued(queue.get_nowait()))
                    queue.task_done()
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait((drain, get), return_when=asyncio.FIRST_COMPLETED)
                self._took(get)
                get = None
            await drain
        finally:
            drain.cancel()
            if get is not None:  # cut short (move_on_after): no getter left on the queue
                self._took(get)

    def _took(self, get: asyncio.Future[Msg]) -> None:
        """Keep what a ``queue.get()`` got, first in line; cancel it if it got nothing."""
        if get.done() and not get.cancelled():
            self._first.append(self._unqueued(get.result()))
            if self._queue is not None:
                self._queue.task_done()
        else:
            get.cancel()

    def _received(self, n: int) -> list[Msg]:
        """Up to ``n`` messages off the queue, in the order they came (those sent before
        the start time dropped)."""
        first = self._first
        queue = self._queue
        sub = self._sub
        msgs: list[Msg] = []
        while n > 0:
            if first:
                msg = first.popleft()
            elif queue is not None and sub is not None and not queue.empty():
                msg = queue.get_nowait()
                queue.task_done()  # Subscription.drain waits for it
                sub._pending_size -= len(msg.data)  # as _unqueued, inline: once a message
            else:
                break
            if self._skip:
                self._skip -= 1
                if self._sent_before(msg):
                    continue
            msgs.append(msg)
            n -= 1
        return msgs

    # -- leaving ------------------------------------------------------------------------------

    async def _close(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        connector = self._connector
        connector.consumers.discard(self)
        with anyio.CancelScope(shield=True):
            for sub in self._subs:
                with tolerated(f"leaving group {self.group!r}"), anyio.move_on_after(5.0):
                    # What the server already sent is still queued for us.
                    await self._drain(sub)
            # Handed out and not acked: delivered once more. Still queued: never delivered.
            for delivery in self.outstanding:
                delivery._settled = True  # a late ack or nack of it changes nothing now
            held = [_Held(d.event, d.attempt + 1, 0.0) for d in self.outstanding]
            if self._not_before is None:
                decode = connector.decode
                held += [_Held(decode(msg), 1, 0.0) for msg in self._received(1 << 62)]
            held += [item[2] for item in self._later]
            self.outstanding.clear()
            self._first.clear()
            self._later.clear()
            await connector.core_groups.leave(self, held)


class CoreGroups:
    """The members of each group in this connector, and what left members handed back."""

    def __init__(self, connector: NatsConnector) -> None:
        self._connector = connector
        self._members: dict[tuple[str, str], list[CoreConsumer]] = {}
        self._parked: dict[tuple[str, str], list[_Held]] = {}

    def join(self, member: CoreConsumer) -> list[_Held]:
        """Register a member; returns what earlier members of its group left here."""
        key = (member.topic, member.group)
        self._members.setdefault(key, []).append(member)
        return self._parked.pop(key, [])

    async def leave(self, member: CoreConsumer, held: list[_Held]) -> None:
        """Unregister a member and give what it held to another member of its group."""
        key = (member.topic, member.group)
        members = self._members.get(key, [])
        if member in members:
            members.remove(member)
        if not members:
            self._members.pop(key, None)
        if held:
            await self.hand_over(member, held)

    async def hand_over(self, member: CoreConsumer, held: list[_Held]) -> None:
        key = (member.topic, member.group)
        for other in self._members.get(key, []):
            if not other.closed:
                for item in held:
                    other._take(item)
                return
        left = await self._send_elsewhere(member, held)
        if not left:
            return
        parked = self._parked.setdefault(key, [])
        parked.extend(left)
        limit = self._connector.config.core.buffer
        if len(parked) > limit:
            log.warning(
                "group %r on topic %r has no members: dropped %d events it had not acked "
                "(core mode keeps at most core.buffer=%d for the next member)",
                member.group,
                member.topic,
                len(parked) - limit,
                limit,
            )
            del parked[: len(parked) - limit]

    async def _send_elsewhere(self, member: CoreConsumer, held: list[_Held]) -> list[_Held]:
        """Hand events to a member in another process; returns those nobody took."""
        connector = self._connector
        if not connector.connected:
            return held
        for i, item in enumerate(held):
            headers, payload = connector.encode(item.event)
            headers[_ATTEMPT_HEADER] = str(item.attempt)
            try:
                await connector.nc.request(
                    member.handoff_subject, payload, timeout=_HANDOFF_TIMEOUT, headers=headers
                )
            except NATS_ERRORS:
                return held[i:]  # no member elsewhere (or no answer): keep them here
        return []
