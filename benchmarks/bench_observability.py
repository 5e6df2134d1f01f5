"""The cost of observability on the in-memory route: metrics on, tracing sampled at 1 %."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Sequence
from typing import Any

import uvloop
from harness import Row, Section
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from eventmesh import DeliveryPolicy, Event, Mesh

TITLE = "Observability cost (in-memory route)"
BATCH = 100
RUNS = 7


class _Discard(SpanExporter):
    """Takes every span and keeps none: the batch processor's work, no network."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _provider(ratio: float) -> TracerProvider:
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(_Discard()))
    return provider


async def _route(events: list[Event], *, metrics: bool, tracing: float | None) -> float:
    """Events published in batches through a Mesh to one async handler; events/s."""
    total = len(events)
    done = 0
    finished = asyncio.Event()

    async def handler(event: Event) -> None:
        nonlocal done
        done += 1
        if done == total:
            finished.set()

    config: dict[str, Any] = {
        "connectors": {"default": {"type": "memory", "max_events": 200_000}},
        "metrics": {"enabled": metrics},
    }
    provider = _provider(tracing) if tracing is not None else None
    async with Mesh(config, tracer_provider=provider) as mesh:
        await mesh.subscribe("bench", "g", handler=handler, delivery=DeliveryPolicy())
        start = time.perf_counter()
        for i in range(0, total, BATCH):
            await mesh.publish("bench", events[i : i + BATCH])
        await finished.wait()
        elapsed = time.perf_counter() - start
        if metrics:
            assert mesh.metrics is not None
            assert "eventmesh_events_delivered_total" in mesh.metrics.render()
    if provider is not None:
        provider.shutdown()
    return total / elapsed


def main(quick: bool) -> Section:
    n = 30_000 if quick else 100_000
    events = [Event(type="bench", source="/bench", data={"n": i}) for i in range(n)]
    setups: dict[str, dict[str, Any]] = {
        "everything off": {"metrics": False, "tracing": None},
        "metrics on": {"metrics": True, "tracing": None},
        "tracing sampled at 1 %": {"metrics": False, "tracing": 0.01},
        "metrics on and tracing at 1 %": {"metrics": True, "tracing": 0.01},
    }
    rates: dict[str, list[float]] = {name: [] for name in setups}
    # Interleaved rounds, the median of each: a slow moment of the machine hits every
    # setup alike, and one lucky run of the baseline does not set the ratio.
    for _ in range(RUNS):
        for name, options in setups.items():
            gc.collect()  # no run pays for the garbage of the one before
            rates[name].append(uvloop.run(_route(events, **options)))
    section = Section(TITLE)
    off = statistics.median(rates["everything off"])
    for name in setups:
        if name == "everything off":
            continue
        section.rows.append(
            Row(
                name=f"{name}, {n:,} events",
                value=statistics.median(rates[name]),
                unit="events/s",
                baseline=off,
                baseline_name="everything off",
                goal="0.85x or more (cost 15 % or less)",
            )
        )
    section.notes += [
        f"The route of bench_memory: events published in batches of {BATCH} through a Mesh "
        "to one async handler under the default delivery policy, acked; the baseline is "
        f"the same route with metrics and tracing off, in the same run (the median of {RUNS} "
        "interleaved rounds).",
        "Metrics on: the per-topic publish count and a publish-to-ack histogram "
        "observation per event; every other figure is read when /metrics is scraped.",
        "Tracing: a provider sampling 1 % of new traces (ParentBased(TraceIdRatioBased)) "
        "with a batch span processor and an exporter that discards; a sampled publish "
        "writes traceparent into its events, which are then delivered under a span.",
        "A sampled event costs about 50 µs of OpenTelemetry SDK work for its delivery span "
        "alone (start and end, no processor, on the 2-core benchmark machine), ten times "
        "the whole route's 5 µs. At 1 % that averages about 0.5-1 µs per event, and the "
        "figure swings from run to run with how many of the 1,000 publish batches the "
        "sampler picks (about 10). Runs here gave 0.6x to 0.97x for tracing and 0.86x to "
        "1.04x for metrics.",
    ]
    return section
