"""A real HTTP API to test against: an in-memory Mesh, its Registry and the app on
127.0.0.1, port 0, with a client session that speaks JSON through msgspec."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import anyio.abc
import msgspec
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from eventmesh import Event, Mesh
from eventmesh.config import HttpListener
from eventmesh.server.http import create_app
from eventmesh.server.subscriptions import Registry


@dataclass
class Answer:
    """An HTTP answer: status, the JSON body decoded (None when empty), the headers."""

    status: int
    body: Any
    headers: CIMultiDictProxy[str]


@dataclass
class Served:
    """A running HTTP API and what is behind it."""

    mesh: Mesh
    registry: Registry
    url: str
    session: aiohttp.ClientSession
    tasks: anyio.abc.TaskGroup
    """A task group entered before the mesh and the registry: tasks started in it may
    outlive ``registry.close()`` called in the block."""

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send a request; ``json`` is encoded with msgspec, ``data`` sent as it is."""
        if json is not None:
            data = msgspec.json.encode(json)
            headers = {"Content-Type": "application/json", **(headers or {})}
        async with self.session.request(
            method, self.url + path, data=data, headers=headers
        ) as response:
            raw = await response.read()
            body = msgspec.json.decode(raw) if raw else None
            return Answer(response.status, body, response.headers)

    async def read_topic(self, topic: str, count: int) -> list[Event]:
        """The first ``count`` events stored on ``topic`` (a new group, from the start)."""
        got: list[Event] = []
        if not count:
            return got
        group = f"reader-{uuid.uuid4().hex}"
        with anyio.fail_after(10):
            async with self.mesh.subscribe(topic, group, start="earliest") as sub:
                async for delivery in sub:
                    got.append(delivery.event)
                    await delivery.ack()
                    if len(got) == count:
                        break
        return got


Serve = Callable[..., AbstractAsyncContextManager[Served]]


@asynccontextmanager
async def _serve(
    config: Any = None, *, http: Mapping[str, Any] | None = None, keepalive: float = 15.0
) -> AsyncIterator[Served]:
    settings = HttpListener(**(http or {}))
    async with anyio.create_task_group() as tasks, Mesh(config) as mesh, Registry(mesh) as registry:
        runner = web.AppRunner(create_app(mesh, registry, settings, keepalive=keepalive))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            async with aiohttp.ClientSession() as session:
                yield Served(mesh, registry, f"http://{host}:{port}", session, tasks)
            await registry.close()
        finally:
            await runner.cleanup()


@pytest.fixture
def serve() -> Serve:
    """``async with serve(config, http={...}) as api``: the HTTP API over a new Mesh.

    ``api.registry.close()`` leaves the registry's task group, so call it only where no
    task group or cancel scope was entered inside the block (start concurrent work in
    ``api.tasks``, and put ``fail_after`` around the whole block)."""
    return _serve
