"""Tracing over the in-memory connector: one trace from an HTTP publish through a webhook
and its reply, the traceparent extension as the carrier, and nothing when tracing is off."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import aiohttp
import anyio
import grpc
import grpc.aio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from eventmesh import Event, Mesh
from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._generated.eventmesh.v1.eventmesh_pb2_grpc import EventMeshStub
from eventmesh.bindings.http import to_batch
from eventmesh.bindings.protobuf import to_proto_batch
from eventmesh.observability.tracing import Tracing, format_traceparent
from eventmesh.server.sidecar import Sidecar
from eventmesh.testing.tracing import assert_one_trace, chain, recording_provider, run_chain

pytestmark = pytest.mark.anyio

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

MEMORY = {"default": {"type": "memory"}}
CHAIN = chain("orders")
"""The one trace of an event published over HTTP, delivered to a webhook that replies,
the reply answered by a function that replies in turn, and that answer delivered to a
subscriber: each span and its parent."""


async def test_an_http_publish_its_webhook_delivery_and_the_replies_are_one_trace() -> None:
    """publish, store, deliver to a webhook, its reply's publish and store, a function
    answering that reply, and the answer's publish, store and delivery to a subscriber
    all share one trace, each under the span that caused it."""
    provider, exporter = recording_provider()
    event = Event(type="order", source="/t", id="o1")
    replies, hook = await run_chain(MEMORY, Sidecar, provider, event=event)
    spans = assert_one_trace(exporter.get_finished_spans(), CHAIN)
    assert spans["publish orders"].parent is None
    assert spans["publish orders"].kind is SpanKind.PRODUCER
    assert spans["store orders"].kind is SpanKind.CLIENT
    assert spans["deliver hook"].kind is SpanKind.CONSUMER
    assert spans["deliver hook"].attributes is not None
    assert spans["deliver hook"].attributes["messaging.message.id"] == "o1"
    # The event carries the publish span; the webhook's W3C header is the delivery span.
    event, headers = hook.received[0]
    publish, deliver = spans["publish orders"].context, spans["deliver hook"].context
    assert publish is not None
    assert deliver is not None
    assert event.extensions["traceparent"] == format_traceparent(publish)
    assert headers["traceparent"] == format_traceparent(deliver)
    answer_publish = spans["publish orders-answers"].context
    assert answer_publish is not None
    assert replies[0].type == "order.answered"
    assert replies[0].extensions["traceparent"] == format_traceparent(answer_publish)


async def test_an_incoming_traceparent_is_the_parent_of_the_publish() -> None:
    """An event that arrives with a traceparent joins that trace: the publish span is the
    child of the span it names."""
    provider, exporter = recording_provider()
    event = Event(type="order", source="/t", extensions={"traceparent": TRACEPARENT})
    await run_chain(MEMORY, Sidecar, provider, event=event)
    spans = assert_one_trace(exporter.get_finished_spans(), CHAIN)
    publish = spans["publish orders"]
    assert publish.parent is not None
    assert publish.parent.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)
    assert publish.parent.span_id == int("b7ad6b7169203331", 16)


async def test_a_failing_handler_marks_its_delivery_span_as_an_error() -> None:
    """Each attempt of a handler that raises is a deliver span with status ERROR."""
    provider, exporter = recording_provider()
    calls: list[Event] = []

    async def failing(event: Event) -> None:
        calls.append(event)
        raise RuntimeError("boom")

    async with Mesh(tracer_provider=provider) as mesh:
        await mesh.subscribe(
            "t", "g", handler=failing, delivery={"max_attempts": 2, "backoff": {"initial": 0}}
        )
        await mesh.publish("t", Event(type="x", source="/t"))
        with anyio.fail_after(5):
            while len(calls) < 2:
                await anyio.sleep(0.01)
    delivers = [s for s in exporter.get_finished_spans() if s.name == "deliver t/g"]
    assert len(delivers) == 2
    assert all(s.status.status_code is StatusCode.ERROR for s in delivers)


async def test_without_tracing_events_carry_no_trace_context() -> None:
    """With tracing off (the default) a published event is stored as it was given."""
    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    async with Mesh() as mesh:
        assert mesh._tracing is None
        await mesh.subscribe("t", "g", handler=handler)
        await mesh.publish("t", Event(type="x", source="/t"))
        with anyio.fail_after(5):
            while not got:
                await anyio.sleep(0.01)
    assert "traceparent" not in got[0].extensions


async def test_an_unsampled_publish_leaves_the_event_untouched_and_records_nothing() -> None:
    """When the sampler says no, no span is exported and the event gets no traceparent."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    async with Mesh(tracer_provider=provider) as mesh:
        await mesh.subscribe("t", "g", handler=handler)
        await mesh.publish("t", Event(type="x", source="/t"))
        with anyio.fail_after(5):
            while not got:
                await anyio.sleep(0.01)
    assert "traceparent" not in got[0].extensions
    assert exporter.get_finished_spans() == ()


def _tracing(kind: str) -> tuple[dict[str, Any], InMemorySpanExporter]:
    """Mesh options that trace everything, and where the spans go: a provider of the
    caller's (the SDK's spans) or the mesh's own provider (its delivery spans)."""
    if kind == "given provider":
        provider, exporter = recording_provider()
        return {"tracer_provider": provider}, exporter
    exporter = InMemorySpanExporter()
    return {"span_processor": SimpleSpanProcessor(exporter)}, exporter


BOTH = pytest.mark.parametrize("kind", ["given provider", "own provider"])


@BOTH
async def test_each_delivery_span_is_under_the_publish_of_its_own_event(kind: str) -> None:
    """Events of three sampled publishes and one with an unsampled traceparent, delivered
    in turn to one subscription: each deliver span is the child of its own event's
    publish (the same event id published twice gets two parents), the unsampled event
    gets none, and a carried event keeps its other attributes."""
    options, exporter = _tracing(kind)
    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    first = [Event(type="a", source="/t", id=f"a{i}", subject="s") for i in range(3)]
    second = [Event(type="b", source="/t", id=f"b{i}", extensions={"k": 1}) for i in range(3)]
    async with Mesh(**options) as mesh:
        await mesh.subscribe("t", "g", handler=handler, delivery={"concurrency": 1})
        await mesh.publish("t", first)
        await mesh.publish("t", Event(type="c", source="/t", extensions={"traceparent": unsampled}))
        await mesh.publish("t", second)
        await mesh.publish("t", first[0])
        with anyio.fail_after(5):
            while len(got) < 8:
                await anyio.sleep(0.01)
    spans = exporter.get_finished_spans()
    publishes = {
        format_traceparent(s.context) for s in spans if s.name == "publish t" and s.context
    }
    assert len(publishes) == 3  # the unsampled parent's publish is not sampled either
    delivered = {
        ((s.attributes or {})["messaging.message.id"], format_traceparent(s.parent))
        for s in spans
        if s.name == "deliver t/g" and s.parent is not None
    }
    carried = {(e.id, e.extensions["traceparent"]) for e in got if e.type != "c"}
    assert len(carried) == 7
    assert delivered == carried
    assert {traceparent for _, traceparent in carried} == publishes
    assert [e.extensions["traceparent"] for e in got if e.type == "c"] == [unsampled]
    assert [e.subject for e in got if e.type == "a"] == ["s"] * 4
    assert [e.extensions["k"] for e in got if e.type == "b"] == [1] * 3


async def test_the_mesh_draws_for_new_traces_at_the_configured_ratio() -> None:
    """With tracing.sample_ratio below 1, the mesh keeps that share of new traces by its
    own draw: the publish calls its seeded generator keeps are traced, the others make no
    span and leave their events untouched."""
    provider, exporter = recording_provider()  # the provider itself keeps every root
    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    draws = random.Random(5)
    kept = [draws.random() < 0.3 for _ in range(40)]
    assert 0 < sum(kept) < 40
    async with Mesh({"tracing": {"sample_ratio": 0.3}}, tracer_provider=provider) as mesh:
        assert mesh._tracing is not None
        mesh._tracing.rng.seed(5)
        await mesh.subscribe("t", "g", handler=handler, delivery={"concurrency": 1})
        for i in range(40):
            await mesh.publish("t", Event(type="x", source="/t", id=f"e{i}"))
        with anyio.fail_after(5):
            while len(got) < 40:
                await anyio.sleep(0.01)
    traced = {e.id for e in got if "traceparent" in e.extensions}
    assert traced == {f"e{i}" for i, keep in enumerate(kept) if keep}
    spans = exporter.get_finished_spans()
    assert len([s for s in spans if s.name == "publish t"]) == sum(kept)
    assert {
        (s.attributes or {})["messaging.message.id"] for s in spans if s.name == "deliver t/g"
    } == traced


async def test_a_sampled_traceparent_is_followed_whatever_the_draw() -> None:
    """An event that arrives with a sampled traceparent continues its trace even when the
    mesh keeps no new trace at all (sample_ratio 0)."""
    provider, exporter = recording_provider()
    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    async with Mesh({"tracing": {"sample_ratio": 0.0}}, tracer_provider=provider) as mesh:
        await mesh.subscribe("t", "g", handler=handler, delivery={"concurrency": 1})
        await mesh.publish("t", Event(type="x", source="/t", id="new"))
        await mesh.publish(
            "t", Event(type="x", source="/t", id="carried", extensions={"traceparent": TRACEPARENT})
        )
        with anyio.fail_after(5):
            while len(got) < 2:
                await anyio.sleep(0.01)
    by_id = {e.id: e for e in got}
    assert "traceparent" not in by_id["new"].extensions
    assert by_id["carried"].extensions["traceparent"][:35] == TRACEPARENT[:35]
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["deliver t/g", "publish t", "store t"]
    assert all(
        s.context is not None and s.context.trace_id == int(TRACEPARENT[3:35], 16) for s in spans
    )


async def test_what_a_left_out_function_call_publishes_stays_out_of_traces() -> None:
    """A function call that starts a new trace the draw leaves out runs under a valid,
    unsampled context: what it publishes follows that decision and is not drawn again."""
    provider, exporter = recording_provider()
    tracing = Tracing(provider, sample_ratio=0.0)
    stored: list[Event] = []

    async def store(topic: str, events: Sequence[Event]) -> None:
        stored.extend(events)

    with tracing.function_span("f", Event(type="x", source="/t")) as span:
        context = span.get_span_context()
        assert context.is_valid
        assert not context.trace_flags.sampled
        tracing.sample_ratio = 1.0  # a new trace would now be kept; this is not a new one
        await tracing.publish("t", "default", [Event(type="y", source="/t")], store)
    assert exporter.get_finished_spans() == ()
    assert "traceparent" not in stored[0].extensions


def test_configured_tracing_draws_new_traces_and_its_sampler_follows_parents() -> None:
    """The provider built from tracing: config keeps every root it is shown (the mesh
    has drawn for it) and follows the parent otherwise."""
    tracing = Tracing.with_otlp(
        endpoint="http://127.0.0.1:9/v1/traces",
        headers={},
        sample_ratio=0.25,
        service_name="s",
        timeout=1.0,
    )
    try:
        assert tracing.sample_ratio == 0.25
        provider = tracing.provider
        assert isinstance(provider, TracerProvider)
        assert provider.sampler.get_description().startswith("ParentBased{root:AlwaysOnSampler")
    finally:
        tracing.shutdown()


CLIENT_SPAN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
"""The W3C traceparent an instrumented HTTP or gRPC client sends with its request."""


async def _published_through_sidecar(events: list[Event], *, grpc_call: bool) -> ReadableSpan:
    """``events`` posted to a sidecar (HTTP, or gRPC PublishBatch) with the client's
    W3C traceparent header or metadata: the publish span it made."""
    provider, exporter = recording_provider()
    free = {"port": 0}
    config = {"server": {"http": free, "grpc": free, "admin": free}}
    async with Sidecar(config, tracer_provider=provider) as sidecar:
        trace_headers = {"traceparent": CLIENT_SPAN, "tracestate": "client=1"}
        if grpc_call:
            async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
                await EventMeshStub(channel).PublishBatch(
                    pb.PublishBatchRequest(topic="t", batch=to_proto_batch(events)),
                    metadata=tuple(trace_headers.items()),
                )
        else:
            headers, body = to_batch(events)
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{sidecar.http_url}/topics/t/events",
                    headers={**headers, **trace_headers},
                    data=body,
                ) as response,
            ):
                assert response.status == 202
    (publish,) = [s for s in exporter.get_finished_spans() if s.name == "publish t"]
    return publish


@pytest.mark.parametrize("grpc_call", [False, True], ids=["http", "grpc"])
async def test_a_publish_continues_the_trace_of_the_client_that_sent_it(grpc_call: bool) -> None:
    """Events that carry no trace context, sent with W3C traceparent/tracestate headers
    (HTTP) or metadata (gRPC): the publish span is the child of the client's span."""
    publish = await _published_through_sidecar(
        [Event(type="x", source="/t"), Event(type="y", source="/t")], grpc_call=grpc_call
    )
    assert publish.parent is not None
    assert format_traceparent(publish.parent) == CLIENT_SPAN
    assert publish.parent.is_remote
    assert publish.context is not None
    assert publish.context.trace_state.to_header() == "client=1"


@pytest.mark.parametrize("grpc_call", [False, True], ids=["http", "grpc"])
async def test_an_event_s_own_traceparent_comes_before_the_client_s(grpc_call: bool) -> None:
    """The traceparent an event carries is its trace: the request's headers are the
    transport's, and give way to it."""
    carried = Event(type="x", source="/t", extensions={"traceparent": TRACEPARENT})
    publish = await _published_through_sidecar([carried], grpc_call=grpc_call)
    assert publish.parent is not None
    assert format_traceparent(publish.parent) == TRACEPARENT


@BOTH
async def test_what_a_handler_replies_to_an_unsampled_event_stays_unsampled(kind: str) -> None:
    """An event that arrives with an unsampled traceparent gets no span, and the reply
    its handler returns follows that decision rather than drawing a new trace (which
    would be kept here: these providers keep every new trace)."""
    options, exporter = _tracing(kind)
    replies: list[Event] = []

    async def handler(event: Event) -> Event:
        return Event(type="reply", source="/t")

    async def collect(event: Event) -> None:
        replies.append(event)

    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    async with Mesh(**options) as mesh:
        await mesh.subscribe("t", "g", handler=handler, reply_to="r")
        await mesh.subscribe("r", "c", handler=collect)
        await mesh.publish("t", Event(type="x", source="/t", extensions={"traceparent": unsampled}))
        with anyio.fail_after(5):
            while not replies:
                await anyio.sleep(0.01)
    assert exporter.get_finished_spans() == ()
    assert "traceparent" not in replies[0].extensions


async def test_a_chain_through_the_mesh_s_own_provider_is_one_trace() -> None:
    """The HTTP publish, webhook delivery, reply, function and answer chain, with the
    mesh's own provider (its delivery spans) instead of a given one."""
    exporter = InMemorySpanExporter()

    def serve(config: dict[str, Any], *, tracer_provider: Any) -> Sidecar:
        return Sidecar(config, span_processor=SimpleSpanProcessor(exporter))

    provider, _ = recording_provider()  # run_chain's parameter; the sidecar uses its own
    replies, hook = await run_chain(MEMORY, serve, provider)
    spans = assert_one_trace(exporter.get_finished_spans(), CHAIN)
    deliver = spans["deliver hook"].context
    assert deliver is not None
    _, headers = hook.received[0]
    assert headers["traceparent"] == format_traceparent(deliver)
    assert replies[0].type == "order.answered"
