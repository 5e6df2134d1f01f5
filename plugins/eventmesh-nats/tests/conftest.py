"""Fixtures for the NATS connector's tests: a real nats-server on 127.0.0.1.

``nats_url`` is the server: ``NATS_URL`` when set, else one started by
``scripts/nats.sh start``. Without a server the broker tests skip, unless ``CI=true``,
where a missing server is a failure.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from eventmesh_nats import NatsConfig, NatsConnector, StreamSettings

REPO = Path(__file__).resolve().parents[3]
NATS_SH = REPO / "scripts" / "nats.sh"


@pytest.fixture
def anyio_backend() -> Any:
    """asyncio with uvloop, the loop eventmesh uses by default."""
    return ("asyncio", {"use_uvloop": True})


def _unavailable(reason: str) -> None:
    message = f"nats-server not available: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """The URL of a running nats-server with JetStream. One started here is stopped, and
    its store deleted, when the session ends; one that was running already is left."""
    url = os.environ.get("NATS_URL")
    if url:
        yield url
        return
    running = subprocess.run([str(NATS_SH), "env"], capture_output=True, timeout=30, check=False)
    try:
        done = subprocess.run(
            [str(NATS_SH), "start"], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"{NATS_SH} start failed: {exc}")
        raise AssertionError("unreachable") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("NATS_URL="):
        _unavailable(f"{NATS_SH} start exited {done.returncode}: {done.stderr.strip()[-500:]}")
    try:
        yield lines[-1].split("=", 1)[1]
    finally:
        if running.returncode != 0:
            subprocess.run([str(NATS_SH), "clean"], capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="session")
def stream_prefix(nats_url: str) -> Iterator[str]:
    """A stream-name prefix for this test session; its streams (and the KV buckets of
    the mesh's state, ``KV_<prefix>STATE_*``) are deleted at the end."""
    prefix = f"EMTEST{uuid.uuid4().hex[:8]}_"
    yield prefix
    import asyncio

    import nats

    async def delete() -> None:
        nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            names: list[str] = []
            while page := await js.streams_info(offset=len(names)):
                names += [info.config.name or "" for info in page]
            for name in names:
                if name.startswith((prefix, f"KV_{prefix}")):  # KV: the mesh's state buckets
                    await js.delete_stream(name)
        finally:
            await nc.close()

    try:
        asyncio.run(delete())
    except Exception as exc:  # clean-up only: a failure here must not fail the session
        print(f"could not delete test streams {prefix}*: {exc!r}")


@pytest.fixture(scope="session")
def nats_sh() -> Path:
    """scripts/nats.sh of this repository."""
    return NATS_SH


@pytest.fixture
def mesh_config(nats_url: str, stream_prefix: str) -> Callable[..., dict[str, Any]]:
    """Build a Mesh config with one NATS connector in this session's namespace."""

    def build(**options: Any) -> dict[str, Any]:
        connector = {
            "type": "nats",
            "servers": [nats_url],
            "subject_prefix": f"{stream_prefix.lower()}.",
            "stream": {"name_prefix": stream_prefix},
            **options,
        }
        return {"connectors": {"default": connector}}

    return build


@pytest.fixture
async def raw_nats(nats_url: str) -> AsyncIterator[Any]:
    """A plain nats-py connection: the foreign client in interop tests."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
def make(nats_url: str, stream_prefix: str) -> Callable[..., Any]:
    """Build a connector in this session's subject and stream namespace (keyword
    arguments are NatsConfig fields)."""

    def build(**options: Any) -> NatsConnector:
        options.setdefault("subject_prefix", f"{stream_prefix.lower()}.")
        options.setdefault("stream", StreamSettings(name_prefix=stream_prefix))
        return NatsConnector(NatsConfig(servers=[nats_url], **options))

    return build
