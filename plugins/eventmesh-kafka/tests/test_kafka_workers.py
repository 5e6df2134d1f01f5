"""eventmesh run --workers 2 over a real Kafka broker: both workers listen on the same
ports, join the same consumer group, and the events published through the shared HTTP
port are all delivered; SIGTERM to the parent stops every worker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient

from eventmesh import Event
from eventmesh.bindings.http import to_batch
from eventmesh.testing.polling import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]


@pytest.fixture
def ports() -> Iterator[list[int]]:
    """Three ports (HTTP, gRPC, admin) held for the workers while the test runs: bound
    with SO_REUSEPORT and kept open, never listening (so they take no connections). The
    workers bind them beside these sockets, and nothing else can take one in between,
    as it could a port bound, released and only then handed to the workers."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(3):
            sock = stack.enter_context(socket.socket())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        yield ports


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its socket inodes in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _start(config: Path, *args: str) -> subprocess.Popen[bytes]:
    """``eventmesh run -c config *args`` in the config's directory."""
    return subprocess.Popen(
        [sys.executable, "-m", "eventmesh.cli", "run", "-c", str(config), *args],
        cwd=config.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so a failing test can kill the workers with it
    )


def _kill_all(parent: subprocess.Popen[bytes]) -> None:
    """SIGKILL the parent and its workers (one process group) and reap the parent."""
    try:
        os.killpg(parent.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    parent.wait()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for init to reap counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_two_workers_share_the_ports_and_the_consumer_group(
    kafka_bootstrap: str, tmp_path: Path, ports: list[int]
) -> None:
    """Both workers listen on the HTTP, gRPC and admin ports; the subscription's Kafka
    group has two members; 200 events published through the shared port all reach the
    webhook; SIGTERM to the parent stops both workers and it exits 0."""
    topic = f"workers-{uuid.uuid4().hex[:8]}"
    group = f"workers-{uuid.uuid4().hex[:8]}"
    received: set[str] = set()

    async def receive(request: web.Request) -> web.Response:
        received.update(e["id"] for e in json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/events", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook = f"http://127.0.0.1:{runner.addresses[0][1]}/events"
    http, grpc, admin = ports
    config: dict[str, Any] = {
        "connectors": {
            "default": {
                "type": "kafka",
                "bootstrap_servers": kafka_bootstrap,
                "partitions": 4,
                "session_timeout_ms": 6_000,
                "heartbeat_interval_ms": 300,
            }
        },
        "subscriptions": [
            {
                "name": "push",
                "topic": topic,
                "group": group,
                "start": "earliest",
                "sink": {"webhook": hook, "mode": "batch"},
            }
        ],
        "server": {"http": {"port": http}, "grpc": {"port": grpc}, "admin": {"port": admin}},
    }
    path = tmp_path / "mesh.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    parent = _start(path, "--workers", "2")
    try:
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{admin}/healthz") as answer:
                        return answer.status == 200
                except aiohttp.ClientError:
                    return False

            with anyio.fail_after(120):
                while not await healthy():
                    assert parent.poll() is None, "the run stopped while starting"
                    await anyio.sleep(0.1)
            workers = _children(parent.pid)
            assert len(workers) == 2
            await eventually(
                lambda: all({http, grpc, admin} <= _listening_ports(w) for w in workers),
                timeout=60,
                what="both workers listening on every port",
            )
            kafka = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await kafka.start()
            try:
                members = 0
                with anyio.fail_after(90):
                    while members != 2:
                        described = await kafka.describe_consumer_groups([group])
                        members = len(described[0].groups[0][5])  # (.., members)
                        await anyio.sleep(0.2)
            finally:
                await kafka.close()
            events = [Event(type="t", source="/workers", data={"n": n}) for n in range(200)]
            for i in range(0, 200, 20):
                headers, body = to_batch(events[i : i + 20])
                async with session.post(
                    f"http://127.0.0.1:{http}/topics/{topic}/events", data=body, headers=headers
                ) as answer:
                    assert answer.status == 202, await answer.text()
            await eventually(lambda: received >= {e.id for e in events}, timeout=60)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0
        assert not any(_alive(w) for w in workers)
    finally:
        _kill_all(parent)
        await runner.cleanup()


async def test_workers_stop_when_the_parent_is_killed(
    kafka_bootstrap: str, tmp_path: Path, ports: list[int]
) -> None:
    """SIGKILL, which the parent cannot forward, still stops both workers (Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    http, grpc, admin = ports
    config = {
        "connectors": {"default": {"type": "kafka", "bootstrap_servers": kafka_bootstrap}},
        "server": {"http": {"port": http}, "grpc": {"port": grpc}, "admin": {"port": admin}},
    }
    path = tmp_path / "mesh.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    parent = _start(path, "--workers", "2")
    try:
        await eventually(lambda: len(_children(parent.pid)) == 2, timeout=60)
        workers = _children(parent.pid)
        parent.kill()
        parent.wait()
        await eventually(lambda: not any(_alive(w) for w in workers), timeout=60)
    finally:
        _kill_all(parent)
