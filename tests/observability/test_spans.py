"""The mesh's own delivery span against the SDK's: a provider the mesh builds records
deliveries with DeliverySpan, and what its processor receives must be what the SDK's
span would have handed it, for a handler that annotates the span and for one that fails."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from eventmesh import Event, Mesh
from eventmesh.errors import ConfigError
from eventmesh.observability.spans import DeliverySpan
from eventmesh.observability.tracing import Tracing, format_traceparent

pytestmark = pytest.mark.anyio

# Sampled, with the random-trace-id flag (03) and a trace state, as a W3C parent sends.
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"
TRACESTATE = "vendor=abc"


def _both() -> list[tuple[Tracing, InMemorySpanExporter]]:
    """The SDK's spans (a provider given to the mesh) and the mesh's own, same resource."""
    given_exporter, own_exporter = InMemorySpanExporter(), InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "s"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(given_exporter))
    own = Tracing.with_processor(
        SimpleSpanProcessor(own_exporter), sample_ratio=1.0, service_name="s"
    )
    return [(Tracing(provider), given_exporter), (own, own_exporter)]


def _exported(span: ReadableSpan) -> dict[str, Any]:
    """Everything an exporter reads from a span, ids that are drawn anew left out."""
    assert span.context is not None
    assert span.parent is not None
    assert span.start_time is not None
    assert span.end_time is not None
    assert span.start_time <= span.end_time
    return {
        "name": span.name,
        "kind": span.kind,
        "trace_id": span.context.trace_id,
        "flags": int(span.context.trace_flags),
        "state": span.context.trace_state.to_header(),
        "remote": span.context.is_remote,
        "parent": (span.parent.trace_id, span.parent.span_id, span.parent.is_remote),
        "attributes": dict(span.attributes or {}),
        "dropped_attributes": span.dropped_attributes,
        "status": (span.status.status_code, span.status.description),
        "events": [
            (e.name, {k: v for k, v in (e.attributes or {}).items() if k != "exception.stacktrace"})
            for e in span.events
        ],
        "links": [(link.context.span_id, dict(link.attributes or {})) for link in span.links],
        "dropped_events": span.dropped_events,
        "dropped_links": span.dropped_links,
        "resource": dict(span.resource.attributes),
        "scope": (span.instrumentation_scope.name, span.instrumentation_scope.version)
        if span.instrumentation_scope
        else None,
    }


async def _deliver(
    sink: Callable[[Event], Awaitable[Any]], event_id: str = "e1"
) -> list[dict[str, Any]]:
    results = []
    event = Event(
        type="x",
        source="/t",
        id=event_id,
        extensions={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
    )
    for tracing, exporter in _both():
        traced = tracing.traced_sink(sink, subscription="t/g", topic="t")
        try:
            await traced(event)
        except ValueError:
            pass
        (span,) = exporter.get_finished_spans()
        results.append(_exported(span))
        tracing.provider.shutdown()  # type: ignore[attr-defined]
    return results


async def _handled(mesh: Mesh, handler: Any, topic: str, event: Event, seen: list[Any]) -> None:
    """Subscribe ``handler`` to ``topic`` as group g, publish ``event``, and return once
    the handler put something in ``seen``."""
    await mesh.subscribe(topic, "g", handler=handler)
    await mesh.publish(topic, event)
    with anyio.fail_after(5):
        while not seen:
            await anyio.sleep(0.01)


async def test_an_annotated_delivery_exports_as_the_sdk_span_would() -> None:
    """Attributes, an event, a link, a new name and a status set by the handler on
    the current span; the parent's trace, flags and state carried on."""
    seen: list[trace.Span] = []

    async def annotate(event: Event) -> None:
        span = trace.get_current_span()
        seen.append(span)
        assert span.is_recording()
        span.set_attribute("app.order", 7)
        span.set_attribute("", 1)  # an empty key is dropped
        span.set_attribute("app.set", {1, 2})  # type: ignore[arg-type]  # kept as its str
        span.set_attributes({"app.tags": ["a", "b"], "app.long": "x" * 10})
        span.add_event("checked", {"n": 1})
        span.add_link(trace.SpanContext(1, 2, is_remote=True), {"why": "batch"})
        span.update_name("deliver renamed")
        span.set_status(StatusCode.ERROR, "first")
        span.set_status(StatusCode.UNSET)  # never replaces a status

    sdk, own = await _deliver(annotate)
    assert isinstance(seen[1], DeliverySpan)
    assert not seen[1].is_recording()  # ended
    assert own == sdk
    assert own["attributes"]["app.order"] == 7
    assert "" not in own["attributes"]
    assert own["attributes"]["app.set"] == "{1, 2}"
    assert own["status"] == (StatusCode.ERROR, "first")
    assert own["attributes"]["app.tags"] == ("a", "b")  # checked: a list is kept as a tuple
    assert own["kind"] is SpanKind.CONSUMER
    assert own["flags"] == 3
    assert own["state"] == TRACESTATE


async def test_a_failed_delivery_exports_as_the_sdk_span_would() -> None:
    """The exception recorded as an event and an ERROR status naming it."""

    async def fail(event: Event) -> None:
        trace.get_current_span().set_attribute("", 1)  # an empty key is dropped
        raise ValueError("bad order")

    sdk, own = await _deliver(fail)
    assert own == sdk
    assert own["status"] == (StatusCode.ERROR, "ValueError: bad order")
    assert "" not in own["attributes"]
    assert own["events"][0][0] == "exception"
    assert own["events"][0][1]["exception.type"] == "ValueError"


async def test_a_status_of_ok_set_by_the_handler_is_final() -> None:
    """A handler that marks its span OK and then fails keeps OK, as with the SDK."""

    async def ok_then_fail(event: Event) -> None:
        trace.get_current_span().set_status(Status(StatusCode.OK))
        raise ValueError("after OK")

    sdk, own = await _deliver(ok_then_fail)
    assert own == sdk
    assert own["status"] == (StatusCode.OK, None)


async def test_a_delivery_span_ignores_changes_once_ended() -> None:
    """After end, the span records nothing more and a second end sends nothing."""
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_processor(
        SimpleSpanProcessor(exporter), sample_ratio=1.0, service_name="s"
    )
    kept: list[trace.Span] = []

    async def keep(event: Event) -> None:
        span = trace.get_current_span()
        span.set_attribute("app.k", 1)  # the exported span shares these containers
        span.add_event("in time")
        kept.append(span)

    traced = tracing.traced_sink(keep, subscription="t/g", topic="t")
    await traced(Event(type="x", source="/t", extensions={"traceparent": TRACEPARENT}))
    span = kept[0]
    span.set_attribute("late", 1)
    span.set_attributes({"later": 2})
    span.add_event("late")
    span.update_name("late")
    span.set_status(StatusCode.ERROR, "late")
    span.end()
    (exported,) = exporter.get_finished_spans()
    assert set(exported.attributes or {}) == {
        "messaging.destination.name",
        "messaging.message.id",
        "app.k",
    }
    assert [e.name for e in exported.events] == ["in time"]
    assert exported.name == "deliver t/g"
    assert exported.status.status_code is StatusCode.UNSET
    tracing.shutdown()


async def test_the_otel_limits_bound_a_delivery_span_as_they_bound_the_sdk_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the OTEL_* limits set, the mesh's own attributes are cut as the SDK cuts
    them, and what the handler adds is bounded the same."""
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4")
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "1")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "3")

    async def annotate(event: Event) -> None:
        span = trace.get_current_span()
        span.add_event("first")
        span.add_event("second", {"long": "abcdefgh"})
        span.set_attributes({"app.a": "abcdefgh", "app.b": 2})

    sdk, own = await _deliver(annotate)
    assert own == sdk
    assert "messaging.destination.name" not in own["attributes"]  # the oldest goes first
    assert own["attributes"]["app.a"] == "abcd"
    assert len(own["attributes"]) == 3
    assert own["dropped_attributes"] == 1
    assert [name for name, _ in own["events"]] == ["second"]  # the oldest goes first
    assert own["dropped_events"] == 1
    assert own["events"][0][1] == {"long": "abcd"}


async def test_long_ids_are_cut_to_the_attribute_length_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mesh's own attributes too: an event id longer than the limit is cut."""
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4")

    async def nothing(event: Event) -> None:
        pass

    sdk, own = await _deliver(nothing, event_id="order-12345")
    assert own == sdk
    assert own["attributes"]["messaging.message.id"] == "orde"
    assert own["attributes"]["messaging.destination.name"] == "t"


async def test_with_the_sdk_disabled_no_delivery_span_is_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_SDK_DISABLED turns every span off, the mesh's delivery spans included."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    exporter = InMemorySpanExporter()
    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    async with Mesh(span_processor=SimpleSpanProcessor(exporter)) as mesh:
        await _handled(
            mesh,
            handler,
            "t",
            Event(type="x", source="/t", extensions={"traceparent": TRACEPARENT}),
            got,
        )
    assert exporter.get_finished_spans() == ()


class _Tagging(SimpleSpanProcessor):
    """A processor that adds an attribute when a span starts."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span.set_attribute("tenant", "a")


async def test_a_processor_that_works_at_the_start_gets_the_sdk_s_delivery_spans() -> None:
    """Only the SDK's own processors, which do nothing at a span's start, are given the
    mesh's delivery spans; another processor sees every span start as it expects."""
    exporter = InMemorySpanExporter()
    seen: list[trace.Span] = []

    async def handler(event: Event) -> None:
        seen.append(trace.get_current_span())

    async with Mesh(span_processor=_Tagging(exporter)) as mesh:
        await _handled(mesh, handler, "t", Event(type="x", source="/t"), seen)
    assert not isinstance(seen[0], DeliverySpan)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert (spans["deliver t/g"].attributes or {})["tenant"] == "a"


async def test_a_sync_handler_annotates_its_delivery_span_from_its_thread() -> None:
    """A plain function handler runs in a worker thread; what it sets on the current
    span is on the exported delivery span."""
    exporter = InMemorySpanExporter()
    got: list[Event] = []

    def handler(event: Event) -> None:
        trace.get_current_span().set_attribute("app.thread", "worker")
        got.append(event)

    async with Mesh(span_processor=SimpleSpanProcessor(exporter)) as mesh:
        await _handled(mesh, handler, "t", Event(type="x", source="/t"), got)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert (spans["deliver t/g"].attributes or {})["app.thread"] == "worker"


class _Recording(InMemorySpanExporter):
    """Keeps spans and says whether it was shut down."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def shutdown(self) -> None:
        self.closed = True
        super().shutdown()


async def test_a_span_processor_receives_the_mesh_s_own_spans() -> None:
    """Mesh(span_processor=) traces with the provider tracing: would build (service name,
    the mesh's draw, its delivery spans) and shuts the processor down when it closes."""
    exporter = _Recording()
    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    mesh = Mesh({"tracing": {"service_name": "svc"}}, span_processor=SimpleSpanProcessor(exporter))
    async with mesh:
        await _handled(mesh, handler, "t", Event(type="x", source="/t", id="e1"), got)
        assert not exporter.closed
    assert exporter.closed
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"publish t", "store t", "deliver t/g"}
    publish, deliver = spans["publish t"], spans["deliver t/g"]
    assert publish.context is not None
    assert deliver.parent is not None
    assert deliver.parent.span_id == publish.context.span_id
    assert deliver.resource.attributes["service.name"] == "svc"
    assert got[0].extensions["traceparent"] == format_traceparent(publish.context)


def test_a_mesh_takes_a_tracer_provider_or_a_span_processor_not_both() -> None:
    with pytest.raises(ConfigError, match="not both"):
        Mesh(
            tracer_provider=TracerProvider(shutdown_on_exit=False),
            span_processor=SimpleSpanProcessor(InMemorySpanExporter()),
        )
