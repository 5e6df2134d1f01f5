"""The Mesh: the composition root that owns connectors, subscriptions and their tasks.

``Mesh`` is also the embedded client: ``eventmesh.connect()`` with no address returns
one. Every task it starts belongs to its task group, which lives exactly as long as the
``async with`` block.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import anyio.abc
import anyio.to_thread

from eventmesh._client import Client
from eventmesh._dedupe import Deduper, DuplicateWindow
from eventmesh._imports import needs_extra
from eventmesh._requests import Requests
from eventmesh.config import (
    MeshConfig,
    SubscriptionConfig,
    TracingConfig,
    convert,
    load_config,
)
from eventmesh.connectors.base import Connector, StartPosition
from eventmesh.connectors.registry import load_connector
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.delivery.services import Services
from eventmesh.errors import (
    ClosedError,
    ConfigError,
    EventValidationError,
    LifecycleError,
    LimitExceededError,
    RejectedError,
)
from eventmesh.event import Event
from eventmesh.functions.function import Function
from eventmesh.functions.process import check_not_bootstrapping
from eventmesh.functions.runtime import FunctionRuntime
from eventmesh.observability.metrics import FunctionFigures, MeshMetrics, SubscriptionFigures
from eventmesh.pipeline.compile import compile_pipeline
from eventmesh.subscription import Subscription
from eventmesh.typing import Filter, Handler, Transform

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import TracerProvider

    from eventmesh.deadletters import DeadLetters
    from eventmesh.delivery.webhook import WebhookSession
    from eventmesh.functions.runner import FunctionRunner
    from eventmesh.observability.tracing import Tracing

__all__ = ["Mesh"]

log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


class Mesh(Client):
    """An event mesh running in this process.

    ``config`` is a :class:`MeshConfig`, a mapping shaped like the YAML file, or a path
    to one; None gives one in-memory connector. ``connectors`` supplies ready connector
    instances by name (they replace those the config would build). ``tracer_provider``
    turns tracing on with an OpenTelemetry provider the caller owns (instead of the one
    ``tracing:`` builds); ``span_processor`` turns it on with the mesh's own provider,
    as ``tracing:`` configures it, its spans going to that processor instead of OTLP
    (the mesh shuts it down when it closes). docs/operations.md describes the spans.
    ``functions`` are
    functions declared in code (``Function.declare``), run with those of the config's
    ``functions:`` (docs/functions.md).
    """

    def __init__(
        self,
        config: MeshConfig | Mapping[str, Any] | str | Path | None = None,
        *,
        connectors: Mapping[str, Connector] | None = None,
        tracer_provider: TracerProvider | None = None,
        span_processor: SpanProcessor | None = None,
        functions: Sequence[Function] = (),
    ) -> None:
        if tracer_provider is not None and span_processor is not None:
            raise ConfigError(
                "give the mesh a tracer_provider or a span_processor, not both: a "
                "span_processor goes to the mesh's own provider"
            )
        self.config = load_config(config)
        self._declared: list[Function] = [Function(spec) for spec in self.config.functions]
        self._declared.extend(functions)
        self._functions: FunctionRuntime | None = None
        self._tracer_provider = tracer_provider
        self._span_processor = span_processor
        self._tracing: Tracing | None = None
        self._services: Services[Subscription] | None = None
        """What the mesh's subscriptions and functions use of it (made on entering)."""
        self.metrics: MeshMetrics | None = None
        """The mesh's metrics (None with ``metrics.enabled: false``)."""
        if self.config.metrics.enabled:
            self.metrics = MeshMetrics(
                subscriptions=self._figures,
                functions=self._function_figures,
                released=self._released,
                deduplicated=self._dedupe_counts,
                requests=self._request_counts,
                connector_for=self.config.connector_for,
                max_label_sets=self.config.metrics.max_label_sets,
            )
        self._connectors: dict[str, Connector] = dict(connectors or {})
        for name, spec in self.config.connectors.items():
            if name not in self._connectors:
                cls = load_connector(spec.type)
                self._connectors[name] = cls(spec.config, name=name)
        self._dedupers: dict[str, Deduper] = {
            topic: Deduper(topic, spec.dedupe)
            for topic, spec in self.config.topics.items()
            if spec.dedupe is not None
        }
        """The topics with ``dedupe:`` and their windows (docs/delivery.md)."""
        self._routes: dict[str, Connector] = {}
        """Each topic admitted (named well, allowed by its connector), with its connector:
        at most ``limits.max_topics`` of them, the mesh's only per-topic state besides
        the metrics' counts of the same topics."""
        self._subscriptions: dict[int, Subscription] = {}
        self._held: weakref.WeakSet[Subscription] = weakref.WeakSet()
        """Subscriptions made and not closed (started or not), counted against
        ``limits.max_subscriptions``; one made and dropped unstarted leaves with its object."""
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._compiler: anyio.CapacityLimiter | None = None
        """One worker thread compiles specs from the network at a time (made on first
        use, in the loop): each holds the interpreter lock for most of its compile, and
        forty at once left the loop a fortieth of it (seconds behind)."""
        self._webhooks: WebhookSession | None = None
        self._requests: Requests | None = None  # made at the first request()
        self._state = "new"

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise LifecycleError("a Mesh can be entered once; create a new one")
        check_not_bootstrapping("a Mesh")
        self._state = "opening"
        async with AsyncExitStack() as stack:
            self._tracing = self._new_tracing()
            if self._tracing is not None:
                stack.push_async_callback(self._stop_tracing, self._tracing)
            for connector in self._connectors.values():
                await stack.enter_async_context(connector)
            subs = self.config.subscriptions
            posts = any(s.sink is not None and s.sink.webhook for s in subs)
            if posts or any(f.spec.url for f in self._declared):  # webhooks or HTTP functions
                # Before the task group, so it closes after the last delivery ends.
                self._webhooks = await stack.enter_async_context(self._new_webhook_session())
            self._services = Services(
                publish=self._publish_internal,
                task_group=lambda: self._task_group,
                register=self._register,
                unregister=self._unregister,
                tracing=self._tracing,
                measure=self.metrics is not None,
            )
            # Before the task group, so worker pools stop after the last delivery ended
            # (and outside its cancelled scope).
            self._functions = await stack.enter_async_context(
                FunctionRuntime(
                    self,
                    self._declared,
                    self._services,
                    filter_limits=self.config.limits.filters,
                )
            )
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._hold(stack.pop_all())
        await self._opened()
        try:
            await self._open_dedupe()
            for sub in self.config.subscriptions:
                await self._start_configured(sub)
            await self._functions.start()
        except BaseException as exc:
            # Raised here, outside the task group, so the caller gets the error itself
            # and not an exception group around it. (close() shields what needs it; a
            # scope around it would sit above the task group's and break its exit.) A
            # close from another task while this one started cancelled the task group:
            # that ends there, and the caller learns the mesh is closed.
            if await self._close(None, exc):
                raise ClosedError("the mesh was closed while it started") from None
            raise
        return self

    @property
    def _task_group(self) -> anyio.abc.TaskGroup:
        self._check_open()
        assert self._tg is not None
        return self._tg

    def _describe(self) -> str:
        return "the mesh"

    def _usage(self) -> str:
        return "Mesh(...) as mesh"

    # -- routing -------------------------------------------------------------------------

    def connector(self, topic: str, *, admit: bool = True) -> Connector:
        """The connector that stores ``topic``.

        A topic is checked the first time the mesh sees it, and the verdict kept: a name
        longer than ``limits.max_name_length`` or one its connector refuses
        (:meth:`Connector.check_topic`) raises ``RejectedError`` naming the rule; a new
        topic beyond ``limits.max_topics`` raises ``LimitExceededError``. Names refused
        are not remembered, so they cost no memory. With ``admit=False`` (to read what a
        topic holds, not to use it) a topic the mesh has not seen is checked the same way
        but neither kept nor counted against ``limits.max_topics``.
        """
        connector = self._routes.get(topic)
        if connector is None:
            connector = self._admit(topic, keep=admit)
        return connector

    def _admit(self, topic: str, *, keep: bool = True) -> Connector:
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"a topic name must be a non-empty string, got {topic!r}")
        limits = self.config.limits
        if len(topic) > limits.max_name_length:
            raise RejectedError(
                f"topic name {topic[:40]!r}... is {len(topic)} characters, more than "
                f"limits.max_name_length ({limits.max_name_length}) allows; use a shorter name"
            )
        connector = self._connectors[self.config.connector_for(topic)]
        connector.check_topic(topic)
        if not keep:
            return connector
        if len(self._routes) >= limits.max_topics:
            raise LimitExceededError(
                f"topic {topic!r} would be topic number {len(self._routes) + 1} of this mesh, "
                f"more than limits.max_topics ({limits.max_topics}) allows; reuse topics "
                "(a topic per entity belongs in an attribute such as subject) or raise the "
                "limit",
                key="limits.max_topics",
            )
        self._routes[topic] = connector
        return connector

    def dead_letters(self, topic: str) -> DeadLetters:
        """Browse dead-letter topic ``topic`` and replay what it holds (docs/delivery.md,
        "Dead letters: browse and replay")."""
        from eventmesh.deadletters import MeshDeadLetters

        return MeshDeadLetters(self, topic)

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

    async def publish(self, topic: str, events: Event | Sequence[Event]) -> list[str]:
        """Store one event or a list of events on ``topic``.

        Returns the ids of the events, in order, once the topic's connector has stored
        every one of them; raises ``PublishError`` otherwise (then none may be assumed
        stored, though some may be).
        """
        self._check_open()
        batch = _as_batch(events)
        await self._store(topic, batch)
        return [event.id for event in batch]

    async def request(self, topic: str, event: Event, *, timeout: float | None = None) -> Event:
        """Publish ``event`` on ``topic`` as a request and return the first reply.

        The request carries ``correlationid`` (its own, else its id) and ``replyto``
        (this mesh's reply inbox); a subscription handler or function that returns an
        Event for it answers it. Waits ``timeout`` seconds (default 30, at most
        ``limits.max_request_timeout``), then raises ``RequestTimeoutError``; beyond
        ``limits.max_pending_requests`` waiting requests raises ``LimitExceededError``.
        Replies that come too late are counted and dropped (docs/sdk.md, Request-reply).
        """
        self._check_open()
        if self._requests is None:
            limits = self.config.limits
            self._requests = Requests(
                self,
                max_pending=limits.max_pending_requests,
                max_timeout=float(limits.max_request_timeout),
            )
            assert self._stack is not None
            self._stack.callback(self._requests.close)
        return await self._requests.request(topic, event, timeout)

    async def _publish_internal(self, topic: str, events: Event | Sequence[Event]) -> None:
        """Store what the mesh publishes on its own behalf (the replies of handlers and
        functions, and dead letters), checked as :meth:`publish` checks, but also while
        the mesh closes: the subscriptions draining then must be able to settle their
        events. Once the connector itself is closed it raises ``ClosedError``; the
        dispatcher then leaves the event unacked, to be delivered again after a restart."""
        await self._store(topic, _as_batch(events))

    async def _store(self, topic: str, batch: Sequence[Event]) -> None:
        connector = self.connector(topic)
        if self._dedupers and (deduper := self._dedupers.get(topic)) is not None:
            await deduper.store(batch, lambda fresh: self._write(topic, connector, fresh))
        else:
            await self._write(topic, connector, batch)

    async def _write(self, topic: str, connector: Connector, batch: Sequence[Event]) -> None:
        if self._tracing is None:
            await connector.publish(topic, batch)
        else:
            name = self.config.connector_for(topic)
            await self._tracing.publish(topic, name, batch, connector.publish)
        if self.metrics is not None:
            counts = self.metrics.published
            counts[topic] = counts.get(topic, 0) + len(batch)

    async def _open_dedupe(self) -> None:
        """Tell each de-duplicated topic's connector its window (when it keeps one of its
        own) and rebuild the window from what the connector still holds."""
        for topic, deduper in self._dedupers.items():
            connector = self.connector(topic)
            if isinstance(connector, DuplicateWindow):
                connector.duplicate_window(topic, deduper.window)
            await deduper.load(connector)

    def _dedupe_counts(self) -> list[tuple[str, int, int]]:
        """Events each de-duplicated topic dropped and keys it forgot, for the metrics."""
        return [(d.topic, d.duplicates, d.forgotten) for d in self._dedupers.values()]

    # -- observability -------------------------------------------------------------------

    def _new_tracing(self) -> Tracing | None:
        settings = self.config.tracing
        if self._tracer_provider is None and self._span_processor is None and not settings.on:
            return None
        with needs_extra("tracing (the tracing: config)"):
            return self._traced(settings)

    def _traced(self, settings: TracingConfig) -> Tracing:
        from eventmesh.observability.tracing import Tracing

        if self._tracer_provider is not None:
            if settings.sample_ratio < 1.0:
                log.warning(
                    "tracing.sample_ratio %s is drawn before the sampler of the "
                    "tracer_provider given to the mesh: new traces are sampled by both; "
                    "leave the ratio at 1 to let that sampler decide alone",
                    settings.sample_ratio,
                )
            return Tracing(self._tracer_provider, sample_ratio=settings.sample_ratio)
        if self._span_processor is not None:
            return Tracing.with_processor(
                self._span_processor,
                sample_ratio=settings.sample_ratio,
                service_name=settings.service_name,
            )
        return Tracing.with_otlp(
            endpoint=settings.endpoint,
            headers=settings.headers,
            sample_ratio=settings.sample_ratio,
            service_name=settings.service_name,
            timeout=float(settings.timeout),
        )

    @staticmethod
    async def _stop_tracing(tracing: Tracing) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(tracing.shutdown)

    def _figures(self) -> list[SubscriptionFigures]:
        """What each running subscription reports to the metrics at a scrape."""
        return [
            SubscriptionFigures(
                subscription=sub.name,
                topic=sub.topic,
                connector=self.config.connector_for(sub.topic),
                counts=sub.stats.as_dict(),
                in_flight=sub.in_flight,
                lag=sub.lag,
                latency=sub.latency,
            )
            for sub in list(self._subscriptions.values())
        ]

    def _released(self) -> list[tuple[str, int]]:
        """Events each topic's retention released before its groups read them, for the
        metrics."""
        return [
            item for connector in self._connectors.values() for item in connector.released().items()
        ]

    def _request_counts(self) -> dict[str, int]:
        """The request-reply counts for the metrics (none before the first request)."""
        requests = self._requests
        if requests is None:
            return {}
        return {**requests.counts, "pending": requests.pending}

    def _function_figures(self) -> list[FunctionFigures]:
        """What each running function reports to the metrics at a scrape."""
        return [
            FunctionFigures(
                function=runner.name,
                invocations=runner.stats.invocations,
                errors=runner.stats.failures,
                timeouts=runner.stats.timeouts,
                duration=runner.duration,
            )
            for runner in self.functions
        ]

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
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"name must be a string or None, got {name!r}")
        where = f"subscribe({topic!r}, group={group!r})"
        limits = self.config.limits
        for key, value in (("group", group), ("name", name)):
            if value is not None and len(value) > limits.max_name_length:
                raise ConfigError(
                    f"the {key} is {len(value)} characters, more than "
                    f"limits.max_name_length ({limits.max_name_length}) allows",
                    key=f"{where}.{key}",
                )
        if len(self._held) >= limits.max_subscriptions:
            raise LimitExceededError(
                f"the mesh holds {len(self._held)} subscriptions, as many as "
                f"limits.max_subscriptions allows; close one first or raise the limit",
                key="limits.max_subscriptions",
            )
        policy = _policy(delivery, where)
        compiled_filter, compiled_transform = compile_pipeline(
            filter, transform, where=where, limits=self.config.limits.filters
        )
        connector = self.connector(topic)
        # The topics this subscription may publish to are admitted now, so a name their
        # connector refuses or the topic bound fails the subscribe, not a delivery.
        dead_letter = policy.dead_letter_topic(topic, group)
        for extra, key in ((dead_letter, "delivery.dead_letter"), (reply_to, "reply_to")):
            if extra is not None:
                try:
                    self.connector(extra)
                except RejectedError as exc:
                    raise RejectedError(f"{where}: the {key} topic is refused: {exc}") from exc
        consumer = connector.subscribe(topic, group, start=start)
        assert self._services is not None  # made on entering, and subscribe checked that
        subscription = Subscription(
            self._services,
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
        self._held.add(subscription)
        return subscription

    async def compile_specs(
        self, topic: str, group: str, filter: Any = None, transform: Any = None
    ) -> tuple[Filter | None, Transform | None]:
        """Compile filter and transform specs in a worker thread, with the errors and
        limits :meth:`subscribe` would give: for specs from the network, whose compile
        (a few ms up to ``limits.filters.max_size``) must not hold the event loop; one
        at a time, so that many at once still leave the loop its share. Pass
        the callables it returns to :meth:`subscribe`. A ``call`` step is refused: it
        would import and run any Python function the caller names, in this process, so
        only the config file (or code using the mesh) may name one."""
        if filter is None and transform is None:
            return None, None
        where = f"subscribe({topic!r}, group={group!r})"
        _refuse_code(transform, where=f"{where}.transform")
        limits = self.config.limits.filters
        if self._compiler is None:
            self._compiler = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(
            lambda: compile_pipeline(filter, transform, where=where, limits=limits),
            limiter=self._compiler,
        )

    async def _start_configured(self, sub: SubscriptionConfig) -> None:
        sink = sub.sink
        assert sink is not None  # the config check refuses a subscription without one
        where = f"subscription {sub.name!r}"
        handler: Handler
        if sink.webhook is not None:
            from eventmesh.delivery.webhook import WebhookSink

            try:
                handler = WebhookSink.from_config(sink.webhook, sink, session=self.webhooks)
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

    # -- functions -----------------------------------------------------------------------

    def function(
        self, topic: str, *, name: str | None = None, **options: Any
    ) -> Callable[[_F], _F]:
        """Declare the decorated callable a function triggered by events of ``topic``.

        Sugar for ``Mesh(functions=[Function.declare(fn, topic=topic, ...)])``: the
        options are those of ``Function.declare`` (``filter``, ``reply_to``,
        ``concurrency``, ``timeout``, ``batch``, ...). Declare before entering the mesh;
        the decorated callable is returned unchanged.
        """
        if self._state != "new":
            raise LifecycleError(
                "declare functions before entering the mesh: @mesh.function(...) on a Mesh "
                "that is not open yet, or Mesh(functions=[...])"
            )

        def declare(fn: _F) -> _F:
            declared = Function.declare(fn, topic=topic, name=name, **options)
            if any(f.name == declared.name for f in self._declared):
                raise ConfigError(f"a function named {declared.name!r} is already declared")
            self._declared.append(declared)
            return fn

        return declare

    @property
    def functions(self) -> list[FunctionRunner]:
        """The running functions (empty until the mesh is open), with state and stats."""
        return self._functions.runners if self._functions is not None else []

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

        with needs_extra("a webhook sink or HTTP function"):
            from eventmesh.delivery.webhook import WebhookSession

        settings = self.config.server.webhook
        hosts = {
            urlsplit(sub.sink.webhook).hostname or ""
            for sub in self.config.subscriptions
            if sub.sink is not None and sub.sink.webhook
        }
        hosts |= {urlsplit(f.spec.url).hostname or "" for f in self._declared if f.spec.url}
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
        self._held.discard(subscription)


def _as_batch(events: Event | Sequence[Event]) -> Sequence[Event]:
    """The events to publish as a sequence; ``EventValidationError`` for anything else."""
    if type(events) is Event:
        return (events,)
    if isinstance(events, list | tuple):
        for i, event in enumerate(events):
            if type(event) is not Event:
                raise EventValidationError(
                    f"item {i} of the events is a {type(event).__name__}, not an "
                    "eventmesh.Event (convert SDK events with Event.from_cloudevent)"
                )
        return events
    if isinstance(events, Event):
        return (events,)
    raise EventValidationError(
        f"publish takes an eventmesh.Event or a list of them, got {type(events).__name__}"
    )


def _policy(delivery: DeliveryPolicy | Mapping[str, Any] | None, where: str) -> DeliveryPolicy:
    if delivery is None:
        return DeliveryPolicy()
    if isinstance(delivery, DeliveryPolicy):
        return delivery
    return convert(delivery, DeliveryPolicy, key=f"{where}.delivery")


def _refuse_code(transform: Any, *, where: str) -> None:
    """ConfigError naming the first ``call`` step of a transform spec from the network
    (a list of steps, or one step as a mapping), before anything is imported."""
    steps = [transform] if isinstance(transform, Mapping) else transform
    if not isinstance(steps, list):
        return  # not a chain: compile_pipeline says what is wrong with it
    for i, step in enumerate(steps):
        if isinstance(step, Mapping) and "call" in step:
            raise ConfigError(
                "a 'call' step imports and runs Python code inside the sidecar, so only "
                "the sidecar's config file may name one; over the API use the other step "
                "kinds (set, rename, remove, constant, template, original), or put the "
                "subscription in the config file",
                key=f"{where}[{i}].call",
            )
