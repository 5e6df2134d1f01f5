"""A blocking facade over the async client, for scripts and notebooks.

The mesh runs on an event loop in a background thread (an anyio blocking portal); each
call here waits for its result there::

    with eventmesh.connect_blocking() as mesh:
        mesh.publish("orders", eventmesh.Event(type="t", source="/s"))
        with mesh.subscribe("orders", group="billing", start="earliest") as sub:
            delivery = sub.receive(timeout=5)
            delivery.ack()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from eventmesh._client import Client
from eventmesh._loop import backend_options
from eventmesh.client.connect import connect
from eventmesh.config import MeshConfig
from eventmesh.errors import ClosedError, LifecycleError
from eventmesh.event import Event
from eventmesh.subscription import Delivery, Subscription

if TYPE_CHECKING:
    from eventmesh.deadletters import BlockingDeadLetters

__all__ = ["BlockingClient", "BlockingDelivery", "BlockingSubscription", "connect_blocking"]


def connect_blocking(
    target: str | None = None,
    *,
    config: MeshConfig | Mapping[str, Any] | str | Path | None = None,
    token: str | None = None,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> BlockingClient:
    """The blocking twin of :func:`eventmesh.connect` (the same arguments); use it in a
    ``with`` block."""
    return BlockingClient(
        connect(
            target,
            config=config,
            token=token,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            data_dir=data_dir,
        )
    )


class BlockingDelivery:
    """A delivery whose ack and nack block until done."""

    def __init__(self, portal: Callable[[], BlockingPortal], delivery: Delivery) -> None:
        self._portal = portal  # the client's portal, or ClosedError once it closed
        self._delivery = delivery
        self.event = delivery.event

    @property
    def attempt(self) -> int:
        """1 on the first delivery of this event to this group, then 2, 3, ..."""
        return self._delivery.attempt

    def ack(self) -> None:
        """The event is handled."""
        self._portal().call(self._delivery.ack)

    def nack(self, error: BaseException | str | None = None) -> None:
        """The event failed: retried under the policy, or dead-lettered."""
        self._portal().call(self._delivery.nack, error)


class BlockingSubscription:
    """A subscription read with blocking calls."""

    def __init__(self, portal: Callable[[], BlockingPortal], subscription: Subscription) -> None:
        self._portal = portal  # the client's portal, or ClosedError once it closed
        self._subscription = subscription

    def __enter__(self) -> Self:
        self._portal().call(self._subscription.start)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Leave the group; unacked deliveries go back to it. Idempotent: once the
        client closed, its subscriptions are closed already."""
        try:
            portal = self._portal()
        except ClosedError:
            return
        portal.call(self._subscription.close)

    def receive(self, timeout: float | None = None) -> BlockingDelivery | None:
        """The next delivery, or None when ``timeout`` seconds pass first."""

        async def next_one() -> Delivery | None:
            # A loop of its own for each call: a timeout ends the loop, and the next
            # call starts another where it stopped (what was fetched waits on the
            # subscription, not in the loop).
            deliveries = aiter(self._subscription)
            try:
                with anyio.move_on_after(timeout):
                    return await anext(deliveries, None)
                return None
            finally:
                await deliveries.aclose()  # type: ignore[attr-defined]

        delivery = self._portal().call(next_one)
        return None if delivery is None else BlockingDelivery(self._portal, delivery)

    def __iter__(self) -> Iterator[BlockingDelivery]:
        while not self._subscription.closed:
            delivery = self.receive()
            if delivery is None:
                return
            yield delivery


class BlockingClient:
    """Blocking publish and subscribe over any :class:`Client`."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None

    def __enter__(self) -> Self:
        if self._stack is not None:
            raise LifecycleError("this blocking client is already open")
        with ExitStack() as stack:
            self._portal = stack.enter_context(start_blocking_portal("asyncio", backend_options()))
            stack.enter_context(self._portal.wrap_async_context_manager(self._client))
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(exc_type, exc, tb)

    @property
    def portal(self) -> BlockingPortal:
        """The portal to the loop the client runs on."""
        if self._portal is None or self._stack is None:
            raise ClosedError("the blocking client is not open; use it in a 'with' block")
        return self._portal

    def publish(self, topic: str, events: Event | Sequence[Event]) -> list[str]:
        """Store events on ``topic``; returns their ids, in order, once they are stored."""
        return self.portal.call(self._client.publish, topic, events)

    def request(self, topic: str, event: Event, *, timeout: float | None = None) -> Event:
        """Publish ``event`` as a request; the first reply (as :meth:`Client.request`)."""
        return self.portal.call(partial(self._client.request, topic, event, timeout=timeout))

    def dead_letters(self, topic: str) -> BlockingDeadLetters:
        """As :meth:`Client.dead_letters`, its calls blocking."""
        from eventmesh.deadletters import BlockingDeadLetters

        return BlockingDeadLetters(self.portal, self._client.dead_letters(topic))

    def subscribe(self, topic: str, group: str, **options: Any) -> BlockingSubscription:
        """As :meth:`Client.subscribe`; use the result in a ``with`` block.

        A ``handler`` given here runs on the client's loop (plain functions in its
        worker threads), so it must not call back into this blocking client.
        """

        async def make() -> tuple[Subscription]:
            # A tuple, because the portal would await a Subscription (it is awaitable).
            return (self._client.subscribe(topic, group, **options),)

        (subscription,) = self.portal.call(make)
        return BlockingSubscription(lambda: self.portal, subscription)
