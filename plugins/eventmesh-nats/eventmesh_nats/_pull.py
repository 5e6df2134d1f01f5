"""Pulling from a JetStream consumer in batches, on the member's own inbox.

nats-py's ``PullSubscription.fetch`` waits for each message on its own (a task, a
``wait_for`` timer and an inbox name per message), which costs more than the rest of the
route together. A :class:`Puller` sends the pull requests itself, each on its own reply
subject under one ``<inbox>.*`` subscription, counts each message against the oldest
request that still owes some (a ``404``/``408``/``409``/``503`` status closes a request),
and reads what arrives in one pass per batch. :meth:`take` hands out buffered messages;
:meth:`top_up` keeps about ``window`` messages requested: two batches, doubled (up to
eight) each time the member found nothing received while messages were on their way
once eight batches came without a pause (a short burst is shared between the members
evenly), halved again once a whole window waits unread. While messages flow, requests
are ``no_wait`` (the server ends them when it runs out, so none is left owing when a
member leaves and gives its messages back); once one finds nothing, one long poll waits.
A request never answered (a restart, a lost connection) is forgotten after its
``expires`` plus a margin and asked again (not sooner: a ``no_wait`` request stays on the
server while the consumer is at ``max_ack_pending``, and is answered once acks make
room). What the puller holds counts as delivered:
the member acks or naks it, and naks at once what it had not handed out when it leaves.
See docs/nats.md, 'JetStream'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["Puller"]

log = logging.getLogger(__name__)

_EXPIRES: Final = 5.0
"""Seconds a pull request waits on the server for messages (a long poll)."""
_MARGIN: Final = 2.0
"""Seconds past its expiry after which an unanswered request is given up on."""
_BACKOFF: Final = 0.5
"""Seconds before asking again after the server refused a request (503, 409)."""
_QUEUE_LIMIT: Final = 1 << 20
"""Messages the client may queue for the puller (the window bounds what is asked)."""
_FLOOR: Final = 2
_CAP: Final = 8
"""The window, in batches: at least ``_FLOOR``, at most ``_CAP``."""
_WARN_EVERY: Final = 60.0
"""Seconds between warnings about requests the consumer's own limits refuse."""


class _Request:
    __slots__ = ("owed", "token", "until")

    def __init__(self, token: str, owed: int, until: float) -> None:
        self.token = token
        self.owed = owed
        self.until = until


class Puller:
    """Batched pull requests on one inbox for one durable consumer (module docstring)."""

    def __init__(self, nc: NATS, next_subject: str, batch: int, limit: int) -> None:
        self._nc = nc
        self._next_subject = next_subject
        """``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``"""
        self.batch = max(1, batch)
        """What the long poll asks for (fetch's own ``max_events``)."""
        self._depth = _FLOOR
        self._limit = max(1, limit)
        """The most the window may be: half the consumer's ``max_ack_pending`` (what is
        asked for and not yet acked past that only waits on the server)."""
        self.window = min(_FLOOR * self.batch, self._limit)
        """What this member keeps asked for: ``_depth`` batches (see :meth:`take`)."""
        self._idle = False  # the last no_wait request found nothing
        self._flowing = 0  # messages received since the last request that found nothing
        self._polling: _Request | None = None  # the long poll, while it is outstanding
        self._prefix = ""
        self._sub: Subscription | None = None
        self._queue: asyncio.Queue[Msg] | None = None
        self.buffer: deque[Msg] = deque()
        self._requests: dict[str, _Request] = {}  # in the order they were sent
        self._head: _Request | None = None  # the oldest request, which messages answer
        self._owed = 0
        self._counter = 0
        self._hold_until = 0.0
        self._warned = -_WARN_EVERY  # when a refusal by the consumer's limits was logged
        self.refused = ""
        """Why the server last refused a request ('' after a message arrives)."""

    async def start(self) -> None:
        nc = self._nc
        self._prefix = nc.new_inbox() + "."
        sub = await nc.subscribe(
            self._prefix + "*", pending_msgs_limit=_QUEUE_LIMIT, pending_bytes_limit=0
        )
        self._sub = sub
        self._queue = sub._pending_queue  # read in bulk; nats-py has no public bulk read

    async def stop(self) -> list[Msg]:
        """Unsubscribe; return the messages received and not handed out (to nak)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()
        self._drain()
        left = list(self.buffer)
        self.buffer.clear()
        self._requests.clear()
        self._head = None
        self._owed = 0
        return left

    # -- receiving --------------------------------------------------------------------------

    def _drain(self) -> None:
        """Move what the client queued into the buffer, settling requests' counts."""
        queue = self._queue
        if queue is None:
            return
        get = queue.get_nowait
        absorb = self._absorb
        while not queue.empty():
            absorb(get())

    def _absorb(self, msg: Msg) -> None:
        if not msg.reply:
            self._status(msg.subject[len(self._prefix) :], msg)
            return
        self.buffer.append(msg)
        self.refused = ""
        self._idle = False
        self._flowing += 1
        head = self._head
        if head is None:
            if not self._requests:
                return  # more than was asked (a request given up on, answered late)
            head = self._head = next(iter(self._requests.values()))
        self._owed -= 1
        head.owed -= 1
        if head.owed <= 0:
            del self._requests[head.token]
            self._head = None
            if head is self._polling:
                self._polling = None

    def _status(self, token: str, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status", "")
        if status == "100":
            return  # an idle heartbeat (not asked for)
        request = self._forget(token)
        if status in ("404", "408"):
            if request is not None and request is not self._polling and not self.buffer:
                self._idle = True  # a no_wait request found nothing: poll next
                self._flowing = 0
            if request is self._polling:
                self._polling = None
            return  # nothing more for this request: ask again when needed
        description = headers.get("Description", "")
        self.refused = f"status {status or 'none'}" + (f" {description}" if description else "")
        now = time.monotonic()
        self._hold_until = now + _BACKOFF
        # The consumer's own limits (max_expires, max_batch, max_bytes) refusing what this
        # member asks: asked again it never succeeds until someone changes them.
        limited = status == "409" and description.startswith("Exceeded MaxRequest")
        if limited and now - self._warned >= _WARN_EVERY:
            self._warned = now
            stream, durable = self._next_subject.rsplit(".", 2)[1:]
            log.warning(
                "JetStream consumer %r of stream %r refuses this member's pull requests "
                "(%s): its limits are below what eventmesh asks for (a %gs long poll, "
                "batches of up to %d). Raise the consumer's max_expires / max_batch (and "
                "max_bytes) on the server, or delete the consumer so that eventmesh makes "
                "it again; asking again every %gs meanwhile",
                durable,
                stream,
                self.refused,
                _EXPIRES,
                max(self.window, self.batch),
                _BACKOFF,
            )
            return
        log.debug("pull request on %s ended: %s", self._next_subject, self.refused)

    def _forget(self, token: str) -> _Request | None:
        request = self._requests.pop(token, None)
        if request is not None:
            self._owed -= request.owed
            if request is self._head:
                self._head = None
            if request is self._polling:
                self._polling = None
        return request

    def size(self, batch: int) -> None:
        """Fetch asks for ``batch`` at a time: keep the window between two and eight."""
        self.batch = batch = max(1, batch)
        self.window = min(self._depth * batch, self._limit)

    def take(self, n: int) -> list[Msg]:
        """Up to ``n`` received messages, in the order they came."""
        self._drain()
        buffer = self.buffer
        if not buffer:
            if self._owed and self._polling is None and self._flowing >= _CAP * self.batch:
                # Handled before the next messages came, in a steady flow: ask further
                # ahead (a round trip to the server costs more than the batch it brings).
                self._depth = min(self._depth * 2, _CAP)
                self.size(self.batch)
            return []
        if len(buffer) >= self.window:
            # A whole window waits unread: the handlers are the slower side, and what is
            # buffered counts against the consumer's ack_wait and max_ack_pending.
            self._depth = max(self._depth // 2, _FLOOR)
            self.size(self.batch)
        if len(buffer) <= n:
            out = list(buffer)
            buffer.clear()
            return out
        popleft = buffer.popleft
        return [popleft() for _ in range(n)]

    async def wait(self, timeout: float) -> None:
        """Wait until a message (or status) is queued, ``timeout`` seconds pass, a
        request is due to be given up on, or a refusal's back-off ends (see
        :meth:`top_up`)."""
        queue = self._queue
        if queue is None or not queue.empty() or self.buffer:
            return
        now = time.monotonic()
        if self._requests:
            due = min(r.until for r in self._requests.values()) - now
            timeout = min(timeout, max(due, 0.0))
        if self._hold_until > now:
            timeout = min(timeout, self._hold_until - now)
        try:
            msg = await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            return
        self._absorb(msg)  # the buffer was empty: it goes in before the rest of the queue

    # -- asking -----------------------------------------------------------------------------

    async def top_up(self) -> None:
        """Ask for more when what is buffered and owed falls to half the window: a
        ``no_wait`` request while messages flow, else one long poll (module docstring)."""
        now = time.monotonic()
        requests = self._requests
        if requests:
            for token in [t for t, r in requests.items() if r.until <= now]:
                self._forget(token)  # never answered (a restart, a lost connection)
        have = len(self.buffer) + self._owed
        if have * 2 > self.window or now < self._hold_until or self._sub is None:
            return
        if self._idle:
            if self._polling is not None:
                return
            want = self.batch
            payload = b'{"batch":%d,"expires":%d}' % (want, int(_EXPIRES * 1e9))
        else:
            want = self.window - have
            payload = b'{"batch":%d,"no_wait":true}' % want
        self._counter += 1
        token = str(self._counter)
        request = requests[token] = _Request(token, want, now + _EXPIRES + _MARGIN)
        if self._idle:
            self._polling = request
        self._owed += want
        await self._nc.publish(self._next_subject, payload, reply=self._prefix + token)
