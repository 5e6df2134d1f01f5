"""One connected client per transport, so each SDK scenario runs embedded, over HTTP and
over gRPC against the same in-memory mesh."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

import eventmesh
from eventmesh._client import Client
from eventmesh.client.http import HttpClient
from eventmesh.config import HttpListener


@asynccontextmanager
async def _embedded() -> AsyncIterator[Client]:
    async with eventmesh.Mesh() as mesh:
        yield mesh


@asynccontextmanager
async def _http(settings: HttpListener | None = None) -> AsyncIterator[HttpClient]:
    """An HttpClient on a sidecar's HTTP app (``settings`` gives its limits)."""
    from aiohttp import web

    from eventmesh.server.http import create_app
    from eventmesh.server.subscriptions import Registry

    async with eventmesh.Mesh() as mesh, Registry(mesh) as registry:
        runner = web.AppRunner(create_app(mesh, registry, settings or HttpListener()))
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


@asynccontextmanager
async def _grpc() -> AsyncIterator[Client]:
    import grpc

    from eventmesh.client.grpc import GrpcClient
    from eventmesh.server.grpc import add_to_server

    async with eventmesh.Mesh() as mesh:
        server = grpc.aio.server()
        add_to_server(server, mesh)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with GrpcClient(f"127.0.0.1:{port}") as client:
                yield client
        finally:
            await server.stop(grace=None)


_TRANSPORTS: dict[str, Callable[[], AbstractAsyncContextManager[Client]]] = {
    "embedded": _embedded,
    "http": _http,
    "grpc": _grpc,
}


@pytest.fixture(params=sorted(_TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    """The name of the transport under test: embedded, grpc or http."""
    name: str = request.param
    return name


@pytest.fixture
async def client(transport: str) -> AsyncIterator[Client]:
    """A connected client of the transport; the mesh behind it is new and in memory."""
    async with _TRANSPORTS[transport]() as connected:
        yield connected


@pytest.fixture
def http_sidecar() -> Callable[..., AbstractAsyncContextManager[HttpClient]]:
    """Opens an HttpClient on a new sidecar: ``async with http_sidecar(settings) as c``."""
    return _http
