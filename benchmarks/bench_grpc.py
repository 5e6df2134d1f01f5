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
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

import grpc
import grpc.aio
from bench_http import CONCURRENCY, RUNS, TOPIC, Figure, measure, profile, serve, sidecar_config
from harness import Row, Section, cli

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
    figures: dict[tuple[str, str], Figure] = {}
    for kind in ("bare-grpc", "sidecar-grpc"):
        with serve("bench_grpc", kind) as server:
            for mode, pool, per_request, total in modes:
                figures[kind, mode] = measure(server, pool, per_request, total, runner=load)
    section = Section(TITLE)
    for mode, _, per_request, total in modes:
        ours, bare = figures["sidecar-grpc", mode], figures["bare-grpc", mode]
        what = (
            f"Publish, 1 event per call, {total:,} calls"
            if mode == "single"
            else f"PublishBatch, {BATCH} events per call, {total * per_request:,} events"
        )
        section.rows.append(
            Row(
                name=what,
                value=ours.rate,
                unit="events/s",
                baseline=bare.rate,
                baseline_name="bare grpc.aio servicer",
            )
        )
        section.notes.append(
            f"CPU per event, {mode}: sidecar {ours.server_us:,.1f} µs (bare servicer "
            f"{bare.server_us:,.1f} µs); the load generator spent {ours.client_us:,.1f} µs "
            f"per event on the sidecar run ({bare.client_us:,.1f} µs on the bare one)."
        )
    section.notes += [
        "The server runs in a child process of its own (multiprocessing, spawn, uvloop); "
        "this process is the load generator, so on a 2-core machine each side has a core. "
        f"The client is one grpc.aio channel with {CONCURRENCY} concurrent callers sending "
        "pre-serialized requests (distinct events in the CloudEvents protobuf format) and "
        "reading each answer; the same client and requests load both servers.",
        "The sidecar's service decodes each CloudEvent into an Event, publishes to the "
        "in-memory connector (a topic without readers, released whenever it fills) and "
        "answers once stored, with the ids. The bare servicer is the generated "
        "EventMeshServicer answering PublishResponse(stored=n) at once. Each figure is "
        f"the best of {RUNS} runs after a warm-up.",
    ]
    return section


def _profile(quick: bool) -> str:
    pool, _ = calls("batch", 50)
    return profile("bench_grpc", "sidecar-grpc", load, pool, 300 if quick else 1_000)


if __name__ == "__main__":
    sys.exit(cli(__doc__, main, _profile))
