"""gRPC ingress: the sidecar's Publish and PublishBatch against a bare grpc.aio servicer.

As bench_http.py: the server runs in a child process of its own and this process is
the load generator, one grpc.aio channel with ``CONCURRENCY`` callers sending
pre-serialized requests. The same client and requests hit the eventmesh sidecar's
``eventmesh.v1.EventMesh`` service (``Sidecar`` over the in-memory connector) and a bare
servicer of the same generated service that answers ``PublishResponse(stored=n)``.

    python benchmarks/run.py grpc
    python benchmarks/bench_grpc.py --profile   # cProfile of PublishBatch, server side
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

import grpc
import grpc.aio
from bench_http import CONCURRENCY, RUNS, TOPIC, Server, _once, profile, serve, sidecar_config
from harness import Measure, Row, Section, cli, interleave

from eventmesh import Event
from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._generated.eventmesh.v1 import eventmesh_pb2_grpc as pb_grpc
from eventmesh.bindings.protobuf import to_proto, to_proto_batch

TITLE = "gRPC ingress (publish through the sidecar)"
BATCH: Final = 100
METHODS: Final = {
    "single": "/eventmesh.v1.EventMesh/Publish",
    "batch": "/eventmesh.v1.EventMesh/PublishBatch",
}


# -- servers, each run in a child process (bench_http.serve) -------------------------------


@contextlib.asynccontextmanager
async def _sidecar_grpc() -> AsyncIterator[str]:
    from eventmesh._loop import tune_gc
    from eventmesh.server.sidecar import Sidecar

    async with Sidecar(sidecar_config()) as sidecar:
        tune_gc()  # as `eventmesh run` does
        yield sidecar.grpc_target


class _Bare(pb_grpc.EventMeshServicer):
    """Answers at once, storing nothing: what grpc.aio itself costs per call."""

    async def Publish(self, request: pb.PublishRequest, context: Any) -> pb.PublishResponse:
        return pb.PublishResponse(stored=1)

    async def PublishBatch(
        self, request: pb.PublishBatchRequest, context: Any
    ) -> pb.PublishResponse:
        return pb.PublishResponse(stored=len(request.batch.events))


@contextlib.asynccontextmanager
async def _bare_grpc() -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_EventMeshServicer_to_server(_Bare(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=1.0)


SERVERS: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[str]]] = {
    "sidecar-grpc": _sidecar_grpc,
    "bare-grpc": _bare_grpc,
}


# -- the load --------------------------------------------------------------------------------


Call = tuple[str, bytes]


def calls(mode: str, distinct: int) -> tuple[list[Call], int]:
    """``distinct`` pre-serialized requests of ``mode``, and the events in each."""
    if mode == "single":
        return [
            (
                METHODS[mode],
                pb.PublishRequest(topic=TOPIC, event=to_proto(_event(i))).SerializeToString(),
            )
            for i in range(distinct)
        ], 1
    return [
        (
            METHODS[mode],
            pb.PublishBatchRequest(
                topic=TOPIC,
                batch=to_proto_batch(_event(i * BATCH + j) for j in range(BATCH)),
            ).SerializeToString(),
        )
        for i in range(distinct)
    ], BATCH


def _event(n: int) -> Event:
    return Event(type="bench", source="/bench", data={"n": n})


async def load(
    target: str, pool: list[Call], total: int, concurrency: int, around: Callable[[], Any]
) -> tuple[float, float]:
    """Send ``total`` calls from ``concurrency`` callers on one channel; (wall s, CPU s)."""
    async with grpc.aio.insecure_channel(target) as channel:
        methods = {
            path: channel.unary_unary(path, None, None) for path in {path for path, _ in pool}
        }

        async def caller(counter: Iterator[int]) -> None:
            for i in counter:
                path, request = pool[i % len(pool)]
                await methods[path](request, timeout=30)

        async def run(count: int) -> None:
            counter = iter(range(count))
            async with asyncio.TaskGroup() as tg:
                for _ in range(concurrency):
                    tg.create_task(caller(counter))

        await run(concurrency * 4)  # warm-up
        with around():
            cpu = time.process_time()
            start = time.perf_counter()
            await run(total)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu
    return elapsed, cpu


# -- the scenario ----------------------------------------------------------------------------


def main(quick: bool) -> Section:
    singles = 3_000 if quick else 10_000
    batches = 300 if quick else 2_000
    modes = [("single", *calls("single", 1_000), singles), ("batch", *calls("batch", 50), batches)]
    section = Section(TITLE)
    with serve("bench_grpc", "bare-grpc") as bare, serve("bench_grpc", "sidecar-grpc") as ours:
        for mode, pool, per_request, total in modes:
            print(f"  {mode}", flush=True)
            medians = interleave(
                RUNS,
                {
                    kind: functools.partial(_round, server, pool, per_request, total)
                    for kind, server in (("bare-grpc", bare), ("sidecar-grpc", ours))
                },
            )
            mine, base = medians["sidecar-grpc"], medians["bare-grpc"]
            what = (
                f"Publish, 1 event per call, {total:,} calls"
                if mode == "single"
                else f"PublishBatch, {BATCH} events per call, {total * per_request:,} events"
            )
            section.rows.append(
                Row(
                    name=what,
                    value=mine.rate,
                    unit="events/s",
                    baseline=base.rate,
                    baseline_name="bare grpc.aio servicer",
                    goal="0.50x or more" if mode == "batch" else "",
                    load=f"{mine.load} (baseline {base.load})",
                )
            )
            section.notes.append(
                f"CPU per event, {mode} (medians): sidecar {mine.cpu_us:,.1f} µs (bare "
                f"servicer {base.cpu_us:,.1f} µs); rates of each round, sidecar/bare: "
                + ", ".join(
                    f"{a.rate:,.0f}/{b.rate:,.0f}"
                    for a, b in zip(mine.rounds, base.rounds, strict=True)
                )
                + "."
            )
    section.notes += [
        "The servers run in child processes of their own (multiprocessing, spawn, uvloop), "
        "both started before the first round; this process is the load generator, so on a "
        "2-core machine the loaded server and the client each have a core. "
        f"The client is one grpc.aio channel with {CONCURRENCY} concurrent callers sending "
        "pre-serialized requests (distinct events in the CloudEvents protobuf format) and "
        "reading each answer; the same client and requests load both servers.",
        "The sidecar's service decodes each CloudEvent into an Event, publishes to the "
        "in-memory connector (a topic without readers, released whenever it fills) and "
        "answers once stored, with the ids. The bare servicer is the generated "
        "EventMeshServicer answering PublishResponse(stored=n) at once. The two take "
        f"turns, {RUNS} rounds each after a warm-up (harness.interleave); each figure is "
        "the median of its rounds, with the load average beside it.",
        "Reproduce: python benchmarks/run.py grpc (or python benchmarks/bench_grpc.py).",
    ]
    return section


def _round(server: Server, pool: list[Any], per_request: int, total: int) -> Measure:
    """One timed load of ``server`` as a harness round: events/s and server CPU per event."""
    figure = _once(server, pool, per_request, total, load)
    return Measure(rate=figure.rate, cpu_us=figure.server_us)


def _profile(quick: bool) -> str:
    pool, _ = calls("batch", 50)
    return profile("bench_grpc", "sidecar-grpc", load, pool, 300 if quick else 1_000)


if __name__ == "__main__":
    sys.exit(cli(__doc__, main, _profile))
