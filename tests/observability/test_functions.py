"""Functions under observability: a call is a span between its delivery and its reply's
publish, and /metrics counts the calls and their durations."""

from __future__ import annotations

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventmesh import Event, Mesh
from eventmesh.testing.tracing import assert_one_trace, recording_provider

pytestmark = pytest.mark.anyio


async def test_a_function_call_joins_the_trace_and_is_counted() -> None:
    """publish -> deliver to the function -> function span -> the reply's publish and its
    delivery are one trace, and the function's invocations and duration are on /metrics."""
    provider, exporter = recording_provider()
    mesh = Mesh(tracer_provider=provider)

    @mesh.function("orders", name="enrich", reply_to="enriched")
    async def enrich(event: Event) -> Event:
        return Event(type="order.enriched", source="/enrich", data={"of": event.id})

    got: list[Event] = []

    async def collect(event: Event) -> None:
        got.append(event)

    async with mesh:
        await mesh.subscribe("enriched", "collector", handler=collect, name="collector")
        await mesh.publish("orders", Event(type="order", source="/t", id="o1"))
        with anyio.fail_after(10):
            while not got:
                await anyio.sleep(0.01)
        assert mesh.metrics is not None
        page = mesh.metrics.render()
    assert_one_trace(
        exporter.get_finished_spans(),
        {
            "publish orders": None,
            "deliver function.enrich": "publish orders",
            "function enrich": "deliver function.enrich",
            "publish enriched": "function enrich",
            "deliver collector": "publish enriched",
        },
    )
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }
    assert values[("eventmesh_function_invocations_total", (("function", "enrich"),))] == 1
    assert values[("eventmesh_function_errors_total", (("function", "enrich"),))] == 0
    assert values[("eventmesh_function_duration_seconds_count", (("function", "enrich"),))] == 1
