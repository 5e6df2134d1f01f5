"""The Mesh: the composition root that owns connectors, subscriptions and their tasks.

``Mesh`` is also the embedded client: ``eventmesh.connect()`` with no address returns
one. Every task it starts belongs to its task group, which lives exactly as long as the
``async with`` block.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.abc

from eventmesh.client.base import Client
from eventmesh.config import MeshConfig, SubscriptionConfig, convert, load_config
from eventmesh.connectors.base import Connector, StartPosition
from eventmesh.connectors.registry import load_connector
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.errors import ClosedError, ConfigError, EventValidationError, LifecycleError
from eventmesh.event import Event
from eventmesh.pipeline.compile import compile_pipeline
from eventmesh.subscription import Handler, Subscription

if TYPE_CHECKING:
    from eventmesh.delivery.webhook import WebhookSession

__all__ = ["Mesh"]

log = logging.getLogger(__name__)


class Mesh(Client):
    """An event mesh running in this process.

    ``config`` is a :class:`MeshConfig`, a mapping shaped like the YAML file, or a path
    to one; None gives one in-memory connector. ``connectors`` supplies ready connector
    instances by name (they replace those the config would build).
    """

    def __init__(
        self,
        config: MeshConfig | Mapping[str, Any] | str | Path | None = None,
        *,
        connectors: Mapping[str, Connector] | None = None,
    ) -> None:
        self.config = load_config(config)
        self._connectors: dict[str, Connector] = dict(connectors or {})
        for name, spec in self.config.connectors.items():
            if name not in self._connectors:
                cls = load_connector(spec.type)
                self._connectors[name] = cls(spec.config, name=name)
        self._routes: dict[str, Connector] = {}
        self._subscriptions: dict[int, Subscription] = {}
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._webhooks: WebhookSession | None = None
        self._state = "new"

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise LifecycleError("a Mesh can be entered once; create a new one")
        self._state = "opening"
        async with AsyncExitStack() as stack:
            for connector in self._connectors.values():
                await stack.enter_async_context(connector)
            if any(s.sink is not None and s.sink.webhook for s in self.config.subscriptions):
                # Before the task group, so it closes after the last delivery ends.
                self._webhooks = await stack.enter_async_context(self._new_webhook_session())
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._stack = stack.pop_all()
        self._state = "open"
        try:
            for sub in self.config.subscriptions:
                await self._start_configured(sub)
        except BaseException:
            # Raised here, outside the task group, so the caller gets the error itself
            # and not an exception group around it. (close() shields what needs it; a
            # scope around it would sit above the task group's and break its exit.)
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, timeout: float | None = None) -> None:
        """Stop every subscription, then close the connectors.

        Subscriptions finish the events in hand for up to ``timeout`` seconds (30 by
        default), all at the same time; what is not acked by then is delivered again.
        """
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

    @property
    def _task_group(self) -> anyio.abc.TaskGroup:
        self._check_open()
        assert self._tg is not None
        return self._tg

    def _check_open(self) -> None:
        if self._state != "open":
            if self._state in ("closing", "closed"):
                raise ClosedError("the mesh is closed")
            raise LifecycleError("the mesh is not open; use it as 'async with Mesh(...) as mesh'")

    # -- routing -------------------------------------------------------------------------

    def connector(self, topic: str) -> Connector:
        """The connector that stores ``topic``."""
        connector = self._routes.get(topic)
        if connector is None:
            if not isinstance(topic, str) or not topic:
                raise ConfigError(f"a topic name must be a non-empty string, got {topic!r}")
            connector = self._routes[topic] = self._connectors[self.config.connector_for(topic)]
        return connector

    @property
    def connectors(self) -> Mapping[str, Connector]:
        """Every connector of the mesh, by name."""
        return self._connectors

    @property
    def topics(self) -> list[str]:
        """The topics published to or subscribed since the mesh started."""
        return list(self._routes)

    @property
    def subscriptions(self) -> list[Subscription]:
        """The subscriptions currently open."""
        return list(self._subscriptions.values())

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, topic: str, events: Event | Sequence[Event]) -> None:
        """Store one event or a list of events on ``topic``.

        Returns once the topic's connector has stored every one of them; raises
        ``PublishError`` otherwise (then none may be assumed stored, though some may be).
        """
        self._check_open()
        if type(events) is Event:
            batch: Sequence[Event] = (events,)
        elif isinstance(events, list | tuple):
            batch = events
            for i, event in enumerate(batch):
                if type(event) is not Event:
                    raise EventValidationError(
                        f"item {i} of the events is a {type(event).__name__}, not an "
                        "eventmesh.Event (convert SDK events with Event.from_cloudevent)"
                    )
        elif isinstance(events, Event):
            batch = (events,)
        else:
            raise EventValidationError(
                f"publish takes an eventmesh.Event or a list of them, got {type(events).__name__}"
            )
        await self.connector(topic).publish(topic, batch)

    async def _publish_one(self, topic: str, event: Event) -> None:
        await self.connector(topic).publish(topic, (event,))

    # -- subscribing ---------------------------------------------------------------------

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
        """Subscribe to ``topic`` as a member of consumer ``group``.

        Without ``handler``, iterate the subscription and ack each delivery. With one,
        the handler is called per event. ``filter`` and ``transform`` take the pipeline's
        specs (docs/filters.md) or Python callables; ``delivery`` a DeliveryPolicy or a
        mapping shaped like the config's ``delivery:``. With ``reply_to``, the Events a
        handler returns are published to that topic before the event is acked.
        """
        self._check_open()
        if not isinstance(group, str) or not group:
            raise ConfigError(f"group must be a non-empty string, got {group!r}")
        where = f"subscribe({topic!r}, group={group!r})"
        policy = _policy(delivery, where)
        compiled_filter, compiled_transform = compile_pipeline(filter, transform, where=where)
        consumer = self.connector(topic).subscribe(topic, group, start=start)
        return Subscription(
            self,
            name=name or f"{topic}/{group}",
            topic=topic,
            group=group,
            consumer=consumer,
            policy=policy,
            handler=handler,
            filter=compiled_filter,
            transform=compiled_transform,
            reply_to=reply_to,
        )

    async def _start_configured(self, sub: SubscriptionConfig) -> None:
        sink = sub.sink
        assert sink is not None  # the config check refuses a subscription without one
        where = f"subscription {sub.name!r}"
        handler: Handler
        if sink.webhook is not None:
            from eventmesh.delivery.webhook import WebhookSink

            try:
                handler = WebhookSink(
                    sink.webhook,
                    session=self.webhooks,
                    mode=sink.mode,
                    timeout=sink.timeout,
                    headers=sink.headers,
                    max_batch=sink.max_batch,
                    batch_window=sink.batch_window,
                )
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from exc
        else:
            assert sink.handler is not None  # the config check wants exactly one kind
            from eventmesh._imports import import_callable

            handler = import_callable(sink.handler, where=where)
        # The dispatcher's lanes (delivery.concurrency) bound the requests in flight.
        subscription = self.subscribe(
            sub.topic,
            sub.group_name,
            handler=handler,
            filter=sub.filter,
            transform=sub.transform,
            delivery=sub.delivery,
            start=sub.start,
            name=sub.name,
            reply_to=sub.reply_to,
        )
        await subscription.start()

    # -- webhooks ------------------------------------------------------------------------

    @property
    def webhooks(self) -> WebhookSession:
        """The HTTP client every webhook sink of this mesh POSTs through.

        One keep-alive pool of ``server.webhook.max_connections`` connections, which
        reach only addresses inside ``server.webhook.allowed_networks`` (checked after
        DNS resolution) or the hosts named by the configuration's webhook sinks. It is
        created with the mesh when the configuration has webhook sinks, else at first
        use, and closed with the mesh. A webhook given at run time is checked, then
        given a sink on this session::

            await mesh.webhooks.check_url(url)  # ConfigError when it may not be reached
            mesh.subscribe(topic, group, handler=WebhookSink(url, session=mesh.webhooks))
        """
        self._check_open()
        if self._webhooks is None:
            assert self._stack is not None
            session = self._new_webhook_session()
            self._stack.push_async_callback(session.close)
            self._webhooks = session
        return self._webhooks

    def _new_webhook_session(self) -> WebhookSession:
        from urllib.parse import urlsplit

        from eventmesh.delivery.webhook import WebhookSession

        settings = self.config.server.webhook
        hosts = {
            urlsplit(sub.sink.webhook).hostname or ""
            for sub in self.config.subscriptions
            if sub.sink is not None and sub.sink.webhook
        }
        return WebhookSession(
            allowed_networks=settings.allowed_networks,
            allowed_hosts=hosts - {""},
            max_connections=settings.max_connections,
            config_prefix="server.webhook.",
        )

    def _register(self, subscription: Subscription) -> None:
        self._subscriptions[id(subscription)] = subscription

    def _unregister(self, subscription: Subscription) -> None:
        self._subscriptions.pop(id(subscription), None)


def _policy(delivery: DeliveryPolicy | Mapping[str, Any] | None, where: str) -> DeliveryPolicy:
    if delivery is None:
        return DeliveryPolicy()
    if isinstance(delivery, DeliveryPolicy):
        return delivery
    return convert(delivery, DeliveryPolicy, key=f"{where}.delivery")
