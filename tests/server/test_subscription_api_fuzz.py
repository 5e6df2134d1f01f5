"""A fuzz of the subscription API: any body POST /subscriptions can get is answered with
201 or a 4xx problem, quickly, and the API keeps serving (issue 13)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import msgspec
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventmesh import Mesh
from eventmesh.config import HttpListener
from eventmesh.server.http import create_app
from eventmesh.server.subscriptions import Registry

pytestmark = pytest.mark.anyio

FUZZ: Final = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ACCEPTED: Final = {201, 400, 403, 404, 409, 413, 415, 422, 429}
SLOW: Final = 2.0
"""Seconds one create may take at most: generous for a loaded 2-core machine, far below
the minutes a backtracking pattern or a huge concurrency took before."""

# Values a client may put anywhere: numbers at and past every edge, strings that look
# like durations, patterns, wildcards and URLs, and nesting.
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 10**6, 10**9, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e308", "NaN", "-1s", "10ms", "1h", "999999h", "", " ", "*", "a..b"]),
    st.text(max_size=40),
    st.sampled_from(
        [
            "*a*a*a*a*a*a*a*a*a*a*a*a*b",
            "http://127.0.0.1:9/x",
            "http://user:pw@127.0.0.1:9/x",
            "http://169.254.169.254/latest",
            "file:///etc/passwd",
            "subject LIKE '%a%a%a%a%a%a%b'",
            "CONCAT(subject, subject, subject)",
            "1+" * 200 + "1",
        ]
    ),
)
value = st.recursive(
    scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=25,
)
dialect = st.sampled_from(
    ["exact", "prefix", "suffix", "all", "any", "not", "sql", "pattern", "wildcard"]
)
filter_spec = st.recursive(
    st.one_of(
        st.builds(lambda d, v: {d: v}, dialect, value),
        st.builds(lambda a, v: {"exact": {a: v}}, st.sampled_from(["type", "subject"]), scalar),
        st.builds(lambda e: {"sql": e}, st.text(max_size=60)),
    ),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=10,
)
delivery = st.dictionaries(
    st.sampled_from(
        ["concurrency", "max_attempts", "prefetch", "ttl", "backoff", "dead_letter", "ordering"]
    ),
    value,
    max_size=4,
)
protocolsettings = st.dictionaries(
    st.sampled_from(
        ["headers", "mode", "timeout", "max_batch", "batch_window", "signing_secret", "webhook"]
    ),
    value,
    max_size=4,
)
spec = st.fixed_dictionaries(
    {"topic": st.one_of(st.sampled_from(["orders", "a.b", ""]), st.text(max_size=30), value)},
    optional={
        "id": st.one_of(st.text(max_size=30), value),
        "group": st.one_of(st.text(max_size=30), value),
        "protocol": st.one_of(st.sampled_from(["HTTP", "pull", "grpc"]), value),
        "sink": st.one_of(st.sampled_from(["http://127.0.0.1:9/events"]), value),
        "protocolsettings": st.one_of(protocolsettings, value),
        "filters": st.one_of(st.lists(filter_spec, max_size=3), value),
        "filter": st.one_of(filter_spec, value),
        "transform": value,
        "delivery": st.one_of(delivery, value),
        "start": st.one_of(st.sampled_from(["earliest", "latest"]), value),
        "reply_to": value,
        "ack_deadline": value,
        "extra": value,
    },
)


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, aiohttp.ClientSession, Registry]]:
    """The HTTP API over an in-memory mesh, on 127.0.0.1."""
    async with Mesh() as mesh, Registry(mesh) as registry:
        runner = web.AppRunner(create_app(mesh, registry, HttpListener(port=0)), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                yield f"http://{host}:{port}", session, registry
        finally:
            await runner.cleanup()


@FUZZ
@given(body=spec)
async def test_any_subscription_spec_is_created_or_refused_quickly(
    api: tuple[str, aiohttp.ClientSession, Registry], body: dict[str, Any]
) -> None:
    """201 or a 4xx problem body naming what was wrong, within seconds, never a 5xx;
    a created subscription can be deleted again, and the API keeps answering."""
    url, session, registry = api
    started = time.monotonic()
    async with session.post(f"{url}/subscriptions", data=msgspec.json.encode(body)) as answer:
        status, raw = answer.status, await answer.read()
    took = time.monotonic() - started
    assert status in ACCEPTED, (status, raw[:500])
    assert took < SLOW, f"creating took {took:.2f}s: {body!r:.300}"
    problem = msgspec.json.decode(raw)
    if status == 201:
        async with session.delete(f"{url}/subscriptions/{problem['id']}") as deleted:
            assert deleted.status == 204
    else:
        assert isinstance(problem.get("type"), str), problem
        assert isinstance(problem.get("detail"), str), problem
    async with session.get(f"{url}/subscriptions") as listed:
        assert listed.status == 200
    assert all(record.origin == "config" for record in registry.list())
