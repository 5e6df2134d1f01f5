"""Remote subscriptions: events from a sidecar to a handler and to an iterator in the SDK.

A stored backlog is read by one remote subscription, over HTTP (a pull subscription:
long polls, one ack request per event) and over gRPC (one Subscribe stream), in handler
and iterator form, against the same backlog read by an embedded subscription in the
same run. Sidecar and client share this process and its loop (the HTTP app and gRPC
service over an in-memory Mesh, as tests/sdk does), so the CPU figure is both sides'.

    python benchmarks/run.py remote --quick --no-write
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Final

import anyio
import uvloop
from harness import Measure, Row, Section, interleave

from eventmesh import Event, Mesh
from eventmesh._client import Client

TITLE = "Remote subscriptions (sidecar to SDK handler or iterator)"
BATCH: Final = 100
Connect = Callable[[], AbstractAsyncContextManager[Client]]


@contextlib.asynccontextmanager
async def _embedded() -> AsyncIterator[Client]:
    async with Mesh() as mesh:
        yield mesh


@contextlib.asynccontextmanager
async def _http() -> AsyncIterator[Client]:
    from aiohttp import web

    from eventmesh.client.http import HttpClient
    from eventmesh.config import HttpListener
    from eventmesh.server.http import create_app
    from eventmesh.server.subscriptions import Registry

    async with Mesh() as mesh, Registry(mesh) as registry:
        runner = web.AppRunner(create_app(mesh, registry, HttpListener()))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            async with HttpClient(f"http://{host}:{port}") as client:
                yield client
        finally:
            await registry.close()  # ends long polls, which the runner would wait for
            await runner.cleanup()


@contextlib.asynccontextmanager
async def _grpc() -> AsyncIterator[Client]:
    import grpc

    from eventmesh.client.grpc import GrpcClient
    from eventmesh.server.grpc import add_to_server

    async with Mesh() as mesh:
        server = grpc.aio.server()
        add_to_server(server, mesh)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with GrpcClient(f"127.0.0.1:{port}") as client:
                yield client
        finally:
            await server.stop(grace=None)


async def _handler(connect: Connect, count: int) -> float:
    """Events/s from the subscription's start until its handler saw the whole backlog."""
    async with connect() as client:
        for i in range(0, count, BATCH):
            await client.publish("bench", [_event(n) for n in range(i, min(i + BATCH, count))])
        done = anyio.Event()
        seen = 0

        async def handle(event: Event) -> None:
            nonlocal seen
            seen += 1
            if seen == count:
                done.set()

        start = time.perf_counter()
        async with client.subscribe("bench", "g", handler=handle, start="earliest"):
            await done.wait()
        return count / (time.perf_counter() - start)


async def _iterator(connect: Connect, count: int) -> float:
    """Events/s iterated and acked one by one from the subscription's start."""
    async with connect() as client:
        for i in range(0, count, BATCH):
            await client.publish("bench", [_event(n) for n in range(i, min(i + BATCH, count))])
        seen = 0
        start = time.perf_counter()
        async with client.subscribe("bench", "g", start="earliest") as sub:
            async for delivery in sub:
                await delivery.ack()
                seen += 1
                if seen == count:
                    break
        return count / (time.perf_counter() - start)


def _event(n: int) -> Event:
    return Event(type="bench", source="/bench", data={"n": n})


def _measure(form: Callable[[Connect, int], object], connect: Connect, count: int) -> Measure:
    cpu = time.process_time()
    rate = uvloop.run(form(connect, count))  # type: ignore[arg-type]
    return Measure(rate=rate, cpu_us=(time.process_time() - cpu) / count * 1e6)


def main(quick: bool) -> Section:
    count = 3_000 if quick else 10_000
    section = Section(TITLE)
    for form_name, form in (("handler", _handler), ("iterator", _iterator)):
        print(f"  {form_name}", flush=True)
        medians = interleave(
            3,
            {
                name: functools.partial(_measure, form, connect, count)
                for name, connect in (("embedded", _embedded), ("http", _http), ("grpc", _grpc))
            },
        )
        embedded = medians["embedded"]
        for name in ("http", "grpc"):
            remote = medians[name]
            section.rows.append(
                Row(
                    name=f"{form_name} over {name.upper()}, {count:,} events",
                    value=remote.rate,
                    unit="events/s",
                    baseline=embedded.rate,
                    baseline_name=f"embedded {form_name}",
                    load=f"{remote.load} (baseline {embedded.load})",
                )
            )
            section.notes.append(
                f"{form_name} over {name.upper()}: CPU per event (sidecar and client, "
                f"start-up included) {remote.cpu_us:.1f} µs against {embedded.cpu_us:.1f} µs "
                "embedded."
            )
    return section
