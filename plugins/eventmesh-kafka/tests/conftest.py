"""Fixtures for the Kafka connector's tests: a real Apache Kafka broker on 127.0.0.1.

``kafka_bootstrap`` is the broker: ``KAFKA_BOOTSTRAP`` when set, else one started by
``scripts/kafka.sh start``. Without a broker the tests that need one skip, unless
``CI=true``, where a missing broker is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import anyio
import pytest

from eventmesh_kafka import KafkaConfig, KafkaConnector

REPO = Path(__file__).resolve().parents[3]
KAFKA_SH = REPO / "scripts" / "kafka.sh"
START_TIMEOUT = 300  # a first start downloads Kafka from Maven Central

FAST_GROUPS: dict[str, Any] = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 300}
"""Group timings for tests: rebalances settle in a fraction of a second (6 s is the
broker's smallest allowed session timeout)."""


@pytest.fixture
def anyio_backend() -> Any:
    """asyncio with uvloop, the loop eventmesh uses by default."""
    return ("asyncio", {"use_uvloop": True})


def _unavailable(reason: str) -> NoReturn:
    message = f"Kafka broker not available: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def start_broker() -> str:
    """``host:port`` of the broker scripts/kafka.sh runs (starting it if need be)."""
    result = subprocess.run(
        [str(KAFKA_SH), "start"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or not lines[-1].startswith("KAFKA_BOOTSTRAP="):
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"scripts/kafka.sh start exited {result.returncode}: {tail}")
    return lines[-1].split("=", 1)[1]


def _running() -> bool:
    """Whether scripts/kafka.sh already runs a broker (one this session must not stop)."""
    done = subprocess.run([str(KAFKA_SH), "env"], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap address of a running broker. One started here is stopped, and its
    data deleted, when the session ends; one that was running already is left as it was."""
    address = os.environ.get("KAFKA_BOOTSTRAP")
    if address:
        yield address
        return
    if not KAFKA_SH.exists():
        _unavailable(f"{KAFKA_SH} is missing")
    was_running = _running()
    try:
        address = start_broker()
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        _unavailable(str(exc))
    try:
        yield address
    finally:
        if not was_running:
            subprocess.run([str(KAFKA_SH), "clean"], capture_output=True, timeout=120, check=False)


@pytest.fixture
def kafka_config(kafka_bootstrap: str) -> KafkaConfig:
    """Settings for a connector to the test broker: topics of 4 partitions, fast groups."""
    return KafkaConfig(
        bootstrap_servers=kafka_bootstrap,
        partitions=4,
        request_timeout_ms=10_000,
        **FAST_GROUPS,
    )


@pytest.fixture
async def kafka(kafka_config: KafkaConfig) -> AsyncIterator[KafkaConnector]:
    """An open Kafka connector."""
    async with KafkaConnector(kafka_config) as connector:
        yield connector


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


RawRecord = dict[str, Any]
"""A record for :func:`produce_raw`: ``value`` and ``key`` (text or None), ``headers``
(name, value) pairs, ``partition``, ``timestamp_ms``, and ``unreadable: True`` for a
header whose name is not UTF-8. A list of records is sent as one batch."""

_PRODUCE_RAW = r"""
import asyncio, json, os, sys
from aiokafka import AIOKafkaProducer

class NotUtf8(str):  # aiokafka's pure-Python encoder writes what encode() returns
    def encode(self, *args, **kwargs):
        return b"ce_\xff\xfe"

def options(record):
    headers = [(name, value.encode()) for name, value in record.get("headers", [])]
    if record.get("unreadable"):
        headers.append((NotUtf8("x"), b"v"))
    encode = lambda text: None if text is None else text.encode()
    return dict(
        value=encode(record.get("value")), key=encode(record.get("key")), headers=headers,
        partition=record.get("partition", 0), timestamp_ms=record.get("timestamp_ms"),
    )

async def main(bootstrap, topic, sends):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=100)
    await producer.start()
    try:
        for send in sends:
            batch = send if isinstance(send, list) else [send]
            futures = [await producer.send(topic, **options(r)) for r in batch]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()

asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
"""


@pytest.fixture
def produce_raw(kafka_bootstrap: str) -> Callable[[str, list[Any]], Awaitable[None]]:
    """Send records as a foreign producer would, including ones aiokafka cannot read back
    (a header name that is not UTF-8: its pure-Python encoder sends any bytes)."""

    async def produce(topic: str, sends: list[RawRecord | list[RawRecord]]) -> None:
        env = {**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"}
        args = [sys.executable, "-c", _PRODUCE_RAW, kafka_bootstrap, topic, json.dumps(sends)]
        with anyio.fail_after(60):
            done = await anyio.run_process(args, env=env, check=False)
        assert done.returncode == 0, done.stderr.decode()

    return produce
