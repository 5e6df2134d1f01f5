"""Remote clients closing with work in flight: a handler's reply still stored, a call
cut short by the close an EventMeshError (never a bare CancelledError)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

import eventmesh
from eventmesh import Event, EventMeshError
from eventmesh._client import Client
from eventmesh.testing.polling import eventually

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def _sidecar(transport: str) -> AsyncIterator[tuple[eventmesh.Mesh, Client]]:
    """An in-memory mesh served over ``transport``, and a client of it (not entered)."""
    async with eventmesh.Mesh() as mesh:
        if transport == "grpc":
            import grpc

            from eventmesh.client.grpc import GrpcClient
            from eventmesh.server.grpc import add_to_server

            server = grpc.aio.server()
            add_to_server(server, mesh)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            try:
                yield mesh, GrpcClient(f"127.0.0.1:{port}")
            finally:
                await server.stop(grace=None)
        else:
            from aiohttp import web

            from eventmesh.client.http import HttpClient
            from eventmesh.config import HttpListener
            from eventmesh.server.http import create_app
            from eventmesh.server.subscriptions import Registry

            async with Registry(mesh) as registry:
                runner = web.AppRunner(create_app(mesh, registry, HttpListener()))
                await runner.setup()
                try:
                    await web.TCPSite(runner, "127.0.0.1", 0).start()
                    host, port = runner.addresses[0][:2]
                    yield mesh, HttpClient(f"http://{host}:{port}")
                finally:
                    await registry.close()
                    await runner.cleanup()


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_a_reply_returned_while_the_client_closes_is_stored(transport: str) -> None:
    """A handler still running when the client closes finishes, and the event it returns
    is published to reply_to (the gRPC client refused it as closed: the reply was lost
    and the event delivered again)."""
    started = anyio.Event()

    async def handler(event: Event) -> Event:
        started.set()
        await anyio.sleep(0.3)  # the client starts closing meanwhile
        return Event(type="reply", source="/handler")

    with anyio.fail_after(30):
        async with _sidecar(transport) as (mesh, client):
            replies = await mesh.subscribe("replies", "g", start="earliest")
            async with client:
                await client.subscribe(
                    "in", "g", handler=handler, reply_to="replies", start="earliest"
                )
                await client.publish("in", Event(type="t", source="/s"))
                await started.wait()
            async for delivery in replies:
                assert delivery.event.type == "reply"
                await delivery.ack()
                break


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_a_request_cut_short_by_the_close_is_an_eventmesh_error(transport: str) -> None:
    """A request waiting for a reply when another task closes the client raises an
    EventMeshError (gRPC raised a bare CancelledError, which a task group then dropped
    without a word)."""
    raised: list[BaseException] = []

    async def ask(client: Client) -> None:
        try:
            await client.request("nobody", Event(type="t", source="/s"), timeout=20)
        except BaseException as exc:
            raised.append(exc)

    with anyio.fail_after(30):
        async with _sidecar(transport) as (_, client), anyio.create_task_group() as tg:
            async with client:
                tg.start_soon(ask, client)
                await anyio.sleep(0.3)  # the request waits for a reply
            await eventually(lambda: bool(raised), timeout=5)
    assert isinstance(raised[0], EventMeshError), repr(raised[0])
