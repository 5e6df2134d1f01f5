"""The one client API, whatever the transport (embedded mesh or a remote sidecar)."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio
import anyio.abc

from eventmesh._lifecycle import ClosedOnExit
from eventmesh.connectors.base import StartPosition
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.delivery.services import Services, delivering
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

    anyio lets only the task that entered a task group leave it, so the stack is closed
    by the task that entered the client (``_owner``, set by :meth:`_hold`): closed from
    another task, the client closes its subscriptions and cancels its task group, which
    ends the ``async with`` block that opened it; leaving that block closes the rest.
    """

    _state: Literal["new", "opening", "open", "closing", "closed"] = "new"
    _stack: AsyncExitStack | None = None
    _tg: anyio.abc.TaskGroup | None = None
    _owner: int | None = None
    _closing: anyio.Event | None = None
    _services: Services[Any] | None = None
    _subscriptions: Mapping[Any, Subscription]

    @abc.abstractmethod
    async def __aenter__(self) -> Self:
        """Open the client (connect, or start the embedded mesh)."""

    async def close(self, timeout: float | None = None) -> None:
        """Close every subscription at once (each finishes the events in hand for up to
        ``timeout`` seconds, 30 by default; what is not acked by then is delivered
        again), then the client itself. Idempotent.

        Called from a task other than the one that entered the client, it returns once
        the subscriptions are closed, and ends the ``async with`` block that opened the
        client (the code in it is cancelled, as in a cancelled task group); the
        connectors close as that block exits. Called from one of the client's own
        handlers (or a task one started), it starts the close and returns at once: the
        close waits for the handlers, that one included."""
        await self._close(timeout)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return await self._close(None, exc)

    async def _close(self, timeout: float | None, exc: BaseException | None = None) -> bool:
        """:meth:`close`, or leaving the block with ``exc``; True when ``exc`` was the
        task group's own cancellation (a close from another task), which ended there."""
        # Only a cancellation is handed to the task group, for it to end its own; any
        # other exception leaves the block as it came, not in an exception group.
        cancelled = exc if isinstance(exc, anyio.get_cancelled_exc_class()) else None
        handler = (delivering.get() or (None,))[0] is self._services
        if self._state != "open":
            if self._stack is not None and self._owns():
                # What a close from another task left to this one, once that close is
                # done with the subscriptions (it cancels the task group then).
                if self._closing is not None:
                    try:
                        with anyio.CancelScope(shield=True):
                            await self._closing.wait()
                    except BaseException:  # an asyncio cancel goes through the shield
                        await self._release(cancelled)
                        raise
                return await self._release(cancelled)
            if self._state == "closing" and self._closing is not None and not handler:
                await self._closing.wait()  # another task closes it: returns once closed
            elif self._state in ("new", "opening"):
                self._state = "closed"
            return False
        if handler and self._tg is not None:
            # One of this client's own handlers: the close waits for the handlers to
            # finish, so it runs in a task of its own, and this returns at once.
            if not self._owner_running():
                raise LifecycleError(
                    f"{self._describe()} cannot be closed from its own handler once the "
                    "task that entered it has ended (leaving its task group would wait "
                    "for the handler); close it from another task"
                )
            self._state = "closing"
            self._closing = closing = anyio.Event()
            self._tg.start_soon(self._close_apart, timeout, closing)
            return False
        self._state = "closing"
        self._closing = closing = anyio.Event()
        return await self._shut(timeout, closing, cancelled)

    async def _shut(
        self, timeout: float | None, closing: anyio.Event, cancelled: BaseException | None = None
    ) -> bool:
        """Close the subscriptions, cancel the task group and, in the task that entered
        the client, release the rest; True as :meth:`_close` says."""
        try:
            with anyio.CancelScope(shield=True):
                # All at once, so shutdown takes one timeout, not one per subscription.
                async with anyio.create_task_group() as tg:
                    for sub in list(self._subscriptions.values()):
                        tg.start_soon(sub.close, timeout)
        finally:
            self._state = "closed"
            closing.set()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            ended = False
            if self._owns():
                ended = await self._release(cancelled)
            elif not self._owner_running():
                await self._orphaned()
        return ended

    async def _close_apart(self, timeout: float | None, closing: anyio.Event) -> None:
        """The close a handler asked for, in a task of the client's task group (whose
        context came from the handler's, so it is cleared first)."""
        delivering.set(None)
        await self._shut(timeout, closing)

    async def _opened(self) -> None:
        """Mark the client open, as ``__aenter__`` ends. A close that came while it was
        opening (and returned: there was nothing open to close yet) wins: what was
        entered is closed again and ``ClosedError`` raised, so the client never serves
        after a close returned."""
        if self._state == "closed":
            await self._release()
            raise ClosedError(f"{self._describe()} was closed while it opened")
        self._state = "open"

    def _hold(self, stack: AsyncExitStack) -> None:
        """Keep ``stack`` (what the client entered) to close, and the task entering it
        as the one that can: called by ``__aenter__`` once everything is entered."""
        self._stack = stack
        self._owner = anyio.get_current_task().id

    def _owns(self) -> bool:
        """Whether this task entered the client, so that it can close the stack."""
        return self._owner is None or self._owner == anyio.get_current_task().id

    def _owner_running(self) -> bool:
        return any(task.id == self._owner for task in anyio.get_running_tasks())

    async def _orphaned(self) -> None:
        """Close what the client entered although the task that entered it has ended
        (entered without ``async with``, say in a start-up hook): everything but the
        task group closes, and ``LifecycleError`` says why the task group could not."""
        try:
            await self._release()
        except RuntimeError as exc:  # anyio: a task group left from another task
            raise LifecycleError(
                f"{self._describe()} is closed, but the task that entered it ended "
                "without leaving it, and only that task can leave its task group; open "
                f"it with 'async with {self._usage()}' in a task that lives until it "
                "closes"
            ) from exc

    async def _release(self, cancelled: BaseException | None = None) -> bool:
        """Close the stack (the task group first, given ``cancelled``), then
        :meth:`_disconnect`; True when the task group ended ``cancelled``."""
        stack, self._stack = self._stack, None
        try:
            if stack is None:
                return False
            if cancelled is None:
                await stack.aclose()
                return False
            return bool(await stack.__aexit__(type(cancelled), cancelled, cancelled.__traceback__))
        finally:
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
