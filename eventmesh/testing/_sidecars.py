"""Scenarios for the subscriptions the sidecar stores (issue 15), run against any
connector that keeps state: ``eventmesh run`` as a child process, a webhook sink in the
test, kill -9 and restart, and two sidecars sharing one backend.

Private to eventmesh's own tests (the core's local connector, the Kafka and NATS
plugins' tests); not a stable API.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import yaml
from aiohttp import web

from eventmesh.bindings.http import to_binary
from eventmesh.event import Event
from eventmesh.mesh import Mesh
from eventmesh.testing.polling import eventually, holds_throughout

__all__ = [
    "SidecarProcess",
    "Sink",
    "replicas_share_subscriptions",
    "sidecar_config",
    "subscription_survives_kill",
]

_RUNNING = re.compile(r"running: http (http://\S+?), grpc (\S+?), admin (http://\S+?);")
_START_TIMEOUT = 60.0
_DELIVERY_TIMEOUT = 120.0


def sidecar_config(connectors: Mapping[str, Any]) -> dict[str, Any]:
    """A sidecar config with ``connectors`` on free ports of 127.0.0.1."""
    return {
        "connectors": dict(connectors),
        "server": {
            "http": {"port": 0},
            "grpc": {"port": 0},
            "admin": {"port": 0},
            "shutdown_timeout": "5s",
        },
        "logging": {"format": "json"},
    }


class SidecarProcess:
    """``eventmesh run -c`` in a child process; its log goes to a file."""

    def __init__(self, tmp: Path, config: Mapping[str, Any], name: str) -> None:
        self.tmp = tmp
        self.config_path = tmp / f"sidecar-{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(dict(config)), encoding="utf-8")
        self.log_path = tmp / f"sidecar-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_url = ""

    def start(self) -> None:
        """Start it and wait for the log line naming its addresses."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eventmesh.cli", "run", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        offset = self.log_path.stat().st_size
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode("utf-8", "replace")
            found = _RUNNING.search(text)
            if found:
                self.http_url = found[1]
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"the sidecar did not start: {self.log()[-3000:]}")

    def log(self) -> str:
        """What it logged so far (every run)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL: nothing is closed, committed or flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@contextlib.contextmanager
def running(tmp: Path, config: Mapping[str, Any], name: str) -> Iterator[SidecarProcess]:
    """A started sidecar, stopped when the block ends."""
    sidecar = SidecarProcess(tmp, config, name)
    try:
        sidecar.start()
        yield sidecar
    finally:
        sidecar.stop()


class Sink:
    """A webhook on 127.0.0.1 that notes the id of every event POSTed to it."""

    def __init__(self, delay: float = 0.0) -> None:
        self.ids: list[str] = []
        self.delay = delay
        self.url = ""

    @property
    def counts(self) -> Counter[str]:
        """How often each id arrived."""
        return Counter(self.ids)

    async def _receive(self, request: web.Request) -> web.Response:
        await request.read()
        if self.delay:
            await anyio.sleep(self.delay)  # keeps a stream in flight when the sidecar dies
        event_id = request.headers.get("ce-id")
        if event_id is not None:
            self.ids.append(event_id)
        return web.Response(status=204)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Sink]:
        """Listen on a free port of 127.0.0.1 while the block runs."""
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        try:
            yield self
        finally:
            await runner.cleanup()


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as response:
        text = await response.text()
        try:
            data = await response.json(content_type=None) if text else None
        except ValueError:
            data = text
        return response.status, data


async def _publish(session: aiohttp.ClientSession, base: str, topic: str, event_id: str) -> bool:
    """One event over HTTP; True when the sidecar answered 202 (it is stored)."""
    event = Event(type="com.example.kept", source="/substore", id=event_id, data={"n": event_id})
    headers, body = to_binary(event)
    try:
        async with session.post(f"{base}/topics/{topic}/events", headers=headers, data=body) as r:
            await r.read()
            return r.status == 202
    except aiohttp.ClientError:
        return False


async def subscription_survives_kill(
    tmp: Path, config: Mapping[str, Any], topic: str, *, count: int = 300
) -> None:
    """Create a webhook subscription over HTTP, publish, kill -9 the sidecar while
    deliveries are in flight, publish while it is down, restart it: the subscription is
    listed again and every event accepted reaches the sink."""
    sub_id = f"kept-{uuid.uuid4().hex[:8]}"
    accepted: list[str] = []
    sink = Sink(delay=0.005)
    async with sink.serving(), aiohttp.ClientSession() as session:
        first = SidecarProcess(tmp, config, "first")
        try:
            first.start()
            status, created = await _call(
                session,
                "POST",
                f"{first.http_url}/subscriptions",
                {"id": sub_id, "topic": topic, "sink": sink.url},
            )
            assert status == 201, created

            refused = anyio.Event()

            async def publish_until_killed() -> None:
                for n in range(count):
                    event_id = f"before-{n}"
                    if not await _publish(session, first.http_url, topic, event_id):
                        refused.set()
                        return
                    accepted.append(event_id)

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish_until_killed)
                await eventually(
                    lambda: len(sink.ids) >= 30 or refused.is_set(),
                    timeout=_DELIVERY_TIMEOUT,
                    what="the first deliveries",
                )
                assert len(sink.ids) >= 30, f"a publish failed: {first.log()[-3000:]}"
                first.kill()  # mid-stream: publishes and deliveries are in flight
        finally:
            first.kill()
        assert len(accepted) >= 30

        # While no sidecar runs, producers go on through the backend itself.
        down = [
            Event(type="com.example.kept", source="/substore", id=f"down-{n}", data=n)
            for n in range(50)
        ]
        async with Mesh({"connectors": config["connectors"]}) as mesh:
            await mesh.publish(topic, down)
        accepted.extend(event.id for event in down)

        with running(tmp, config, "second") as second:
            status, resource = await _call(session, "GET", f"{second.http_url}/subscriptions")
            assert status == 200, resource
            listed = {s["id"]: s for s in resource["subscriptions"]}
            assert sub_id in listed, second.log()[-3000:]
            assert listed[sub_id]["sink"] == sink.url
            assert listed[sub_id]["origin"] == "api"
            for n in range(50):
                assert await _publish(session, second.http_url, topic, f"after-{n}")
                accepted.append(f"after-{n}")
            await eventually(
                lambda: set(accepted) <= set(sink.ids),
                timeout=_DELIVERY_TIMEOUT,
                what="every accepted event at the sink after the restart",
            )


async def replicas_share_subscriptions(
    tmp: Path, config: Mapping[str, Any], topic: str, *, count: int = 200
) -> None:
    """Two sidecars on one backend: a subscription created on one is listed on the
    other, both deliver its events (the group shares the work) and no event reaches the
    webhook twice; deleting it on one removes it from the other."""
    sub_id = f"shared-{uuid.uuid4().hex[:8]}"
    sink = Sink()
    async with sink.serving(), aiohttp.ClientSession() as session:
        with running(tmp, config, "a") as a, running(tmp, config, "b") as b:
            status, created = await _call(
                session,
                "POST",
                f"{a.http_url}/subscriptions",
                {"id": sub_id, "topic": topic, "sink": sink.url},
            )
            assert status == 201, created

            async def listed_on_b() -> bool:
                status, _ = await _call(session, "GET", f"{b.http_url}/subscriptions/{sub_id}")
                return status == 200

            await eventually(listed_on_b, timeout=_START_TIMEOUT, what="the subscription on b")

            async def delivered(sidecar: SidecarProcess) -> int:
                status, res = await _call(
                    session, "GET", f"{sidecar.http_url}/subscriptions/{sub_id}"
                )
                assert status == 200, res
                return int(res["stats"]["delivered"])

            # Warm up until both members have work: the group has settled.
            for n in range(5_000):
                assert await _publish(session, (a, b)[n % 2].http_url, topic, f"warm-{n}")
                if n % 10 == 9 and await delivered(a) > 0 and await delivered(b) > 0:
                    break
            else:
                raise AssertionError("one sidecar never got work from the shared group")

            measured = [f"shared-{n}" for n in range(count)]
            for n, event_id in enumerate(measured):
                assert await _publish(session, (a, b)[n % 2].http_url, topic, event_id)
            await eventually(
                lambda: set(measured) <= set(sink.ids),
                timeout=_DELIVERY_TIMEOUT,
                what="every event at the sink",
            )
            await holds_throughout(
                lambda: all(sink.counts[i] == 1 for i in measured),
                1.5,
                what="each event delivered once",
            )

            status, _ = await _call(session, "DELETE", f"{b.http_url}/subscriptions/{sub_id}")
            assert status == 204

            async def gone_from_a() -> bool:
                status, _ = await _call(session, "GET", f"{a.http_url}/subscriptions/{sub_id}")
                return status == 404

            await eventually(gone_from_a, timeout=_START_TIMEOUT, what="the delete on a")
