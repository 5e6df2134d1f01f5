"""The one client API, whatever the transport (embedded mesh or a remote sidecar)."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from eventmesh.connectors.base import StartPosition
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.event import Event

if TYPE_CHECKING:
    from eventmesh.subscription import Handler, Subscription

__all__ = ["Client"]


class Client(abc.ABC):
    """Publish and subscribe. Use it as an async context manager.

    Every method raises ``ClosedError`` after the client is closed and
    ``LifecycleError`` before it is entered.
    """

    @abc.abstractmethod
    async def __aenter__(self) -> Self:
        """Open the client (connect, or start the embedded mesh)."""

    @abc.abstractmethod
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client: subscriptions finish the events in hand, then stop."""

    @abc.abstractmethod
    async def publish(self, topic: str, events: Event | Sequence[Event]) -> None:
        """Store events on a topic; returns once stored, raises ``PublishError`` if not;
        ``EventValidationError`` for something that is not a valid event."""

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
