"""OpenTelemetry tracing of the path of an event: publish, store, deliver, function.

The trace context travels inside the event (``traceparent``, ``tracestate``), so it
crosses every binding and connector without them knowing. Spans: ``publish <topic>``
(PRODUCER), ``store <topic>`` (CLIENT), ``deliver <subscription>`` (CONSUMER, around
the sink, so replies join the trace) and ``function <name>`` (INTERNAL). A mesh owns its
tracer provider; OpenTelemetry's global one is not used. See docs/operations.md,
'Traces'.

Design: sampling is decided once per publish call, and for a new trace the mesh draws
itself (``tracing.sample_ratio``), so an event left out costs a random number and no
OpenTelemetry code, whose unsampled span costs a hundred times that. With a provider
the mesh built, the deliver span is a :class:`~eventmesh.observability.spans.DeliverySpan`,
the same span at a fraction of the SDK's cost.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from eventmesh._version import __version__
from eventmesh.event import Event
from eventmesh.observability.propagation import (
    current_traceparent,
    transport_headers,
    transport_parent,
)
from eventmesh.observability.spans import QUIET_AT_START, DeliveryRecorder, DeliverySpan

__all__ = [
    "Tracing",
    "current_traceparent",
    "event_span_context",
    "format_traceparent",
    "transport_parent",
]

Store = Callable[[str, Sequence[Event]], Awaitable[None]]
"""A connector's publish: stores the events on the topic or raises."""

_propagator: Final = TraceContextTextMapPropagator()
_SYSTEM: Final = {"messaging.system": "eventmesh"}
_CHILD_FLAGS: Final = TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID


def format_traceparent(context: SpanContext) -> str:
    """The W3C ``traceparent`` value of ``context``."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def event_span_context(event: Event) -> SpanContext | None:
    """The span context in ``event``'s ``traceparent``/``tracestate``, None when it has
    none or it cannot be read."""
    extensions = event.extensions
    return parse_traceparent(extensions.get("traceparent"), extensions.get("tracestate"))


def parse_traceparent(value: object, state: object = None) -> SpanContext | None:
    """The remote span context a W3C ``traceparent`` (and ``tracestate``) value names,
    None when there is none or it cannot be read."""
    if not isinstance(value, str):
        return None
    if len(value) == 55 and value.startswith("00-"):
        # The version in use, read directly: the propagator's regular expressions cost
        # more than the rest of a sampled delivery's bookkeeping.
        try:
            trace_id = int(value[3:35], 16)
            span_id = int(value[36:52], 16)
            flags = int(value[53:55], 16)
        except ValueError:
            return None
        if value[35] != "-" or value[52] != "-" or min(trace_id, span_id) <= 0 or flags < 0:
            return None
        return SpanContext(
            trace_id,
            span_id,
            is_remote=True,
            trace_flags=TraceFlags(flags),
            trace_state=TraceState.from_header([state]) if isinstance(state, str) else None,
        )
    carrier = {"traceparent": value}
    if isinstance(state, str):
        carrier["tracestate"] = state
    context = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
    return context if context.is_valid else None


def _with_context(event: Event, traceparent: str, tracestate: str) -> Event:
    extensions = dict(event.extensions)
    extensions["traceparent"] = traceparent
    if tracestate:
        extensions["tracestate"] = tracestate
    else:
        extensions.pop("tracestate", None)
    # The event was checked when it was built and both values are valid string
    # extensions: a shallow copy given the new mapping skips checking every attribute
    # again (a third of the cost of Event.replace), once per event of a sampled publish.
    traced = copy.copy(event)
    msgspec.structs.force_setattr(traced, "extensions", extensions)
    return traced


def _new_span_id() -> int:
    # As the SDK's RandomIdGenerator: the random module's generator, reseeded in a
    # forked child.
    span_id = random.getrandbits(64)
    while not span_id:
        span_id = random.getrandbits(64)
    return span_id


def _event_attributes(event: Event) -> dict[str, Any]:
    return {"messaging.message.id": event.id, "cloudevents.event_type": event.type}


class Tracing:
    """The spans of one mesh, made by ``provider``'s tracer.

    ``owned``: the mesh built the provider and shuts it down (flushing the exporter)
    when it closes; a provider given to the mesh is left to its owner.
    ``sample_ratio``: the share of new traces the mesh keeps, drawing for each itself
    before the provider's sampler sees it (1: every one goes to the sampler).
    ``recorder``: for a provider the mesh built, where its delivery spans go
    (:mod:`eventmesh.observability.spans`); without one they are the SDK's spans.
    """

    def __init__(
        self,
        provider: trace.TracerProvider,
        *,
        owned: bool = False,
        sample_ratio: float = 1.0,
        recorder: DeliveryRecorder | None = None,
    ) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("eventmesh", __version__)
        self.owned = owned
        self.sample_ratio = sample_ratio
        self._recorder = recorder
        self.rng = random.Random()
        """The draw for new traces (seed it to make a run's sampling repeatable)."""

    def _keeps_new_trace(self) -> bool:
        return self.sample_ratio >= 1.0 or self.rng.random() < self.sample_ratio

    def _unsampled_context(self) -> NonRecordingSpan:
        """A span for a new trace the draw left out: valid and unsampled, so that what is
        published under it follows the decision instead of drawing again."""
        rng = self.rng
        context = SpanContext(rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, is_remote=False)
        return NonRecordingSpan(context)

    @classmethod
    def with_otlp(
        cls,
        *,
        endpoint: str | None,
        headers: Mapping[str, str],
        sample_ratio: float,
        service_name: str,
        timeout: float,
    ) -> Tracing:
        """Tracing that keeps ``sample_ratio`` of new traces (and whatever a sampled
        parent asks for) and exports through OTLP/HTTP in batches."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=endpoint, headers=dict(headers) or None, timeout=timeout
        )
        return cls.with_processor(
            BatchSpanProcessor(exporter), sample_ratio=sample_ratio, service_name=service_name
        )

    @classmethod
    def with_processor(
        cls, processor: SpanProcessor, *, sample_ratio: float, service_name: str
    ) -> Tracing:
        """Tracing with a provider of the mesh's own whose spans go to ``processor``. The
        mesh draws for new traces, so the provider's sampler keeps every root it is
        shown and follows the parent otherwise (``ParentBased(ALWAYS_ON)``); delivery
        spans need no sampler then, and are recorded by
        :class:`~eventmesh.observability.spans.DeliverySpan`."""
        limits = SpanLimits()
        provider: TracerProvider = TracerProvider(
            sampler=ParentBased(ALWAYS_ON),
            resource=Resource.create({"service.name": service_name}),
            span_limits=limits,
            shutdown_on_exit=False,
        )
        provider.add_span_processor(processor)
        recorder = None
        # The mesh records delivery spans itself for the SDK's own processors, which do
        # nothing at a span's start, and not when the SDK is disabled (OTEL_SDK_DISABLED:
        # no spans at all).
        if type(processor) in QUIET_AT_START and not isinstance(
            provider.get_tracer("eventmesh"), trace.NoOpTracer
        ):
            recorder = DeliveryRecorder(
                processor,
                resource=provider.resource,
                limits=limits,
                scope=InstrumentationScope("eventmesh", __version__),
            )
        return cls(provider, owned=True, sample_ratio=sample_ratio, recorder=recorder)

    def shutdown(self) -> None:
        """Flush and stop an owned provider (blocking: call it in a worker thread)."""
        if self.owned and isinstance(self.provider, TracerProvider):
            self.provider.shutdown()

    # -- publish and store ---------------------------------------------------------------

    async def publish(
        self, topic: str, connector: str, events: Sequence[Event], store: Store
    ) -> None:
        """Store ``events`` under a ``publish`` span (and a ``store`` span when sampled)."""
        parent = None
        links: list[Link] | None = None
        if not trace.get_current_span().get_span_context().is_valid:
            with_context = [e for e in events if "traceparent" in e.extensions]  # most: none
            carried = [c for c in map(event_span_context, with_context) if c is not None]
            if carried:
                first = carried[0]
                parent = trace.set_span_in_context(NonRecordingSpan(first))
                links = [Link(c) for c in carried[1:] if c != first] or None
            elif (transport := transport_headers()) is not None and (
                remote := parse_traceparent(*transport)
            ) is not None:
                parent = trace.set_span_in_context(NonRecordingSpan(remote))
            elif not self._keeps_new_trace():
                await store(topic, events)  # a new trace the draw left out: no span at all
                return
        span = self.tracer.start_span(
            f"publish {topic}", context=parent, kind=SpanKind.PRODUCER, links=links
        )
        context = span.get_span_context()
        if not context.trace_flags.sampled:  # the common case: no context to attach
            span.end()
            await store(topic, events)
            return
        with trace.use_span(span, end_on_exit=True):
            if span.is_recording():
                span.set_attributes(
                    {
                        **_SYSTEM,
                        "messaging.operation.type": "send",
                        "messaging.destination.name": topic,
                        "messaging.batch.message_count": len(events),
                        "eventmesh.connector": connector,
                    }
                )
                if len(events) == 1:
                    span.set_attributes(_event_attributes(events[0]))
            traceparent = format_traceparent(context)
            tracestate = context.trace_state.to_header()
            events = [_with_context(e, traceparent, tracestate) for e in events]
            with self.tracer.start_as_current_span(
                f"store {topic}",
                kind=SpanKind.CLIENT,
                attributes={
                    **_SYSTEM,
                    "messaging.destination.name": topic,
                    "eventmesh.connector": connector,
                },
            ):
                await store(topic, events)

    # -- delivery ------------------------------------------------------------------------

    def traced_sink(
        self,
        sink: Callable[[Event], Awaitable[Any]],
        *,
        subscription: str,
        topic: str,
    ) -> Callable[[Event], Awaitable[Any]]:
        """``sink``, run under a ``deliver`` span for events with a sampled traceparent,
        and under their unsampled parent for those with an unsampled one."""
        tracer = self.tracer
        recorder = self._recorder
        name = f"deliver {subscription}"
        consumer = SpanKind.CONSUMER
        # The events of one sampled publish share its traceparent: what was read from
        # the last one is kept, and the next usually reuses it unparsed.
        last_carried: tuple[Any, Any] | None = None
        last_remote = INVALID_SPAN_CONTEXT
        last_parent = otel_context.Context()
        last_flags = TraceFlags(TraceFlags.SAMPLED)

        async def traced(event: Event) -> Any:
            nonlocal last_carried, last_remote, last_parent, last_flags
            extensions = event.extensions
            carried = (extensions.get("traceparent"), extensions.get("tracestate"))
            if carried != last_carried:
                remote = event_span_context(event)
                if remote is None:
                    return await sink(event)  # nothing readable to follow
                last_remote = remote
                last_parent = trace.set_span_in_context(NonRecordingSpan(remote))
                # A child keeps the sampled flag and the parent's random-trace-id flag.
                last_flags = TraceFlags(remote.trace_flags & _CHILD_FLAGS)
                last_carried = carried
            if not last_flags.sampled:
                # No span under an unsampled parent, but what the handler publishes
                # follows it (unsampled too) rather than drawing a new trace.
                token = otel_context.attach(last_parent)
                try:
                    return await sink(event)
                finally:
                    otel_context.detach(token)
            attributes = {"messaging.destination.name": topic, "messaging.message.id": event.id}
            span: Span
            if recorder is not None:  # the mesh's own provider: no sampler to ask
                remote = last_remote
                context = SpanContext(
                    remote.trace_id,
                    _new_span_id(),
                    is_remote=False,
                    trace_flags=last_flags,
                    trace_state=remote.trace_state,
                )
                span = DeliverySpan(recorder, name, context, remote, attributes)
            else:
                # start_span and attach by hand: start_as_current_span's two context
                # managers cost more than the span's attributes.
                span = tracer.start_span(
                    name, context=last_parent, kind=consumer, attributes=attributes
                )
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                return await sink(event)
            except BaseException as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            finally:
                otel_context.detach(token)
                span.end()

        return traced

    # -- functions -----------------------------------------------------------------------

    @contextmanager
    def function_span(self, function: str, event: Event) -> Iterator[Span]:
        """A ``function`` span around one call of a serverless function, under the active
        span or else the event's sampled traceparent."""
        parent = None
        if not trace.get_current_span().get_span_context().is_valid:
            carried = event_span_context(event)
            if carried is not None:
                parent = trace.set_span_in_context(NonRecordingSpan(carried))
            elif not self._keeps_new_trace():
                with trace.use_span(self._unsampled_context()) as unsampled:
                    yield unsampled
                return
        with self.tracer.start_as_current_span(
            f"function {function}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={"eventmesh.function": function, **_event_attributes(event)},
        ) as span:
            yield span
