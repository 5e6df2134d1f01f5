"""Pull delivery over the HTTP API: long polls, ack, nack, ack deadlines, SSE streams."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import msgspec
import pytest

from eventmesh import Event

pytestmark = pytest.mark.anyio

FAST = {"backoff": {"initial": "10ms", "max": "10ms", "jitter": 0}}


async def pull_sub(api: Any, id: str = "p", **spec: Any) -> dict[str, Any]:
    answer = await api.call(
        "POST", "/subscriptions", json={"id": id, "topic": "t", "start": "earliest", **spec}
    )
    assert answer.status == 201, answer.body
    result: dict[str, Any] = answer.body
    return result


async def poll(api: Any, id: str = "p", *, max: int = 1, wait: float = 5) -> list[dict[str, Any]]:
    answer = await api.call("GET", f"/subscriptions/{id}/events?max={max}&wait={wait}")
    assert answer.status == 200, answer.body
    deliveries: list[dict[str, Any]] = answer.body["deliveries"]
    return deliveries


async def test_pulled_event_is_acked_once(serve: Any) -> None:
    """A long poll returns the event in the JSON format with a delivery id and attempt 1;
    acking it counts once, a second ack of the same id is unknown."""
    async with serve() as api:
        await pull_sub(api)
        await api.mesh.publish("t", Event(type="t", source="/s", id="e1", data={"a": 1}))
        (delivery,) = await poll(api)
        assert delivery["attempt"] == 1
        assert delivery["event"]["id"] == "e1"
        assert delivery["event"]["data"] == {"a": 1}
        assert delivery["event"]["specversion"] == "1.0"
        ids = {"delivery_ids": [delivery["delivery_id"]]}
        first = await api.call("POST", "/subscriptions/p/ack", json=ids)
        assert first.body == {"acked": 1, "unknown": []}
        again = await api.call("POST", "/subscriptions/p/ack", json=ids)
        assert again.body == {"acked": 0, "unknown": [delivery["delivery_id"]]}
        resource = (await api.call("GET", "/subscriptions/p")).body
        assert resource["stats"]["received"] == 1
        assert resource["stats"]["delivered"] == 1
        assert await poll(api, wait=0.05) == []


async def test_a_poll_returns_up_to_max_deliveries(serve: Any) -> None:
    """max=N returns at most N deliveries, the rest come with the next poll."""
    async with serve({"connectors": {"default": {"type": "memory", "partitions": 1}}}) as api:
        await pull_sub(api)
        await api.mesh.publish("t", [Event(type="t", source="/s", id=f"e{i}") for i in range(5)])
        got: list[str] = []
        with anyio.fail_after(10):
            while len(got) < 5:
                batch = await poll(api, max=3)
                assert len(batch) <= 3
                got += [d["event"]["id"] for d in batch]
    assert got == ["e0", "e1", "e2", "e3", "e4"]


async def test_a_nack_is_redelivered_as_the_next_attempt(serve: Any) -> None:
    """A nacked delivery comes back, after the backoff, as attempt 2 with a new id."""
    async with serve() as api:
        await pull_sub(api, delivery=FAST)
        await api.mesh.publish("t", Event(type="t", source="/s", id="e1"))
        (first,) = await poll(api)
        answer = await api.call(
            "POST",
            "/subscriptions/p/nack",
            json={"delivery_ids": [first["delivery_id"], "nope"], "error": "busy"},
        )
        assert answer.body == {"nacked": 1, "unknown": ["nope"]}
        (second,) = await poll(api)
        assert second["event"]["id"] == "e1"
        assert second["attempt"] == 2
        assert second["delivery_id"] != first["delivery_id"]
        stats = (await api.call("GET", "/subscriptions/p")).body["stats"]
        assert (stats["failed"], stats["retried"]) == (1, 1)


async def test_a_delivery_past_its_ack_deadline_is_redelivered(serve: Any) -> None:
    """A delivery neither acked nor nacked within ack_deadline comes back as attempt 2;
    a late ack of the first delivery id is unknown."""
    async with serve() as api:
        resource = await pull_sub(api, delivery=FAST, ack_deadline="300ms")
        assert resource["ack_deadline"] == 0.3
        await api.mesh.publish("t", Event(type="t", source="/s", id="e1"))
        (first,) = await poll(api)
        (second,) = await poll(api, wait=10)
        assert (second["event"]["id"], second["attempt"]) == ("e1", 2)
        late = await api.call(
            "POST", "/subscriptions/p/ack", json={"delivery_ids": [first["delivery_id"]]}
        )
        assert late.body == {"acked": 0, "unknown": [first["delivery_id"]]}
        ok = await api.call(
            "POST", "/subscriptions/p/ack", json={"delivery_ids": [second["delivery_id"]]}
        )
        assert ok.body["acked"] == 1


async def test_the_last_failed_attempt_goes_to_the_dead_letter_topic(serve: Any) -> None:
    """With max_attempts 2, a nack and a missed deadline dead-letter the event, with the
    deadline's error recorded."""
    async with serve() as api:
        await pull_sub(api, delivery={**FAST, "max_attempts": 2}, ack_deadline=0.3)
        await api.mesh.publish("t", Event(type="t", source="/s", id="e1"))
        (first,) = await poll(api)
        await api.call(
            "POST", "/subscriptions/p/nack", json={"delivery_ids": [first["delivery_id"]]}
        )
        (second,) = await poll(api)
        assert second["attempt"] == 2
        (dead,) = await api.read_topic("t.dlq", 1)  # after the deadline passes
        assert dead.id == "e1"
        assert dead.extensions["deadletterreason"] == "failed"
        assert dead.extensions["deadletterattempts"] == 2
        assert dead.extensions["deadlettererror"] == "ack deadline exceeded"
        stats = (await api.call("GET", "/subscriptions/p")).body["stats"]
        assert stats["dead_lettered"] == 1
        assert await poll(api, wait=0.5) == []


async def waiting_on(api: Any, id: str = "p") -> None:
    """Returns once a long poll or stream waits on the pull subscription."""
    queue = api.registry.get(id).pull
    while not queue.waiting:
        await anyio.sleep(0.01)


async def test_a_long_poll_returns_as_soon_as_an_event_arrives(serve: Any) -> None:
    """A poll waiting up to 30 s answers once an event is published, long before that."""
    async with serve() as api:
        await pull_sub(api)
        got: list[list[dict[str, Any]]] = []

        async def waiting() -> None:
            got.append(await poll(api, max=10, wait=30))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiting)
                await waiting_on(api)
                await api.mesh.publish("t", Event(type="t", source="/s", id="now"))
        assert [d["event"]["id"] for d in got[0]] == ["now"]


async def test_filters_and_transforms_apply_to_pulled_events(serve: Any) -> None:
    """A pull subscription's filter skips events and its transform changes the rest."""
    async with serve() as api:
        await pull_sub(
            api,
            filters=[{"prefix": {"type": "com.keep."}}],
            transform=[{"set": {"subject": "seen"}}],
        )
        await api.mesh.publish("t", Event(type="com.drop.x", source="/s", id="d"))
        await api.mesh.publish("t", Event(type="com.keep.x", source="/s", id="k"))
        (delivery,) = await poll(api)
        assert delivery["event"]["id"] == "k"
        assert delivery["event"]["subject"] == "seen"
        stats = (await api.call("GET", "/subscriptions/p")).body["stats"]
        assert stats["filtered"] == 1


async def test_closing_the_registry_ends_a_waiting_long_poll(serve: Any) -> None:
    """A poll waiting on a subscription answers with no deliveries when the registry closes."""
    got: list[list[dict[str, Any]]] = []
    with anyio.fail_after(10):
        async with serve() as api:
            await pull_sub(api)

            async def waiting() -> None:
                got.append(await poll(api, wait=30))

            api.tasks.start_soon(waiting)
            await waiting_on(api)
            await api.registry.close()
            while not got:
                await anyio.sleep(0.01)
    assert got == [[]]


async def test_deleting_a_subscription_ends_its_long_poll_and_later_polls_are_404(
    serve: Any,
) -> None:
    """DELETE answers a waiting poll with nothing; the next poll is 404."""
    async with serve() as api:
        await pull_sub(api)
        got: list[list[dict[str, Any]]] = []

        async def waiting() -> None:
            got.append(await poll(api, wait=30))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiting)
                await waiting_on(api)
                assert (await api.call("DELETE", "/subscriptions/p")).status == 204
        assert got == [[]]
        gone = await api.call("GET", "/subscriptions/p/events")
        assert (gone.status, gone.body["type"]) == (404, "NotFoundError")


async def test_bad_pull_requests_are_refused(serve: Any) -> None:
    """Out-of-range max and wait are 400 naming the parameter; a malformed ack body is 400;
    an unknown subscription is 404; pulling from a push subscription is 409."""
    async with serve() as api:
        await pull_sub(api)
        for query, key in (("max=0", "max"), ("max=1001", "max"), ("wait=31", "wait")):
            answer = await api.call("GET", f"/subscriptions/p/events?{query}")
            assert (answer.status, answer.body["key"]) == (400, key)
        bad = await api.call("POST", "/subscriptions/p/ack", json={"delivery_ids": "x"})
        assert (bad.status, bad.body["key"]) == (400, "delivery_ids")
        nojson = await api.call("POST", "/subscriptions/p/nack", data=b"{")
        assert nojson.status == 400
        missing = await api.call("POST", "/subscriptions/zz/ack", json={"delivery_ids": []})
        assert missing.status == 404
        push = await api.call(
            "POST", "/subscriptions", json={"id": "h", "topic": "t", "sink": "http://127.0.0.1:9/"}
        )
        assert push.status == 201, push.body
        answer = await api.call("GET", "/subscriptions/h/events")
        assert (answer.status, answer.body["type"]) == (409, "LifecycleError")


async def read_frames(response: aiohttp.ClientResponse, count: int) -> list[str]:
    """The next ``count`` SSE blocks (events or comments) of a stream, as text."""
    frames: list[str] = []
    buffer = b""
    while len(frames) < count:
        chunk = await response.content.readany()
        assert chunk, "the stream ended"
        buffer += chunk
        while b"\n\n" in buffer and len(frames) < count:
            frame, buffer = buffer.split(b"\n\n", 1)
            frames.append(frame.decode())
    return frames


def delivery_of(frame: str) -> dict[str, Any]:
    lines = dict(line.split(": ", 1) for line in frame.split("\n"))
    assert lines["event"] == "delivery"
    data: dict[str, Any] = msgspec.json.decode(lines["data"])
    assert data["delivery_id"] == lines["id"]
    return data


async def test_an_sse_stream_delivers_and_is_acked_through_the_ack_endpoint(
    serve: Any,
) -> None:
    """Published events arrive on the stream as 'delivery' events; acking them by id
    counts them delivered."""
    async with serve({"connectors": {"default": {"type": "memory", "partitions": 1}}}) as api:
        await pull_sub(api)
        with anyio.fail_after(10):
            async with api.session.get(api.url + "/subscriptions/p/stream") as response:
                assert response.status == 200
                assert response.content_type == "text/event-stream"
                await api.mesh.publish(
                    "t",
                    [Event(type="t", source="/s", id="a"), Event(type="t", source="/s", id="b")],
                )
                deliveries = [delivery_of(f) for f in await read_frames(response, 2)]
                assert [d["event"]["id"] for d in deliveries] == ["a", "b"]
                answer = await api.call(
                    "POST",
                    "/subscriptions/p/ack",
                    json={"delivery_ids": [d["delivery_id"] for d in deliveries]},
                )
                assert answer.body == {"acked": 2, "unknown": []}
        stats = (await api.call("GET", "/subscriptions/p")).body["stats"]
        assert stats["delivered"] == 2


async def test_an_sse_stream_holds_back_beyond_max_in_flight(serve: Any) -> None:
    """With room for one unacked delivery, the stream sends keepalives instead of the
    second event until the first is acked."""
    config = {"connectors": {"default": {"type": "memory", "partitions": 1}}}
    async with serve(config, keepalive=0.1) as api:
        await pull_sub(api, delivery={"prefetch": 1})
        await api.mesh.publish(
            "t", [Event(type="t", source="/s", id="a"), Event(type="t", source="/s", id="b")]
        )
        with anyio.fail_after(10):
            async with api.session.get(api.url + "/subscriptions/p/stream") as response:
                first, after = await read_frames(response, 2)
                assert delivery_of(first)["event"]["id"] == "a"
                assert after == ": keepalive"
                await api.call(
                    "POST",
                    "/subscriptions/p/ack",
                    json={"delivery_ids": [delivery_of(first)["delivery_id"]]},
                )
                frames = await read_frames(response, 1)
                while frames[-1] == ": keepalive":
                    frames = await read_frames(response, 1)
                assert delivery_of(frames[-1])["event"]["id"] == "b"


async def test_closing_the_registry_ends_an_sse_stream(serve: Any) -> None:
    """An open stream ends when the registry closes."""
    with anyio.fail_after(10):
        async with serve() as api:
            await pull_sub(api)
            async with api.session.get(api.url + "/subscriptions/p/stream") as response:
                assert response.status == 200
                await waiting_on(api)
                await api.registry.close()
                assert await response.content.read() == b""


async def test_a_poll_whose_client_left_takes_nothing(serve: Any) -> None:
    """An event arriving after a long-polling client disconnected goes to the next poll
    as attempt 1, not to the poll nobody reads."""
    async with serve() as api:
        await pull_sub(api)
        with pytest.raises(TimeoutError):
            async with api.session.get(
                api.url + "/subscriptions/p/events?wait=30",
                timeout=aiohttp.ClientTimeout(total=0.3),
            ):
                pass
        await api.mesh.publish("t", Event(type="t", source="/s", id="e1"))
        (delivery,) = await poll(api, wait=5)
        assert (delivery["event"]["id"], delivery["attempt"]) == ("e1", 1)


async def test_an_sse_client_that_stops_reading_is_cut_off_after_its_ack_deadline(
    serve: Any,
) -> None:
    """A stream client that reads nothing while megabytes wait for it is disconnected
    once its ack deadline has passed (it could not ack what it was sent anyway), so the
    server stops holding its write buffer: before, the write waited for the client for
    ever, a deleted subscription's stream included. Its deliveries go back to the group."""
    config = {"connectors": {"default": {"type": "memory", "partitions": 1}}}
    async with serve(config) as api:
        await pull_sub(api, ack_deadline="1s", delivery={"prefetch": 1000, **FAST})
        big = "x" * 200_000
        await api.mesh.publish("t", [Event(type="t", source="/s", data=big) for _ in range(200)])
        host, port = api.url.removeprefix("http://").rsplit(":", 1)
        stream = await anyio.connect_tcp(host, int(port))
        await stream.send(b"GET /subscriptions/p/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await anyio.sleep(3)  # reads nothing: the server's write waits, then times out
        received = 0
        with anyio.fail_after(20):  # what was in flight, then the end of the connection
            try:
                while True:
                    received += len(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
        assert received < 200 * 200_000  # cut off: not the whole topic
        got = await poll(api, max=5, wait=10)  # given back to the group, pulled again
        assert got


async def test_a_long_poll_answer_is_bounded_in_bytes(serve: Any, monkeypatch: Any) -> None:
    """A poll answers at most MAX_ANSWER_SIZE bytes of deliveries (one always goes, even
    past it); the rest come with the next polls in order, their attempt not counted."""
    from eventmesh.server import http

    monkeypatch.setattr(http, "MAX_ANSWER_SIZE", 2500, raising=False)
    config = {"connectors": {"default": {"type": "memory", "partitions": 1}}}
    async with serve(config) as api:
        await pull_sub(api)
        big = Event(type="t", source="/s", id="big", data={"x": "y" * 4000})
        small = [Event(type="t", source="/s", id=f"e{i}", data={"x": "y" * 1000}) for i in range(5)]
        await api.mesh.publish("t", [big, *small])
        batches: list[list[dict[str, Any]]] = []
        with anyio.fail_after(10):
            while sum(map(len, batches)) < 6:
                batches.append(await poll(api, max=10))
    assert [len(batch) for batch in batches] == [1, 2, 2, 1]  # the big one alone, then ~2.2 kB
    got = [d["event"]["id"] for batch in batches for d in batch]
    assert got == ["big", "e0", "e1", "e2", "e3", "e4"]
    assert {d["attempt"] for batch in batches for d in batch} == {1}


async def test_an_event_that_cannot_be_written_is_dead_lettered_not_a_failed_poll(
    serve: Any,
) -> None:
    """An event no JSON can hold (put on a memory topic by code in the process) would fail
    every answer it is part of, the good events with it, poll after poll: it is
    dead-lettered at once and the others are answered."""
    config = {"connectors": {"default": {"type": "memory", "partitions": 1}}}
    async with serve(config) as api:
        await pull_sub(api, delivery={"dead_letter": "t.dlq"})
        events = [
            Event(type="t", source="/s", id="a"),
            Event(type="t", source="/s", id="bad", data={"o": object()}),
            Event(type="t", source="/s", id="c"),
        ]
        await api.mesh.publish("t", events)
        got: list[str] = []
        with anyio.fail_after(10):
            while len(got) < 2:
                got += [d["event"]["id"] for d in await poll(api, max=10)]
        assert got == ["a", "c"]
        stats = (await api.call("GET", "/subscriptions/p")).body["stats"]
        assert stats["dead_lettered"] == 1


async def test_an_ack_or_nack_names_at_most_ten_thousand_deliveries(serve: Any) -> None:
    """An ack or nack of more than 10,000 ids (or of an id no delivery could have) is a
    400 naming delivery_ids, before any is looked up: 459,000 in one body held the loop
    100 ms and came back as a 15 MB list of unknown ids."""
    async with serve() as api:
        await pull_sub(api)
        for path in ("/subscriptions/p/ack", "/subscriptions/p/nack"):
            many = await api.call("POST", path, json={"delivery_ids": ["x"] * 10_001})
            assert many.status == 400, many.body
            assert "delivery_ids" in many.body["detail"]
            long = await api.call("POST", path, json={"delivery_ids": ["x" * 65]})
            assert long.status == 400, long.body
            fine = await api.call("POST", path, json={"delivery_ids": ["x"] * 10_000})
            assert fine.status == 200
            assert len(fine.body["unknown"]) == 10_000
