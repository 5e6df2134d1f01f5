"""Helpers of the interop suite: foreign CloudEvents clients against a real sidecar.

The clients are built from tests/interop/<name>/ by ``scripts/interop.sh <name>`` into the
repository's ignored ``.cache/`` (with the network the first time, from the cache after).
A toolchain or build that fails skips the tests that need it, with the reason, unless
``CI=true``, where it is a failure. Every foreign process runs under ``timeout`` and is
stopped when its test ends; everything listens on 127.0.0.1.

An event crosses the process boundary as a *spec*: a JSON object with ``specversion``,
``id``, ``source``, ``type``, the optional ``datacontenttype``, ``dataschema``, ``subject``
and ``time``, ``extensions`` (name to value) and ``data_b64`` (the data bytes exactly, in
base64, or null). The Go and Java programs read specs to send and print specs of what
their SDK read, and the tests compare specs field by field.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import anyio
import anyio.abc
import msgspec
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from eventmesh.server.sidecar import Sidecar

REPO = Path(__file__).resolve().parents[2]
INTEROP_SH = REPO / "scripts" / "interop.sh"
BUILD_TIMEOUT = 900  # a first build downloads the SDKs and their dependencies
PROCESS_TIMEOUT = 300  # no foreign process outlives this, whatever the test does
WAIT = 60.0  # seconds a test waits for one thing that should come at once

Spec = dict[str, Any]
ATTRIBUTES = ("specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject")


# -- the foreign clients ------------------------------------------------------------------


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail under ``CI=true``, where every client must build."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def build(name: str) -> list[str]:
    """The command line that runs the client ``name``, built by scripts/interop.sh."""
    try:
        done = subprocess.run(
            [str(INTEROP_SH), name],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
            cwd=REPO,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"scripts/interop.sh {name} could not run: {exc}")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("RUN="):
        tail = "\n".join((done.stderr.strip() or done.stdout.strip()).splitlines()[-15:])
        unavailable(f"scripts/interop.sh {name} exited {done.returncode}:\n{tail}")
    return shlex.split(lines[-1].removeprefix("RUN="))


class Process:
    """A foreign program run under ``timeout``: its stdout read line by line."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self._buffer = b""
        self.stderr = b""

    async def line(self, timeout: float = WAIT) -> str:
        """The next line the program prints; AssertionError if it ends or stays silent."""
        assert self.process.stdout is not None
        with anyio.move_on_after(timeout):
            while b"\n" not in self._buffer:
                try:
                    self._buffer += await self.process.stdout.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    break
        if b"\n" not in self._buffer:
            raise AssertionError(f"no line from the program in {timeout} s: {await self.err()}")
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    async def spec(self, timeout: float = WAIT) -> Spec:
        """The next line, a JSON spec of an event the program's SDK read."""
        line = await self.line(timeout)
        value: Spec = json.loads(line)
        return value

    async def err(self) -> str:
        """What the program printed on stderr so far (once it ended), for messages."""
        if self.process.returncode is None or self.process.stderr is None:
            return "(still running)"
        with anyio.move_on_after(1):
            async for chunk in self.process.stderr:
                self.stderr += chunk
        return self.stderr.decode(errors="replace")[-2000:]


@asynccontextmanager
async def foreign(command: Sequence[str], *, stdin: bytes | None = None) -> AsyncIterator[Process]:
    """Run ``command`` (bounded by ``timeout``); with ``stdin``, write it and close stdin,
    else keep stdin open until the block ends (the programs stop when it closes). The
    program is killed if it has not ended a few seconds after."""
    process = await anyio.open_process(
        ["timeout", "-k", "5", str(PROCESS_TIMEOUT), *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    try:
        if stdin is not None:
            await process.stdin.send(stdin)
            await process.stdin.aclose()
        yield Process(process)
    finally:
        with anyio.CancelScope(shield=True):
            if stdin is None:
                await process.stdin.aclose()
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


async def run(command: Sequence[str], stdin: bytes, timeout: float = WAIT * 2) -> str:
    """Run ``command`` (bounded by ``timeout``) to its end with ``stdin``; its stdout.
    AssertionError if it fails."""
    with anyio.fail_after(timeout):
        done = await anyio.run_process(
            ["timeout", "-k", "5", str(int(timeout)), *command], input=stdin, check=False
        )
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise AssertionError(f"{' '.join(command[-3:])} exited {done.returncode}: {tail}")
    return done.stdout.decode()


@asynccontextmanager
async def go_receiver(go_sdk: list[str], reply: Spec | None, tmp: Path) -> AsyncIterator[Any]:
    """The Go SDK's webhook sink; yields (its URL, the process printing what it read)."""
    command = [*go_sdk, "receive"]
    if reply is not None:
        path = tmp / f"reply-{reply['id']}.json"
        path.write_text(json.dumps(reply))
        command.append(str(path))
    async with foreign(command) as process:
        port = (await process.line()).removeprefix("PORT ")
        yield f"http://127.0.0.1:{int(port)}/", process


# -- a raw webhook sink, which the Python SDK reads --------------------------------------


@dataclass
class Request:
    """One POST a webhook sink got: its headers and its body, as they came."""

    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class Sink:
    """An HTTP server on 127.0.0.1 that keeps every request and answers ``answer``."""

    url: str = ""
    answer: tuple[int, Mapping[str, str], bytes] = (202, {}, b"")
    send: Any = None
    receive: Any = None
    seen: list[Request] = field(default_factory=list)

    async def next(self, timeout: float = WAIT) -> Request:
        """The next request; TimeoutError if none comes within ``timeout``."""
        with anyio.fail_after(timeout):
            request: Request = await self.receive.receive()
        return request


@asynccontextmanager
async def raw_sink() -> AsyncIterator[Sink]:
    """A :class:`Sink` listening on a free port of 127.0.0.1 for the block's length."""
    sink = Sink()
    sink.send, sink.receive = anyio.create_memory_object_stream[Request](1000)

    async def handle(request: web.Request) -> web.Response:
        got = Request(CIMultiDictProxy(CIMultiDict(request.headers)), await request.read())
        sink.seen.append(got)
        sink.send.send_nowait(got)
        status, headers, body = sink.answer
        return web.Response(status=status, headers=headers, body=body)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sink.url = f"http://127.0.0.1:{port}/events"
    try:
        yield sink
    finally:
        await runner.cleanup()


# -- the sidecar --------------------------------------------------------------------------


def sidecar_config(
    subscriptions: list[dict[str, Any]], connector: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A sidecar on free ports of 127.0.0.1 with ``subscriptions`` (the config file's
    form) on ``connector`` (the in-memory one by default)."""
    config: dict[str, Any] = {
        "subscriptions": subscriptions,
        "server": {
            "http": {"port": 0},
            "grpc": {"port": 0},
            "admin": {"port": 0},
            "shutdown_timeout": "5s",
        },
    }
    if connector is not None:
        config["connectors"] = {"default": dict(connector)}
    return config


def webhook(
    name: str, topic: str, url: str, *, reply_to: str | None = None, **sink: Any
) -> dict[str, Any]:
    """A subscription (config form) pushing ``topic`` to ``url`` from its start."""
    subscription: dict[str, Any] = {
        "name": name,
        "topic": topic,
        "start": "earliest",
        "sink": {"webhook": url, **sink},
        "delivery": {"max_attempts": 3, "backoff": {"initial": "50ms"}},
    }
    if reply_to is not None:
        subscription["reply_to"] = reply_to
    return subscription


@asynccontextmanager
async def sidecar(config: Mapping[str, Any]) -> AsyncIterator[Sidecar]:
    """A running sidecar with ``config``, closed when the block ends."""
    async with Sidecar(dict(config)) as running:
        yield running


# -- specs --------------------------------------------------------------------------------


def data_of(spec: Spec) -> bytes | None:
    """The data bytes a spec carries."""
    encoded = spec.get("data_b64")
    return None if encoded is None else base64.b64decode(encoded)


def with_data(spec: Spec, data: bytes | None) -> Spec:
    """``spec`` carrying ``data``."""
    return {**spec, "data_b64": None if data is None else base64.b64encode(data).decode()}


_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$", re.I)


def instant(value: str) -> tuple[int, int]:
    """An RFC 3339 time as (seconds since the epoch, nanoseconds): two spellings of one
    instant compare equal, and a lost digit does not."""
    match = _TIME.match(value)
    assert match is not None, f"not an RFC 3339 time: {value!r}"
    whole, fraction, offset = match.groups()
    offset = "+00:00" if offset.upper() == "Z" else offset
    seconds = int(datetime.fromisoformat(whole + offset).astimezone(UTC).timestamp())
    return seconds, int((fraction or "").ljust(9, "0"))


def assert_same_event(seen: Spec, sent: Spec, *, json_value: bool = False) -> None:
    """``seen`` is ``sent``: every attribute, every extension, the data bytes, one by one
    (``time`` as an instant to the nanosecond). With ``json_value``, JSON data is compared
    as the value it spells, for a reader that re-encodes it (its bytes are checked
    elsewhere)."""
    for name in ATTRIBUTES:
        expected = "1.0" if name == "specversion" and name not in sent else sent.get(name)
        assert seen.get(name) == expected, f"{name}: got {seen.get(name)!r}, sent {expected!r}"
    if sent.get("time") is None:
        assert seen.get("time") is None, f"time: got {seen.get('time')!r}, sent none"
    else:
        assert seen.get("time") is not None, f"time: lost (sent {sent['time']!r})"
        assert instant(seen["time"]) == instant(sent["time"]), (
            f"time: got {seen['time']!r}, sent {sent['time']!r}"
        )
    extensions, expected_extensions = seen.get("extensions") or {}, sent.get("extensions") or {}
    for name in sorted(set(extensions) | set(expected_extensions)):
        assert extensions.get(name) == expected_extensions.get(name), (
            f"extension {name}: got {extensions.get(name)!r}, sent "
            f"{expected_extensions.get(name)!r}"
        )
    got, expected = data_of(seen), data_of(sent)
    json_data = is_json(sent.get("datacontenttype"))
    if json_value and json_data and got is not None and expected is not None:
        got, expected = json.loads(got), json.loads(expected)
    assert got == expected, f"data: got {got!r}, sent {expected!r}"


# -- an independent reader and writer of the HTTP binding (the tests' oracle) -------------

STRUCTURED = "application/cloudevents+json"


def is_json(content_type: str | None) -> bool:
    """Whether data under ``content_type`` is JSON (no type counts as JSON)."""
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json") or media == "text/json"


def spec_from_http(headers: Mapping[str, str], body: bytes) -> Spec:
    """The spec of an HTTP request in binary or structured mode, read by the spec's
    rules, without eventmesh's code: ``ce-`` headers percent-decoded, the body or the
    ``data`` member's own bytes (``data_base64`` decoded) as the data."""
    content_type = headers.get("content-type")
    spec: Spec = {"extensions": {}}
    if content_type is not None and content_type.split(";")[0].strip().lower() == STRUCTURED:
        members = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
        for name, raw in members.items():
            if name in ("data", "data_base64"):
                continue
            value = msgspec.json.decode(raw)
            if name in (*ATTRIBUTES, "time"):
                spec[name] = value
            else:
                spec["extensions"][name] = value
        data: bytes | None = None
        if "data_base64" in members:
            data = base64.b64decode(msgspec.json.decode(members["data_base64"]))
        elif "data" in members:
            raw_data = bytes(members["data"])
            value = msgspec.json.decode(raw_data)
            if is_json(spec.get("datacontenttype")) or not isinstance(value, str):
                data = raw_data
            else:
                data = value.encode()
        return with_data(spec, data)
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("ce-"):
            decoded = urllib.parse.unquote(value, errors="strict")
            if lower[3:] in (*ATTRIBUTES, "time"):
                spec[lower[3:]] = decoded
            else:
                spec["extensions"][lower[3:]] = decoded
    if content_type is not None:
        spec["datacontenttype"] = content_type
    return with_data(spec, body or None)


def spec_to_binary(spec: Spec) -> tuple[dict[str, str], bytes]:
    """Headers and body of ``spec`` in binary mode, percent-encoded as the binding says
    (space, ``"``, ``%`` and everything outside printable ASCII)."""
    headers: dict[str, str] = {}
    for name in (*ATTRIBUTES, "time"):
        if name != "datacontenttype" and spec.get(name) is not None:
            headers[f"ce-{name}"] = _quote(spec[name])
    headers.setdefault("ce-specversion", "1.0")
    for name, value in (spec.get("extensions") or {}).items():
        headers[f"ce-{name}"] = _quote(str(value))
    if spec.get("datacontenttype") is not None:
        headers["content-type"] = spec["datacontenttype"]
    return headers, data_of(spec) or b""


def _quote(value: str) -> str:
    return "".join(
        char if 0x21 <= ord(char) <= 0x7E and char not in '"%' else urllib.parse.quote(char)
        for char in value
    )


def spec_to_structured(spec: Spec) -> tuple[dict[str, str], bytes]:
    """Headers and body of ``spec`` in structured mode: JSON data as a member written as
    is, other data as a string (UTF-8 text) or ``data_base64``."""
    members: list[str] = []
    for name in (*ATTRIBUTES, "time"):
        if spec.get(name) is not None:
            members.append(f"{json.dumps(name)}:{json.dumps(spec[name])}")
    if "specversion" not in spec:
        members.append('"specversion":"1.0"')
    for name, value in (spec.get("extensions") or {}).items():
        members.append(f"{json.dumps(name)}:{json.dumps(value)}")
    data = data_of(spec)
    if data is not None:
        if is_json(spec.get("datacontenttype")):
            members.append('"data":' + data.decode())
        elif (spec.get("datacontenttype") or "").startswith("text/"):
            members.append(f'"data":{json.dumps(data.decode())}')
        else:
            members.append(f'"data_base64":"{base64.b64encode(data).decode()}"')
    return {"content-type": STRUCTURED}, ("{" + ",".join(members) + "}").encode()


def spec_to_http(spec: Spec, mode: str) -> tuple[dict[str, str], bytes]:
    """Headers and body of ``spec`` in ``mode`` (binary or structured)."""
    return spec_to_binary(spec) if mode == "binary" else spec_to_structured(spec)


# -- events every client sends ------------------------------------------------------------

ORDER: Spec = {
    "specversion": "1.0",
    "id": "order-42",
    "source": "https://shop.example/orders",
    "type": "com.example.order.created",
    "datacontenttype": "application/json",
    "dataschema": "https://schemas.example/order.json",
    "subject": "orders/42",
    "time": "2026-12-07T05:11:30.123456789Z",
    "extensions": {"tenant": "acme", "tier": "3"},
}

PAYLOADS: dict[str, tuple[dict[str, Any], bytes | None]] = {
    # JSON as written: spaces, a -0, a null and a duplicate key survive byte for byte.
    # (Not whitespace around the value: in structured mode data is a JSON member, and
    # no JSON reader keeps what surrounds a value.)
    "json-as-written": ({}, b'{ "total" : 42.50, "items": [1, -0], "a": 1, "a": null }'),
    "json-null": ({}, b"null"),
    "octets": ({"datacontenttype": "application/octet-stream"}, bytes(range(256))),
    "utf8-text": ({"datacontenttype": "text/plain; charset=utf-8"}, "Grüße, 🌎!\n".encode()),
    "no-data": ({"datacontenttype": None}, None),
}


def order(payload: str, **changes: Any) -> Spec:
    """ORDER with one of the PAYLOADS, its id naming the payload, and ``changes``."""
    overrides, data = PAYLOADS[payload]
    spec = {**ORDER, "id": f"order-{payload}", **overrides, **changes}
    return with_data({k: v for k, v in spec.items() if v is not None}, data)


async def post_event(url: str, headers: Mapping[str, str], body: bytes) -> None:
    """POST one event's request as given; the sidecar answers 202. aiohttp would add a
    ``Content-Type: application/octet-stream`` of its own to a request without one,
    which the binding reads as ``datacontenttype``: it is told not to."""
    skip = () if any(name.lower() == "content-type" for name in headers) else ("Content-Type",)
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, headers=dict(headers), data=body, skip_auto_headers=skip) as response,
    ):
        assert response.status == 202, await response.text()
