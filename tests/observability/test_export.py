"""Tracing from the configuration: spans reach an OTLP/HTTP collector, and the tracing
and metrics keys are checked when the configuration loads."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from eventmesh import Event, Mesh
from eventmesh.config import load_config
from eventmesh.errors import ConfigError

pytestmark = pytest.mark.anyio


async def test_configured_tracing_exports_spans_to_the_otlp_endpoint() -> None:
    """With tracing.endpoint set, the mesh's spans are POSTed as OTLP protobuf to it by
    the time the mesh has closed, under the configured service name."""
    requests: list[ExportTraceServiceRequest] = []

    async def receive(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        requests.append(message)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    config: dict[str, Any] = {
        "tracing": {
            "endpoint": f"http://127.0.0.1:{port}/v1/traces",
            "service_name": "billing-sidecar",
        }
    }
    try:
        async with Mesh(config) as mesh:
            await mesh.subscribe("t", "g", handler=handler)
            await mesh.publish("t", Event(type="x", source="/t"))
            with anyio.fail_after(5):
                while not got:
                    await anyio.sleep(0.01)
    finally:
        await runner.cleanup()
    spans = {}
    services = set()
    for message in requests:
        for resource_spans in message.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                spans |= {span.name: span for span in scope_spans.spans}
    assert set(spans) == {"publish t", "store t", "deliver t/g"}
    assert services == {"billing-sidecar"}
    # The delivery span (recorded by the mesh for its own provider) is the publish's
    # child in the same trace, a consumer span naming the event.
    publish, deliver = spans["publish t"], spans["deliver t/g"]
    assert deliver.trace_id == publish.trace_id
    assert deliver.parent_span_id == publish.span_id
    assert deliver.kind == Span.SpanKind.SPAN_KIND_CONSUMER
    attributes = {a.key: a.value.string_value for a in deliver.attributes}
    assert attributes == {"messaging.destination.name": "t", "messaging.message.id": got[0].id}
    assert deliver.start_time_unix_nano <= deliver.end_time_unix_nano


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"tracing": {"sample_ratio": 1.5}}, "tracing.sample_ratio"),
        ({"tracing": {"endpoint": "collector:4318"}}, "tracing.endpoint"),
        ({"tracing": {"timeout": "0s"}}, "tracing.timeout"),
        ({"tracing": {"sampling": 0.1}}, "tracing.sampling"),
        ({"metrics": {"max_label_sets": 0}}, "metrics.max_label_sets"),
        ({"logging": {"payload": "yes"}}, "logging.payload"),
    ],
)
def test_observability_keys_are_checked_at_load(section: dict[str, Any], key: str) -> None:
    """A wrong tracing, metrics or logging value is a ConfigError naming its key."""
    with pytest.raises(ConfigError) as caught:
        load_config(section)
    assert caught.value.key == key


def test_tracing_is_off_until_configured_and_metrics_and_logs_are_on() -> None:
    """The defaults: metrics and logs on, tracing off; an endpoint turns tracing on, and
    enabled false turns it off again."""
    config = load_config(None)
    assert config.metrics.enabled
    assert config.logging.enabled
    assert not config.logging.payload
    assert not config.tracing.on
    assert load_config({"tracing": {"endpoint": "http://127.0.0.1:4318/v1/traces"}}).tracing.on
    off = {"endpoint": "http://127.0.0.1:4318/v1/traces", "enabled": False}
    assert not load_config({"tracing": off}).tracing.on
