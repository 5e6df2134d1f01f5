"""Request-reply: one event out, the first matching reply back.

:meth:`Mesh.request <eventmesh.mesh.Mesh.request>` publishes the request with the
``correlationid`` and ``replyto`` extensions and waits in :class:`Requests` for the
first reply on the mesh's inbox; :func:`send_replies` is what every reply path (handler
subscriptions, webhook sinks, functions, the remote clients) calls with what a handler
returned, so the convention lives in one place. See docs/sdk.md, 'Request-reply', and
docs/architecture.md, 'Request-reply'.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio

from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.errors import (
    ClosedError,
    ConfigError,
    EventValidationError,
    LimitExceededError,
    RejectedError,
    RequestTimeoutError,
)
from eventmesh.event import Event, ExtensionValue

if TYPE_CHECKING:
    from eventmesh.connectors.base import StartPosition
    from eventmesh.subscription import Subscription
    from eventmesh.typing import Handler

__all__ = [
    "CORRELATION_ID",
    "DEFAULT_TIMEOUT",
    "INBOX_PREFIX",
    "REPLY_TO",
    "Requests",
    "as_reply",
    "check_wait",
    "reply_address",
    "send_replies",
]

log = logging.getLogger(__name__)

REPLY_TO: Final = "replyto"
"""The extension on a request naming the topic its replies go to (a reply inbox)."""
CORRELATION_ID: Final = "correlationid"
"""The extension a reply carries to say which request it answers."""
INBOX_PREFIX: Final = "eventmesh.inbox."
"""Every reply inbox's topic name starts so; ``replyto`` is honoured only then."""
DEFAULT_TIMEOUT: Final = 30.0
"""Seconds a request waits for its reply when the caller gives no timeout."""

Publish = Callable[[str, Sequence[Event]], Awaitable[object]]


# -- answering: used wherever a handler's return value is published ----------------------


def reply_address(cause: Event) -> str | None:
    """The reply inbox ``cause`` asks replies to go to, or None when it asks for none
    (a ``replyto`` that names no inbox is ignored)."""
    address = cause.extensions.get(REPLY_TO) if cause.extensions else None
    if type(address) is str and address.startswith(INBOX_PREFIX):
        return address
    return None


def as_reply(reply: Event, cause: Event) -> Event:
    """``reply`` marked as the answer to ``cause``: the cause's ``correlationid`` (else
    its id) unless the reply sets its own, and no ``replyto`` of its own."""
    ext = dict(reply.extensions)
    ext.pop(REPLY_TO, None)
    if CORRELATION_ID not in ext:
        ext[CORRELATION_ID] = cause.extensions.get(CORRELATION_ID) or cause.id
    return reply.replace(extensions=ext)


def _events(result: Any) -> list[Event]:
    if isinstance(result, Event):
        return [result]
    if isinstance(result, list | tuple) and result and all(isinstance(e, Event) for e in result):
        return list(result)
    return []


async def send_replies(publish: Publish, cause: Event, result: Any, reply_to: str | None) -> None:
    """Publish what a handler returned for ``cause`` (an Event or a list of them; any
    other value is no reply): to ``reply_to`` when set, and, marked by
    :func:`as_reply`, to the cause's reply inbox when it names one."""
    replies = _events(result)
    if not replies:
        return
    inbox = reply_address(cause)
    if inbox is not None:
        replies = [as_reply(r, cause) for r in replies]
        # One partition for the replies to one request, so the first returned is the
        # first delivered to the inbox (unless the replies set keys of their own).
        key = replies[0].extensions[CORRELATION_ID]
        await publish(inbox, [_keyed(r, key) for r in replies])
    if reply_to is not None:
        await publish(reply_to, replies)


def _keyed(reply: Event, key: ExtensionValue) -> Event:
    if "partitionkey" in reply.extensions:
        return reply
    return reply.replace(extensions={**reply.extensions, "partitionkey": key})


def check_wait(timeout: float | None) -> float:
    """Seconds a remote client waits for its sidecar's answer to a request: ``timeout``,
    or the default; ``ConfigError`` naming ``timeout`` for one that is not a number of
    seconds above 0 (the sidecar checks it against its limit)."""
    if timeout is None:
        return DEFAULT_TIMEOUT
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ConfigError(
            f"the timeout must be a number of seconds above 0, got {timeout!r}", key="timeout"
        )
    if timeout == float("inf"):
        raise ConfigError("the timeout must be finite", key="timeout")
    return float(timeout)


# -- asking: the pending requests of one mesh ---------------------------------------------


class _Pending:
    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply: Event | None = None
        self.error: BaseException | None = None


class _Host(Protocol):
    """What requests need of their mesh (a Protocol, so this module does not import it)."""

    async def publish(self, topic: str, events: Event | Sequence[Event]) -> list[str]: ...

    def subscribe(
        self,
        topic: str,
        group: str,
        *,
        handler: Handler | None = None,
        delivery: DeliveryPolicy | None = None,
        start: StartPosition = "latest",
        name: str | None = None,
    ) -> Subscription: ...


class Requests:
    """The requests one mesh waits on, and its reply inbox (module doc).

    ``counts`` holds ``answered``, ``timed_out`` and ``late`` (replies dropped because
    no request waits for them); :attr:`pending` the requests waiting now.
    """

    def __init__(self, mesh: _Host, *, max_pending: int, max_timeout: float) -> None:
        self._mesh = mesh
        self.max_pending = max_pending
        self.max_timeout = max_timeout
        self.inbox = INBOX_PREFIX + secrets.token_hex(8)
        """The topic this mesh's replies are published to."""
        self.counts: dict[str, int] = {"answered": 0, "timed_out": 0, "late": 0}
        self._waiting: dict[str, _Pending] = {}
        self._subscription: Subscription | None = None
        self._lock = anyio.Lock()
        self._closed = False

    @property
    def pending(self) -> int:
        """Requests waiting for their reply now."""
        return len(self._waiting)

    async def request(self, topic: str, event: Event, timeout: float | None = None) -> Event:
        """Publish ``event`` on ``topic`` as a request; return the first reply (module doc)."""
        if type(event) is not Event:
            raise EventValidationError(
                f"request takes one eventmesh.Event, got {type(event).__name__} (convert "
                "SDK events with Event.from_cloudevent)"
            )
        seconds = self.check_timeout(timeout)
        if self._closed:
            raise ClosedError("the mesh is closed; no request can wait for a reply")
        correlation = event.extensions.get(CORRELATION_ID)
        if correlation is None or correlation == "":
            correlation = event.id
        elif type(correlation) is not str:
            raise EventValidationError(
                f"extension {CORRELATION_ID!r} must be a string, got {correlation!r}",
                attribute=CORRELATION_ID,
            )
        if correlation in self._waiting:
            raise RejectedError(
                f"a request with {CORRELATION_ID} {correlation!r} is already waiting for its "
                "reply; give each request its own id (or correlationid)"
            )
        if len(self._waiting) >= self.max_pending:
            raise LimitExceededError(
                f"{len(self._waiting)} requests wait for replies, as many as "
                "limits.max_pending_requests allows; retry when fewer are in flight or raise "
                "the limit",
                key="limits.max_pending_requests",
            )
        await self._open_inbox()
        request = event.replace(
            extensions={**event.extensions, REPLY_TO: self.inbox, CORRELATION_ID: correlation}
        )
        waiting = self._waiting[correlation] = _Pending()
        try:
            with anyio.move_on_after(seconds):
                await self._mesh.publish(topic, request)
                await waiting.done.wait()
        finally:
            if self._waiting.get(correlation) is waiting:
                del self._waiting[correlation]
        if waiting.error is not None:
            raise waiting.error
        if waiting.reply is None:
            self.counts["timed_out"] += 1
            raise RequestTimeoutError(
                f"no reply to the request {correlation!r} on topic {topic!r} within "
                f"{seconds:g}s; check that a subscription or function answers events of "
                f"type {event.type!r} (by returning an event), or give a longer timeout",
                timeout=seconds,
            )
        self.counts["answered"] += 1
        return waiting.reply

    def check_timeout(self, timeout: float | None) -> float:
        """The seconds a request may wait: ``timeout`` (default 30 s, capped at the
        limit); ``ConfigError`` naming ``timeout`` outside 0 to the limit."""
        if timeout is None:
            return min(DEFAULT_TIMEOUT, self.max_timeout)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ConfigError(
                f"the timeout must be a number of seconds, got {timeout!r}", key="timeout"
            )
        if not 0 < timeout <= self.max_timeout:
            raise ConfigError(
                f"the timeout must be above 0 and at most {self.max_timeout:g}s "
                f"(limits.max_request_timeout), got {timeout!r}",
                key="timeout",
            )
        return float(timeout)

    async def _open_inbox(self) -> None:
        if self._subscription is not None:
            return
        async with self._lock:
            if self._subscription is None:
                # One lane: replies are matched in the order they were stored, so the
                # first reply stored wins (the handler never waits, so one is enough).
                # From the earliest: the topic is this mesh's own and new, and a reply
                # stored before a broker's group join completes must not be skipped.
                sub = self._mesh.subscribe(
                    self.inbox,
                    "inbox",
                    handler=self._receive,
                    name=self.inbox,
                    delivery=DeliveryPolicy(concurrency=1),
                    start="earliest",
                )
                await sub.start()
                self._subscription = sub
                log.debug("reply inbox %s is open", self.inbox)

    async def _receive(self, reply: Event) -> None:
        """The inbox's handler: give the reply to its request, or drop it as late."""
        correlation = reply.extensions.get(CORRELATION_ID)
        waiting = self._waiting.pop(correlation, None) if type(correlation) is str else None
        if waiting is None or waiting.done.is_set():
            self.counts["late"] += 1
            log.debug("reply %s (correlationid %r) answers no waiting request; dropped",
                      reply.id, correlation)  # fmt: skip
            return
        ext = reply.extensions
        if ext.get("partitionkey") == correlation:  # the key send_replies gave it
            reply = reply.replace(extensions={k: v for k, v in ext.items() if k != "partitionkey"})
        waiting.reply = reply
        waiting.done.set()

    def close(self) -> None:
        """End every wait with ``ClosedError`` (the mesh closes)."""
        self._closed = True
        waiting, self._waiting = self._waiting, {}
        for item in waiting.values():
            item.error = ClosedError("the mesh closed before the reply came")
            item.done.set()
