"""The CloudEvents conformance vectors through the sidecar: in over HTTP, out over HTTP."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from cloudevents.core.bindings import http as sdk_http
from test_http_binding import VECTOR_EVENTS, canonical

from eventmesh import Event
from eventmesh.bindings.http import from_http_one, to_binary, to_structured
from eventmesh.event import decode_json

pytestmark = pytest.mark.anyio


async def test_every_vector_comes_back_unchanged_through_publish_and_pull(serve: Any) -> None:
    """Each vector, published in its own mode with its transport headers, is what a pull
    subscription returns: the same event (binary mode turns extension values into their
    canonical strings, as the binding says)."""
    assert len(VECTOR_EVENTS) > 5
    expected: list[Event] = []
    with anyio.fail_after(30):
        async with serve() as api:
            created = await api.call(
                "POST",
                "/subscriptions",
                json={"id": "v", "topic": "vectors", "protocol": "pull", "start": "earliest"},
            )
            assert created.status == 201
            for _, mode, event, transport in VECTOR_EVENTS:
                headers, body = (to_structured if mode == "structured" else to_binary)(event)
                async with api.session.post(
                    api.url + "/topics/vectors/events",
                    data=body,
                    headers={**transport, **headers},
                    skip_auto_headers=("Content-Type",),  # no datacontenttype means none
                ) as answer:
                    assert answer.status == 202, await answer.text()
                expected.append(event if mode == "structured" else canonical(event))
            got: list[Event] = []
            while len(got) < len(expected):
                pulled = await api.call("GET", "/subscriptions/v/events?max=100&wait=5")
                ids = [d["delivery_id"] for d in pulled.body["deliveries"]]
                got += [
                    decode_json(encode_json_dict(d["event"])) for d in pulled.body["deliveries"]
                ]
                assert (
                    await api.call("POST", "/subscriptions/v/ack", json={"delivery_ids": ids})
                ).status == 200
    # Partitions may interleave; compare as multisets.
    assert sorted(map(repr, got)) == sorted(map(repr, expected))


async def test_webhook_deliveries_of_every_vector_parse_with_the_sdk(serve: Any) -> None:
    """A push subscription POSTs each vector in binary mode; the CloudEvents SDK's
    from_http_event reads each request to the event that was published."""
    from aiohttp import web

    received: list[tuple[dict[str, str], bytes]] = []

    async def sink(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/events", sink)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    structured = [(m, e) for _, m, e, _ in VECTOR_EVENTS if m == "structured"]
    try:
        with anyio.fail_after(30):
            async with serve() as api:
                spec = {"id": "push", "topic": "vec", "sink": f"http://127.0.0.1:{port}/events"}
                assert (await api.call("POST", "/subscriptions", json=spec)).status == 201
                for _, event in structured:
                    headers, body = to_structured(event)
                    answer = await api.call(
                        "POST", "/topics/vec/events", data=body, headers=headers
                    )
                    assert answer.status == 202
                while len(received) < len(structured):
                    await anyio.sleep(0.02)
    finally:
        await runner.cleanup()
    for (headers, body), (_, event) in zip(received, structured, strict=True):
        message = sdk_http.HTTPMessage(
            headers={k.lower(): v for k, v in headers.items()}, body=body
        )
        parsed = Event.from_cloudevent(sdk_http.from_http_event(message))
        if event.time is None:
            parsed = parsed.replace(time=None)
        assert parsed == canonical(event)
        assert from_http_one(headers, body) == canonical(event)


def encode_json_dict(event: dict[str, Any]) -> bytes:
    """An event in the JSON format, as a pull response carries it, back to bytes."""
    import msgspec

    return msgspec.json.encode(event)
