"""The one client API, whatever the transport (embedded mesh or a remote sidecar)."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio
import anyio.abc

from eventmesh._lifecycle import ClosedOnExit
from eventmesh.connectors.base import StartPosition
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.errors import ClosedError, LifecycleError, RejectedError
from eventmesh.event import Event

if TYPE_CHECKING:
    from eventmesh.deadletters import DeadLetters
    from eventmesh.subscription import Subscription
    from eventmesh.typing import Handler

__all__ = ["Client"]


class Client(ClosedOnExit, abc.ABC):
    """Publish and subscribe. Use it as an async context manager.

    Every method raises ``ClosedError`` after the client is closed and
    ``LifecycleError`` before it is entered.

    The lifecycle is kept here, once for every implementation: ``__aenter__`` opens the
    transport, enters what must close with the client into an ``AsyncExitStack`` (kept as
    ``_stack``, with the task group ``_tg`` that runs the subscriptions) and sets
    ``_state`` to ``"open"``; subscriptions register in ``_subscriptions``; :meth:`close`
    closes them all at once, then the stack, then calls :meth:`_disconnect`.
    """

    _state: Literal["new", "opening", "open", "closing", "closed"] = "new"
    _stack: AsyncExitStack | None = None
    _tg: anyio.abc.TaskGroup | None = None
    _subscriptions: Mapping[Any, Subscription]

    @abc.abstractmethod
    async def __aenter__(self) -> Self:
        """Open the client (connect, or start the embedded mesh)."""

    async def close(self, timeout: float | None = None) -> None:
        """Close every subscription at once (each finishes the events in hand for up to
        ``timeout`` seconds, 30 by default; what is not acked by then is delivered
        again), then the client itself. Idempotent."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closing"
        stack, self._stack = self._stack, None
        try:
            with anyio.CancelScope(shield=True):
                # All at once, so shutdown takes one timeout, not one per subscription.
                async with anyio.create_task_group() as tg:
                    for sub in list(self._subscriptions.values()):
                        tg.start_soon(sub.close, timeout)
        finally:
            self._state = "closed"
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            if stack is not None:
                await stack.aclose()
            with anyio.CancelScope(shield=True):
                await self._disconnect()

    async def _disconnect(self) -> None:  # a hook: most have nothing to release
        """Release what the exit stack does not hold, once everything else is closed."""

    def _check_open(self) -> None:
        """Raise unless the client is open: ``ClosedError`` once closing or closed,
        ``LifecycleError`` before it was entered."""
        if self._state != "open":
            if self._state in ("closing", "closed"):
                raise ClosedError(f"{self._describe()} is closed")
            raise LifecycleError(
                f"{self._describe()} is not open; use it as 'async with {self._usage()}'"
            )

    def _describe(self) -> str:
        """What the client is, for error messages ("the client of ...")."""
        return f"the {type(self).__name__}"

    def _usage(self) -> str:
        """How it is opened, for error messages ("Mesh(...) as mesh")."""
        return f"{type(self).__name__}(...) as client"

    @abc.abstractmethod
    async def publish(self, topic: str, events: Event | Sequence[Event]) -> list[str]:
        """Store events on a topic; returns the ids of the events stored, in order, once
        all are stored; raises ``PublishError`` if not; ``EventValidationError`` for
        something that is not a valid event."""

    async def request(self, topic: str, event: Event, *, timeout: float | None = None) -> Event:
        """Publish ``event`` on ``topic`` as a request and return the first reply: an
        event that a handler or function returned for it (docs/sdk.md, Request-reply).

        Raises ``RequestTimeoutError`` when none came within ``timeout`` seconds
        (default 30, at most the mesh's ``limits.max_request_timeout``), and
        ``LimitExceededError`` when ``limits.max_pending_requests`` requests wait.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement request()")

    @abc.abstractmethod
    def subscribe(
        self,
        topic: str,
        group: str,
        *,
        handler: Handler | None = None,
        filter: Any = None,
        transform: Any = None,
        delivery: DeliveryPolicy | Mapping[str, Any] | None = None,
        start: StartPosition = "latest",
        name: str | None = None,
        reply_to: str | None = None,
    ) -> Subscription:
        """Join consumer ``group`` on ``topic``; raises ``ConfigError`` for a bad filter,
        transform or policy. With ``reply_to``, an Event (or a list of them) that the
        handler returns is published to that topic before the event is acked."""

    def dead_letters(self, topic: str) -> DeadLetters:
        """Browse dead-letter topic ``topic`` and replay it (eventmesh.deadletters).
        The embedded mesh and the HTTP client can; others raise ``RejectedError``."""
        raise RejectedError(
            f"{self._describe()} cannot browse or replay dead letters; connect over HTTP "
            "(eventmesh.connect('http://...')) or use an embedded mesh"
        )
