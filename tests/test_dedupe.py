"""De-duplication (``topics.<name>.dedupe``): an event whose source and id the topic stored
within the window is dropped and answered as stored, once per key even under concurrency,
with memory bounded by ``max_entries`` and the drops counted; on the local store the
window survives a restart."""

from __future__ import annotations

import gc
import logging
import tracemalloc
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
import pytest
from aiohttp import web

import eventmesh
from eventmesh import Event, Mesh
from eventmesh._dedupe import DedupeConfig, Deduper
from eventmesh.config import Duration, HttpListener, load_config
from eventmesh.connectors.base import Connector, StoredEvent
from eventmesh.connectors.memory import MemoryConfig, MemoryConnector
from eventmesh.errors import ConfigError, PublishError, SubscribeError, TopicFullError
from eventmesh.server.http import create_app
from eventmesh.server.subscriptions import Registry

pytestmark = pytest.mark.anyio

MARKER_SOURCE = "/marker"


def config(dedupe: dict[str, Any] | None = None, **memory: Any) -> dict[str, Any]:
    """One memory connector with one partition (so order is kept) and topic ``t`` with
    ``dedupe`` (default: a 10 minute window)."""
    return {
        "connectors": {"default": {"type": "memory", "partitions": 1, **memory}},
        "topics": {"t": {"dedupe": dedupe if dedupe is not None else {"window": "10m"}}},
    }


def event(id: str, source: str = "/s", **extra: Any) -> Event:
    return Event(type="t", source=source, id=id, **extra)


async def stored(mesh: Mesh, topic: str = "t") -> list[tuple[str, str]]:
    """(source, id) of every event ``topic`` holds, in order: read by a new group from the
    start up to a marker published last."""
    marker = event(uuid.uuid4().hex, source=MARKER_SOURCE)
    got: list[tuple[str, str]] = []
    with anyio.fail_after(20):
        async with mesh.subscribe(topic, f"reader-{uuid.uuid4().hex}", start="earliest") as sub:
            await mesh.publish(topic, marker)
            async for delivery in sub:
                await delivery.ack()
                if delivery.event.id == marker.id:
                    return got
                got.append((delivery.event.source, delivery.event.id))
    raise AssertionError("unreachable")


# -- configuration ------------------------------------------------------------------------


def test_dedupe_config_is_checked_where_it_is_written() -> None:
    """A window of 0 or max_entries of 0 is a ConfigError naming the key; durations parse."""
    loaded = load_config({"topics": {"t": {"dedupe": {"window": "90s", "max_entries": 5}}}})
    assert loaded.topics["t"].dedupe == DedupeConfig(window=Duration(90), max_entries=5)
    assert load_config({"topics": {"t": {"dedupe": {}}}}).topics["t"].dedupe == DedupeConfig()
    with pytest.raises(ConfigError) as error:
        load_config({"topics": {"t": {"dedupe": {"window": 0}}}})
    assert error.value.key == "topics.t.dedupe"
    assert "window must be above 0" in str(error.value)
    with pytest.raises(ConfigError, match="max_entries must be between 1"):
        load_config({"topics": {"t": {"dedupe": {"max_entries": 0}}}})
    with pytest.raises(ConfigError, match="unknown key 'windw'") as error:
        load_config({"topics": {"orders.eu": {"dedupe": {"windw": "1m"}}}})
    assert error.value.key == "topics.orders.eu.dedupe.windw"


# -- through the mesh ---------------------------------------------------------------------


async def test_a_duplicate_is_dropped_and_answered_as_stored() -> None:
    """Publishing the same source and id again returns its id as a store would, stores
    nothing, and counts the drop; another source with the same id is a different event,
    and a topic without dedupe stores every copy."""
    async with Mesh(config()) as mesh:
        assert await mesh.publish("t", event("a", data=1)) == ["a"]
        assert await mesh.publish("t", event("a", data=2)) == ["a"]
        assert await mesh.publish("t", event("a", source="/other")) == ["a"]
        assert await mesh.publish("plain", [event("a"), event("a")]) == ["a", "a"]
        assert await stored(mesh) == [("/s", "a"), ("/other", "a")]
        assert await stored(mesh, "plain") == [("/s", "a"), ("/s", "a")]
        metrics = mesh.metrics
        assert metrics is not None
        text = metrics.render()
    assert 'eventmesh_events_deduplicated_total{connector="default",topic="t"} 1.0' in text
    assert 'eventmesh_events_published_total{connector="default",topic="t"} 3.0' in text


async def test_a_batch_stores_each_key_once() -> None:
    """A batch with a key twice, and one repeating keys already stored, stores each key
    once, in order, and is answered with every id it sent (the embedded SDK)."""
    async with eventmesh.connect(config=config()) as client:
        mesh = client
        assert isinstance(mesh, Mesh)
        first = [event("a"), event("b"), event("a"), event("c")]
        assert await mesh.publish("t", first) == ["a", "b", "a", "c"]
        again = [event("c"), event("d"), event("b"), event("d")]
        assert await mesh.publish("t", again) == ["c", "d", "b", "d"]
        assert [id for _, id in await stored(mesh)] == ["a", "b", "c", "d"]
        assert mesh._dedupers["t"].duplicates == 4


async def test_concurrent_publishes_of_one_event_store_it_once() -> None:
    """Two publishes of the same event at once, the first held up by a full topic: the
    second waits for the first instead of storing it again, and both return its id."""
    cfg = config(max_events=1, when_full="wait")
    async with Mesh(cfg) as mesh, mesh.subscribe("t", "g", start="earliest") as sub:
        await mesh.publish("t", event("filler"))  # the topic is now full until acked
        answers: list[list[str]] = []

        async def publish() -> None:
            answers.append(await mesh.publish("t", event("x")))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                tg.start_soon(publish)
                # Both are waiting now: one for room, one for the first.
                while len(mesh._dedupers["t"]) < 2:  # filler + the reserved "x"
                    await anyio.sleep(0.01)
                got = []
                async for delivery in sub:
                    got.append(delivery.event.id)
                    await delivery.ack()
                    if delivery.event.id == "x":
                        break
            assert answers == [["x"], ["x"]]
            marker = event("end", source=MARKER_SOURCE)
            await mesh.publish("t", marker)
            async for delivery in sub:
                got.append(delivery.event.id)
                await delivery.ack()
                if delivery.event.id == "end":
                    break
    assert got == ["filler", "x", "end"]


async def test_a_failed_store_lets_a_retry_store_the_event() -> None:
    """When the connector refuses the store, the key is not remembered: the producer's
    retry stores the event instead of being told it is a duplicate."""
    async with (
        Mesh(config(max_events=1, when_full="fail")) as mesh,
        mesh.subscribe("t", "g", start="earliest") as sub,
    ):
        await mesh.publish("t", event("first"))
        with pytest.raises(TopicFullError):
            await mesh.publish("t", event("second"))
        with anyio.fail_after(20):
            async for delivery in sub:
                await delivery.ack()
                break
            # Room once the ack is taken; the retry is stored, not dropped.
            while True:
                try:
                    assert await mesh.publish("t", event("second")) == ["second"]
                    break
                except TopicFullError:
                    await anyio.sleep(0.01)
            async for delivery in sub:
                await delivery.ack()
                assert delivery.event.id == "second"
                break
        assert mesh._dedupers["t"].duplicates == 0


# -- over the sidecar's HTTP API ------------------------------------------------------------


async def test_a_duplicate_over_http_is_answered_202_with_its_id() -> None:
    """A producer's retry over HTTP gets the 202 and ids of a store; the topic holds the
    event once, a batch repeating it is answered in full, and so is the remote SDK's."""
    async with (
        Mesh(config()) as mesh,
        Registry(mesh) as registry,
        aiohttp.ClientSession() as session,
    ):
        runner = web.AppRunner(create_app(mesh, registry, HttpListener()))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            url = f"http://{host}:{port}/topics/t/events"
            body = msgspec.json.encode(
                {"specversion": "1.0", "type": "t", "source": "/s", "id": "h-1"}
            )
            headers = {"Content-Type": "application/cloudevents+json"}
            answers = []
            for _ in range(2):
                async with session.post(url, data=body, headers=headers) as response:
                    answers.append((response.status, await response.json()))
            batch = msgspec.json.encode(
                [
                    {"specversion": "1.0", "type": "t", "source": "/s", "id": "h-1"},
                    {"specversion": "1.0", "type": "t", "source": "/s", "id": "h-2"},
                ]
            )
            batch_headers = {"Content-Type": "application/cloudevents-batch+json"}
            async with session.post(url, data=batch, headers=batch_headers) as response:
                answers.append((response.status, await response.json()))
            async with eventmesh.connect(f"http://{host}:{port}") as client:  # the remote SDK
                for _ in range(2):
                    assert await client.publish("t", event("sdk-1")) == ["sdk-1"]
            held = await stored(mesh)
            await registry.close()
        finally:
            await runner.cleanup()
    assert answers == [
        (202, {"stored": 1, "ids": ["h-1"]}),
        (202, {"stored": 1, "ids": ["h-1"]}),
        (202, {"stored": 2, "ids": ["h-1", "h-2"]}),
    ]
    assert held == [("/s", "h-1"), ("/s", "h-2"), ("/s", "sdk-1")]


# -- the window itself ----------------------------------------------------------------------


class Clock:
    """A clock the test moves by hand: the window is a span of time, tested without one."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Log:
    """A store that records what it is asked to store; ``fail`` makes the next call raise."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.fail = False
        self.gate: anyio.Event | None = None

    async def __call__(self, events: Sequence[Event]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail = False
            raise PublishError("refused for the test")
        self.events.extend(e.id for e in events)


async def test_a_key_is_stored_again_once_its_window_has_passed() -> None:
    """Within the window a key is dropped; once the window has passed it is stored again,
    and its new store starts a new window."""
    clock, log = Clock(), Log()
    deduper = Deduper("t", DedupeConfig(window=Duration(60)), clock=clock)
    await deduper.store([event("a")], log)
    clock.now += 59.0
    await deduper.store([event("a")], log)
    assert log.events == ["a"]
    clock.now += 2.0  # 61 s after the store
    await deduper.store([event("a"), event("b")], log)
    assert log.events == ["a", "a", "b"]
    assert len(deduper) == 2  # the expired key left; the new ones are held
    clock.now += 30.0
    await deduper.store([event("a")], log)
    assert log.events == ["a", "a", "b"]
    assert deduper.duplicates == 2


async def test_memory_stays_within_max_entries() -> None:
    """However many keys arrive, at most max_entries are held: the oldest are forgotten
    first and counted, so an old key is stored again while a recent one is still dropped."""
    log = Log()
    deduper = Deduper("t", DedupeConfig(window=Duration(600), max_entries=100), clock=Clock())
    for first in range(0, 10_000, 50):
        await deduper.store([event(str(i)) for i in range(first, first + 50)], log)
        assert len(deduper) <= 100
    assert deduper.forgotten == 10_000 - 100
    await deduper.store([event("0"), event("9999")], log)
    assert log.events[-1] == "0"
    assert len(log.events) == 10_001
    assert deduper.duplicates == 1


async def test_duplicates_and_failed_stores_hold_no_memory() -> None:
    """20,000 publishes of stored events and 20,000 failed ones (behind a store still in
    progress) leave the window's memory as it was and push no stored key out of a full
    window: only stored keys take room."""
    log, slow = Log(), Log()
    deduper = Deduper("t", DedupeConfig(max_entries=1000), clock=Clock())
    await deduper.store([event(str(i)) for i in range(1000)], log)
    slow.gate = anyio.Event()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(deduper.store, [event("slow")], slow)  # pending until the gate
            await anyio.lowlevel.checkpoint()
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for i in range(20_000):
                    await deduper.store([event(str(i % 1000))], log)
                    log.fail = True
                    with pytest.raises(PublishError):
                        await deduper.store([event(f"new-{i}")], log)
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            slow.gate.set()
    assert grown < 256_000, f"the window grew by {grown} bytes"  # (a dict resize: ~72 KB)
    assert log.events == [str(i) for i in range(1000)]  # no stored key was pushed out
    assert slow.events == ["slow"]
    assert deduper.duplicates == 20_000
    assert (len(deduper), deduper.forgotten) == (1000, 1)  # once "slow" was stored


async def test_a_keys_memory_does_not_grow_with_its_source_and_id() -> None:
    """The window holds a fixed-size digest per key, not the event's source and id: 200
    events with 64 KiB ids and sources take a few hundred bytes each, not 128 KiB each,
    and are still told apart exactly (the same text split differently is another key)."""

    async def discard(events: Sequence[Event]) -> None:
        """A store that keeps nothing, so only the window holds memory."""

    deduper = Deduper("t", DedupeConfig(), clock=Clock())
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            # Made here and dropped after the call: only what the window keeps stays.
            await deduper.store(
                [event(f"{i:04}" + "i" * 65_536, f"/{i:04}" + "s" * 65_536)], discard
            )
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(deduper) == 200
    assert grown < 200 * 1024, f"the window grew by {grown} bytes for 200 keys"
    log = Log()
    long_id = "0000" + "i" * 65_536
    await deduper.store([event(long_id, "/0000" + "s" * 65_536)], log)
    await deduper.store([event(long_id + "x", "/0000" + "s" * 65_536)], log)
    await deduper.store([event("bc", "/a"), event("c", "/ab"), event("\ud800", "/a")], log)
    await deduper.store([event("bc", "/a"), event("\ud800", "/a")], log)
    assert [len(id) for id in log.events] == [65_541, 2, 1, 1]
    assert deduper.duplicates == 3


async def test_a_failed_store_releases_its_keys_for_a_waiting_duplicate() -> None:
    """A publish waiting on another one's store of the same key stores the event itself
    when that store fails; a third, later publish finds it stored."""
    log = Log()
    deduper = Deduper("t", DedupeConfig(), clock=Clock())
    log.gate = anyio.Event()
    log.fail = True
    outcomes: list[str] = []

    async def publish(
        name: str, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()  # it runs on to its first wait before start() returns
        try:
            await deduper.store([event("x")], log)
            outcomes.append(f"{name} ok")
        except PublishError:
            outcomes.append(f"{name} failed")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(publish, "first")  # reserved "x", waits at the gate
            await tg.start(publish, "second")  # waits for the first's outcome
            assert log.events == []
            assert len(deduper) == 1
            log.gate.set()
    assert outcomes == ["first failed", "second ok"]
    assert log.events == ["x"]
    await deduper.store([event("x")], log)
    assert log.events == ["x"]


# -- after a restart ------------------------------------------------------------------------


def local(data_dir: Path, **dedupe: Any) -> dict[str, Any]:
    return {
        "connectors": {"default": {"type": "local", "data_dir": str(data_dir), "partitions": 1}},
        "topics": {"t": {"dedupe": {"window": "10m", **dedupe}}},
    }


async def test_a_restarted_mesh_still_drops_what_it_stored(tmp_path: Path) -> None:
    """On the local store, events stored before a restart are duplicates after it: a
    retry is answered with its id and not stored again, while a new event is stored."""
    async with Mesh(local(tmp_path)) as mesh:
        await mesh.publish("t", [event("a"), event("b")])
    async with Mesh(local(tmp_path)) as mesh:
        assert len(mesh._dedupers["t"]) == 2
        assert await mesh.publish("t", [event("a"), event("c"), event("b")]) == ["a", "c", "b"]
        held = await stored(mesh)
        assert mesh._dedupers["t"].duplicates == 2
    assert sorted(id for _, id in held) == ["a", "b", "c"]


async def test_a_rebuilt_window_keeps_the_newest_max_entries(tmp_path: Path) -> None:
    """With more events in the window than max_entries, the restarted mesh remembers the
    newest ones (read page by page): the newest is dropped again, the oldest stored again."""
    async with Mesh(local(tmp_path, max_entries=10)) as mesh:
        for i in range(50):
            await mesh.publish("t", event(f"e{i:02}"))
    async with Mesh(local(tmp_path, max_entries=10)) as mesh:
        assert len(mesh._dedupers["t"]) == 10
        await mesh.publish("t", [event("e49"), event("e00")])
        held = [id for _, id in await stored(mesh)]
    assert held.count("e49") == 1
    assert held.count("e00") == 2


class Paged(MemoryConnector):
    """A memory connector that records how many events each read() asks for."""

    def __init__(self) -> None:
        super().__init__(MemoryConfig(partitions=1))
        self.limits: list[int] = []

    async def read(self, topic: str, **options: Any) -> list[StoredEvent]:
        self.limits.append(options["limit"])
        return await super().read(topic, **options)


async def test_a_window_is_rebuilt_in_bounded_pages() -> None:
    """Rebuilding a window of 100,000 keys asks for at most 1,000 events a read (a page
    holds whole events, each up to max_event_size), and still finds every key stored."""
    connector = Paged()
    async with Mesh(connectors={"default": connector}) as mesh:
        for first in range(0, 2500, 500):
            await mesh.publish("t", [event(f"e{i:04}") for i in range(first, first + 500)])
        deduper = Deduper("t", DedupeConfig(max_entries=100_000))
        assert await deduper.load(connector) == 2500
        assert 0 < max(connector.limits) <= 1000
        log = Log()
        await deduper.store([event("e0000"), event("e2499"), event("new")], log)
        assert log.events == ["new"]
        small = Deduper("t", DedupeConfig(max_entries=10))
        connector.limits.clear()
        assert await small.load(connector) == 10
        assert set(connector.limits) == {10}
        await small.store([event("e2490"), event("e2489")], log)
        assert log.events == ["new", "e2489"]


class Unbrowsable(MemoryConnector):
    """A connector without read(), as a plugin may be: the contract's default refuses."""

    async def read(self, topic: str, **options: Any) -> list[StoredEvent]:
        return await Connector.read(self, topic, **options)


async def test_a_connector_that_cannot_browse_starts_with_an_empty_window() -> None:
    """Where read() raises RejectedError the mesh still opens, with an empty window, and
    de-duplicates from there."""
    topics: dict[str, Any] = {"t": {"dedupe": {}}}
    async with Mesh({"topics": topics}, connectors={"default": Unbrowsable()}) as mesh:
        assert len(mesh._dedupers["t"]) == 0
        await mesh.publish("t", [event("a"), event("a")])
        assert [id for _, id in await stored(mesh)] == ["a"]


class Unreachable(MemoryConnector):
    """A connector whose read() fails as a broker that does not answer in time does."""

    async def read(self, topic: str, **options: Any) -> list[StoredEvent]:
        raise SubscribeError(f"browsing {topic!r}: the broker did not answer within 10s")


async def test_a_failing_read_at_start_still_opens_the_mesh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A read that fails at start is logged as a warning naming the topic; the mesh opens
    and de-duplicates from an empty window rather than refusing to start."""
    topics: dict[str, Any] = {"t": {"dedupe": {}}}
    with caplog.at_level(logging.WARNING, logger="eventmesh._dedupe"):
        async with Mesh({"topics": topics}, connectors={"default": Unreachable()}) as mesh:
            await mesh.publish("t", [event("a"), event("a")])
            assert [id for _, id in await stored(mesh)] == ["a"]
    (warning,) = [r for r in caplog.records if r.name == "eventmesh._dedupe"]
    assert "topic 't': de-duplication window rebuilt in part (0 keys)" in warning.getMessage()
    assert "did not answer" in warning.getMessage()
