"""Publishing over the HTTP API: the three content modes, every answer, and all-or-nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from eventmesh import Event
from eventmesh.bindings.http import BATCH_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE, to_batch

pytestmark = pytest.mark.anyio

MARKER = Event(type="marker", source="/test", id="marker")


def sdk_event(**attributes: Any) -> CloudEvent:
    data = attributes.pop("data", None)
    return CloudEvent({"type": "com.example.t", "source": "/sdk", **attributes}, data)


async def assert_nothing_stored(api: Any, topic: str) -> None:
    """Store a marker after the fact: it must be the first event the topic holds."""
    await api.mesh.publish(topic, MARKER)
    (first,) = await api.read_topic(topic, 1)
    assert first.id == "marker"


async def test_binary_event_from_the_sdk_is_stored_and_answered_202(serve: Any) -> None:
    """A binary-mode request made by the CloudEvents SDK is stored as sent; 202 lists its id."""
    message = to_binary_event(
        sdk_event(id="b-1", subject="s1", data={"n": 1}, datacontenttype="application/json")
    )
    async with serve() as api:
        answer = await api.call(
            "POST", "/topics/orders/events", data=message.body, headers=message.headers
        )
        assert answer.status == 202
        assert answer.body == {"stored": 1, "ids": ["b-1"]}
        (event,) = await api.read_topic("orders", 1)
    assert (event.id, event.source, event.subject, event.data) == ("b-1", "/sdk", "s1", {"n": 1})


async def test_structured_event_from_the_sdk_keeps_its_extension_types(serve: Any) -> None:
    """A structured-mode request from the SDK is stored with its data and typed extensions."""
    message = to_structured_event(sdk_event(id="s-1", count=3, data={"k": "v"}))
    async with serve() as api:
        answer = await api.call(
            "POST", "/topics/orders/events", data=message.body, headers=message.headers
        )
        assert (answer.status, answer.body) == (202, {"stored": 1, "ids": ["s-1"]})
        (event,) = await api.read_topic("orders", 1)
    assert event.id == "s-1"
    assert event.extensions["count"] == 3
    assert event.data == {"k": "v"}


async def test_batch_stores_every_event_in_order(serve: Any) -> None:
    """A batch request stores all its events; 202 counts them and lists their ids in order."""
    events = [Event(type="t", source="/s", id=f"e{i}", data=i) for i in range(5)]
    headers, body = to_batch(events)
    async with serve({"connectors": {"default": {"type": "memory", "partitions": 1}}}) as api:
        answer = await api.call("POST", "/topics/t/events", data=body, headers=headers)
        assert answer.status == 202
        assert answer.body == {"stored": 5, "ids": ["e0", "e1", "e2", "e3", "e4"]}
        stored = await api.read_topic("t", 5)
    assert [(e.id, e.data) for e in stored] == [(f"e{i}", i) for i in range(5)]


async def test_an_empty_batch_stores_nothing_and_is_accepted(serve: Any) -> None:
    """An empty batch is answered 202 with nothing stored."""
    async with serve() as api:
        answer = await api.call(
            "POST", "/topics/t/events", data=b"[]", headers={"Content-Type": BATCH_CONTENT_TYPE}
        )
        assert answer.body == {"stored": 0, "ids": []}
        assert answer.status == 202


async def test_an_invalid_event_in_a_batch_stores_none_and_names_index_and_attribute(
    serve: Any,
) -> None:
    """A batch whose third event has no source is refused with 400 naming the attribute
    and the index, and none of its events is stored."""
    body = (
        b'[{"specversion":"1.0","id":"a","source":"/s","type":"t"},'
        b'{"specversion":"1.0","id":"b","source":"/s","type":"t"},'
        b'{"specversion":"1.0","id":"c","type":"t"}]'
    )
    async with serve() as api:
        answer = await api.call(
            "POST", "/topics/t/events", data=body, headers={"Content-Type": BATCH_CONTENT_TYPE}
        )
        assert answer.status == 400
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert answer.body["type"] == "EventValidationError"
        assert answer.body["attribute"] == "source"
        assert answer.body["index"] == 2
        await assert_nothing_stored(api, "t")


async def test_a_binary_request_without_a_required_header_names_the_attribute(
    serve: Any,
) -> None:
    """A binary request without ce-type is a 400 naming 'type', with no index."""
    headers = {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "/s"}
    async with serve() as api:
        answer = await api.call("POST", "/topics/t/events", data=b"", headers=headers)
        assert answer.status == 400
        assert answer.body["attribute"] == "type"
        assert "index" not in answer.body


async def test_a_body_that_is_not_a_cloudevent_is_415(serve: Any) -> None:
    """Plain text without ce- headers, and an event format we do not read, answer 415."""
    async with serve() as api:
        plain = await api.call(
            "POST", "/topics/t/events", data=b"hello", headers={"Content-Type": "text/plain"}
        )
        xml = await api.call(
            "POST",
            "/topics/t/events",
            data=b"<e/>",
            headers={"Content-Type": "application/cloudevents+xml"},
        )
    for answer in (plain, xml):
        assert answer.status == 415
        assert answer.body["type"] == "ContentTypeError"


async def test_an_event_above_max_event_size_is_413(serve: Any) -> None:
    """An event above max_event_size is 413, alone or as one event of a batch (with its
    index); nothing of the batch is stored."""
    big = Event(type="t", source="/s", id="big", data="x" * 500)
    small = Event(type="t", source="/s", id="small")
    async with serve(http={"max_event_size": 300}) as api:
        headers, body = to_batch([small])
        one = await api.call("POST", "/topics/t/events", data=body, headers=headers)
        assert one.status == 202
        headers, body = to_batch([small, big])
        batch = await api.call("POST", "/topics/t/events", data=body, headers=headers)
        assert batch.status == 413
        assert batch.body["type"] == "EventTooLargeError"
        assert batch.body["index"] == 1
        message = to_structured_event(sdk_event(id="big", data="x" * 500))
        single = await api.call(
            "POST", "/topics/t/events", data=message.body, headers=message.headers
        )
        assert single.status == 413
        assert "index" not in single.body
        (stored,) = await api.read_topic("t", 1)
        assert stored.id == "small"


async def test_a_request_above_max_request_size_is_413(serve: Any) -> None:
    """A body above max_request_size is 413 whether its length is declared or not."""
    events = [Event(type="t", source="/s", id=f"e{i}", data="y" * 100) for i in range(20)]
    headers, body = to_batch(events)
    assert len(body) > 1000

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    async with serve(http={"max_request_size": 1000}) as api:
        declared = await api.call("POST", "/topics/t/events", data=body, headers=headers)
        assert declared.status == 413
        assert declared.body["type"] == "EventTooLargeError"
        assert "max_request_size" in declared.body["detail"]
        streamed = await api.call("POST", "/topics/t/events", data=chunked(), headers=headers)
        assert streamed.status == 413
        await assert_nothing_stored(api, "t")


async def test_an_endless_body_is_refused_without_being_read_to_its_end(serve: Any) -> None:
    """A chunked body that never ends is answered 413 once past the limit."""

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"[" + b" " * 4096
            await anyio.lowlevel.checkpoint()

    async with serve(http={"max_request_size": 64 * 1024}) as api:
        with anyio.fail_after(10):
            async with api.session.post(
                api.url + "/topics/t/events",
                data=endless(),
                headers={"Content-Type": BATCH_CONTENT_TYPE},
            ) as response:
                assert response.status == 413


async def test_a_full_topic_is_503_listing_every_id_not_stored(serve: Any) -> None:
    """A full topic set to fail answers 503 with the ids of every event of the request as
    not_stored; a batch above max_events, which can never fit, is 400 naming it."""
    config = {"connectors": {"default": {"type": "memory", "max_events": 2, "when_full": "fail"}}}
    async with serve(config) as api:
        three = [Event(type="t", source="/s", id=f"e{i}") for i in range(3)]
        headers, body = to_batch(three)
        too_big = await api.call("POST", "/topics/t/events", data=body, headers=headers)
        assert too_big.status == 400
        assert too_big.body["type"] == "RejectedError"
        assert "max_events=2" in too_big.body["detail"]

        async with api.mesh.subscribe("t", "slow", start="earliest"):  # holds what it reads
            headers, body = to_batch(three[:2])
            ok = await api.call("POST", "/topics/t/events", data=body, headers=headers)
            assert ok.status == 202
            headers, body = to_batch([Event(type="t", source="/s", id="late")])
            full = await api.call("POST", "/topics/t/events", data=body, headers=headers)
            assert full.status == 503
            assert full.body["type"] == "TopicFullError"
            assert full.body["not_stored"] == ["late"]


async def test_the_apache_eventmesh_route_takes_structured_and_binary_events(
    serve: Any,
) -> None:
    """POST /eventmesh/publish/{topic} stores a structured and a binary event alike."""
    structured = to_structured_event(sdk_event(id="s"))
    binary = to_binary_event(sdk_event(id="b"))
    async with serve({"connectors": {"default": {"type": "memory", "partitions": 1}}}) as api:
        for message in (structured, binary):
            answer = await api.call(
                "POST", "/eventmesh/publish/legacy", data=message.body, headers=message.headers
            )
            assert answer.status == 202
        bad = await api.call(
            "POST",
            "/eventmesh/publish/legacy",
            data=b"{",
            headers={"Content-Type": STRUCTURED_CONTENT_TYPE},
        )
        assert bad.status == 400
        stored = await api.read_topic("legacy", 2)
    assert [e.id for e in stored] == ["s", "b"]


async def test_publishing_to_a_closed_connector_is_503(serve: Any) -> None:
    """A publish that reaches a closed connector is 503 with its ids as not_stored."""
    async with serve() as api:
        await api.mesh.connectors["default"].close()
        message = to_structured_event(sdk_event(id="z"))
        answer = await api.call(
            "POST", "/topics/t/events", data=message.body, headers=message.headers
        )
    assert answer.status == 503
    assert answer.body["type"] == "ClosedError"
    assert answer.body["not_stored"] == ["z"]


async def test_unknown_paths_and_methods_answer_with_problem_bodies(serve: Any) -> None:
    """A path the API does not have is 404 and a wrong method 405, both as problem+json."""
    async with serve() as api:
        async with api.session.get(api.url + "/nope") as response:
            assert response.status == 404
            assert response.content_type == "application/problem+json"
            assert (await response.json(content_type=None))["type"] == "NotFoundError"
        async with api.session.put(api.url + "/topics/t/events") as response:
            assert response.status == 405
            assert response.content_type == "application/problem+json"
            assert "POST" in response.headers["Allow"]
