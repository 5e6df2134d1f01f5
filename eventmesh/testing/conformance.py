"""The connector conformance kit: one pytest suite every connector must pass.

A plugin subclasses :class:`ConnectorConformance` in its own tests and supplies a
``connector`` fixture that yields an *open* connector (and, for a ``durable`` one, a
``reopen`` fixture). The kit tests the base contract on every connector and each
optional promise only where ``connector.capabilities`` claims it. See
docs/connectors.md, 'The kit's knobs' and 'Capabilities and what the kit checks'.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import anyio
import pytest

from eventmesh._loop import backend_options
from eventmesh.bindings import encode_attribute
from eventmesh.connectors.base import Connector, Consumer, Delivery, StoredEvent
from eventmesh.errors import ClosedError, LifecycleError, RejectedError
from eventmesh.event import Event

__all__ = ["ConnectorConformance", "collect"]


async def collect(
    consumer: Consumer,
    count: int,
    *,
    timeout: float,
    ack: bool = True,
) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived or ``timeout`` passed; ack them if asked."""
    got: list[Delivery] = []
    with anyio.move_on_after(timeout):
        while len(got) < count:
            batch = await consumer.fetch(count - len(got), timeout=0.5)
            for delivery in batch:
                if ack:
                    await delivery.ack()
            got.extend(batch)
    return got


def _events(count: int, *, keys: int = 0, tag: str = "") -> list[Event]:
    return [
        Event(
            type="io.eventmesh.conformance",
            source="/conformance",
            subject=tag or None,
            data={"n": i},
            extensions={"partitionkey": f"k{i % keys}"} if keys else {},
        )
        for i in range(count)
    ]


def _canonical(event: Event) -> Event:
    return event.replace(extensions={k: encode_attribute(v) for k, v in event.extensions.items()})


def _numbers(deliveries: Sequence[Delivery]) -> list[int]:
    return [d.event.data["n"] for d in deliveries]


class ConnectorConformance:
    """The abstract suite; subclass it and provide the ``connector`` fixture."""

    timeout: ClassVar[float] = 20.0
    """Seconds to wait for deliveries that must arrive."""
    quiet: ClassVar[float] = 1.0
    """Seconds to watch for deliveries that must not arrive."""
    invalid_topic: ClassVar[str] = ""
    """A topic name the backend never accepts: ``check_topic``, ``publish`` and
    ``subscribe`` must refuse it with ``RejectedError`` (400, do not retry)."""
    stress_events: ClassVar[int] = 4_000
    """Events per producer in the stress case (4 producers, 4 consumers)."""

    # -- fixtures ------------------------------------------------------------------------

    @pytest.fixture
    def anyio_backend(self) -> Any:
        """The kit runs on asyncio (with uvloop where it is installed)."""
        return ("asyncio", backend_options())

    @pytest.fixture
    def topic(self) -> str:
        """A topic name no other test uses."""
        return f"conformance-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    async def connector(self) -> Connector:
        """An open connector; the subclass must provide it (usually as an async generator)."""
        raise NotImplementedError("subclass ConnectorConformance and define 'connector'")

    @pytest.fixture
    def reopen(self) -> Callable[[], Connector]:
        """A function making a new, unopened connector on the same backend and config as
        ``connector``; a subclass whose connector claims ``durable`` must provide it."""
        pytest.fail(
            "the connector claims 'durable': define a 'reopen' fixture returning a function "
            "that makes a new connector on the same backend and configuration"
        )

    def need(self, connector: Connector, capability: str) -> None:
        """Skip unless the connector claims ``capability``."""
        if not getattr(connector.capabilities, capability):
            pytest.skip(f"{type(connector).__name__} does not claim {capability!r}")

    # -- the base contract ---------------------------------------------------------------

    @pytest.mark.anyio
    async def test_published_events_are_delivered(self, connector: Connector, topic: str) -> None:
        """Events published after a group joined are all delivered to it."""
        async with connector.subscribe(topic, "g") as consumer:
            await connector.publish(topic, _events(20))
            got = await collect(consumer, 20, timeout=self.timeout)
        assert sorted(_numbers(got)) == list(range(20))
        assert all(d.topic == topic and d.attempt == 1 for d in got)

    @pytest.mark.anyio
    async def test_republished_events_are_stored_again(
        self, connector: Connector, topic: str
    ) -> None:
        """``republish`` (a dead-letter replay) stores events the topic already holds
        anew: a backend that de-duplicates by ``source`` and ``id`` must not drop them."""
        sent = _events(3)
        async with connector.subscribe(topic, "g") as consumer:
            await connector.publish(topic, sent)
            await connector.republish(topic, sent, [f"{topic}.0.{i}" for i in range(3)])
            got = await collect(consumer, 6, timeout=self.timeout)
        assert sorted(_numbers(got)) == [0, 0, 1, 1, 2, 2]
        assert sorted(d.event.id for d in got) == sorted(e.id for e in sent * 2)

    @pytest.mark.anyio
    async def test_event_attributes_survive_the_backend(
        self, connector: Connector, topic: str
    ) -> None:
        """Every attribute, extension and kind of data comes back as it was published."""
        stamp = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
        sent = [
            Event(
                type="com.example.full",
                source="https://example.com/source",
                id="id-1",
                time=stamp,
                subject="orders/42",
                datacontenttype="application/json",
                dataschema="https://example.com/schema.json",
                data={"nested": {"list": [1, 2.5, None, True, "x"]}},
                extensions={"comexampletext": "v", "comexampleint": 42, "comexampleflag": True},
            ),
            Event(type="t.bytes", source="/s", id="id-2", data=b"\x00\x01binary\xff"),
            Event(
                type="t.text",
                source="/s",
                id="id-3",
                datacontenttype="text/plain",
                data="plain text, ünïcode",
            ),
            Event(type="t.none", source="/s", id="id-4", time=None),
        ]
        async with connector.subscribe(topic, "g") as consumer:
            await connector.publish(topic, sent)
            got = await collect(consumer, len(sent), timeout=self.timeout)
        received = sorted((d.event for d in got), key=lambda e: e.id)
        # Binary-mode headers carry no types: an extension may come back as its canonical
        # string ("42", "true"), which the CloudEvents spec allows; nothing else may change.
        assert [_canonical(e) for e in received] == [_canonical(e) for e in sent]

    @pytest.mark.anyio
    async def test_groups_each_get_every_event(self, connector: Connector, topic: str) -> None:
        """Two groups on one topic both receive every event (broadcast)."""
        async with connector.subscribe(topic, "a") as a, connector.subscribe(topic, "b") as b:
            await connector.publish(topic, _events(30))
            got_a = await collect(a, 30, timeout=self.timeout)
            got_b = await collect(b, 30, timeout=self.timeout)
        assert sorted(_numbers(got_a)) == list(range(30))
        assert sorted(_numbers(got_b)) == list(range(30))

    @pytest.mark.anyio
    async def test_members_of_a_group_share_the_work(
        self, connector: Connector, topic: str
    ) -> None:
        """Two members of one group split the events between them; none is lost."""
        self.need(connector, "consumer_groups")
        async with (
            connector.subscribe(topic, "shared") as a,
            connector.subscribe(topic, "shared") as b,
        ):
            await connector.publish(topic, _events(200, keys=40))
            seen: dict[str, list[int]] = {"a": [], "b": []}

            async def drain(name: str, consumer: Consumer) -> None:
                while len(set(seen["a"]) | set(seen["b"])) < 200:
                    for d in await consumer.fetch(50, timeout=0.2):
                        seen[name].append(d.event.data["n"])
                        await d.ack()

            with anyio.move_on_after(self.timeout):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drain, "a", a)
                    tg.start_soon(drain, "b", b)
        assert set(seen["a"]) | set(seen["b"]) == set(range(200))
        assert seen["a"], "the first member got no work"
        assert seen["b"], "the second member got no work"

    @pytest.mark.anyio
    async def test_acked_events_are_not_delivered_again(
        self, connector: Connector, topic: str
    ) -> None:
        """After a member acks and leaves, the next member of the group starts after them."""
        self.need(connector, "redelivery")
        async with connector.subscribe(topic, "g") as consumer:
            await connector.publish(topic, _events(10))
            assert len(await collect(consumer, 10, timeout=self.timeout)) == 10
        async with connector.subscribe(topic, "g") as consumer:
            await connector.publish(topic, _events(1, tag="after"))
            got = await collect(consumer, 2, timeout=self.quiet + 2)
        assert [d.event.subject for d in got] == ["after"]

    @pytest.mark.anyio
    async def test_unacked_events_are_delivered_again(
        self, connector: Connector, topic: str
    ) -> None:
        """Events a member took but never acked go to the group's next member."""
        self.need(connector, "redelivery")
        async with connector.subscribe(topic, "g") as consumer:
            await connector.publish(topic, _events(10))
            first = await collect(consumer, 10, timeout=self.timeout, ack=False)
            assert len(first) == 10
        async with connector.subscribe(topic, "g", start="latest") as consumer:
            again = await collect(consumer, 10, timeout=self.timeout)
        assert sorted(_numbers(again)) == list(range(10))

    @pytest.mark.anyio
    async def test_nack_redelivers_with_a_higher_attempt(
        self, connector: Connector, topic: str
    ) -> None:
        """A nacked event comes back, counted as attempt 2."""
        self.need(connector, "redelivery")
        async with connector.subscribe(topic, "g") as consumer:
            await connector.publish(topic, _events(1))
            (first,) = await collect(consumer, 1, timeout=self.timeout, ack=False)
            await first.nack()
            (second,) = await collect(consumer, 1, timeout=self.timeout)
        assert second.event == first.event
        assert second.attempt == 2

    @pytest.mark.anyio
    async def test_nack_delay_is_honoured(self, connector: Connector, topic: str) -> None:
        """A nack with a delay is not redelivered before the delay has passed."""
        self.need(connector, "redelivery")
        delay = 1.0
        async with connector.subscribe(topic, "g") as consumer:
            await connector.publish(topic, _events(1))
            (first,) = await collect(consumer, 1, timeout=self.timeout, ack=False)
            nacked_at = time.monotonic()
            await first.nack(delay)
            (second,) = await collect(consumer, 1, timeout=self.timeout)
            waited = time.monotonic() - nacked_at
        assert second.event.id == first.event.id
        assert waited >= delay * 0.9

    @pytest.mark.anyio
    async def test_commit_waits_for_every_earlier_ack(
        self, connector: Connector, topic: str
    ) -> None:
        """With the first event unacked, acking later ones does not commit past it."""
        self.need(connector, "redelivery")
        self.need(connector, "ordered_by_key")
        async with connector.subscribe(topic, "g") as consumer:
            await connector.publish(topic, _events(5, keys=1))
            got = await collect(consumer, 5, timeout=self.timeout, ack=False)
            assert _numbers(got) == [0, 1, 2, 3, 4]
            for delivery in got[1:]:
                await delivery.ack()
        async with connector.subscribe(topic, "g") as consumer:
            again = await collect(consumer, 1, timeout=self.timeout)
        assert _numbers(again) == [0]

    @pytest.mark.anyio
    async def test_order_is_kept_per_key(self, connector: Connector, topic: str) -> None:
        """Events with the same partition key arrive in the order they were published."""
        self.need(connector, "ordered_by_key")
        events = _events(300, keys=7)
        async with connector.subscribe(topic, "g") as consumer:
            for i in range(0, 300, 50):
                await connector.publish(topic, events[i : i + 50])
            got = await collect(consumer, 300, timeout=self.timeout)
        by_key: dict[str | None, list[int]] = defaultdict(list)
        for d in got:
            by_key[d.key].append(d.event.data["n"])
        assert sorted(str(k) for k in by_key) == [f"k{i}" for i in range(7)]
        for numbers in by_key.values():
            assert numbers == sorted(numbers)

    @pytest.mark.anyio
    async def test_order_per_key_holds_across_members(
        self, connector: Connector, topic: str
    ) -> None:
        """With two members, each key is read by one of them, in publish order."""
        self.need(connector, "ordered_by_key")
        self.need(connector, "consumer_groups")
        events = _events(400, keys=16)
        seen: dict[str, dict[str, list[int]]] = {"a": defaultdict(list), "b": defaultdict(list)}
        async with connector.subscribe(topic, "g") as a, connector.subscribe(topic, "g") as b:
            for i in range(0, 400, 50):
                await connector.publish(topic, events[i : i + 50])

            async def drain(name: str, consumer: Consumer) -> None:
                while sum(len(v) for m in seen.values() for v in m.values()) < 400:
                    for d in await consumer.fetch(50, timeout=0.2):
                        seen[name][str(d.key)].append(d.event.data["n"])
                        await d.ack()

            with anyio.move_on_after(self.timeout):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drain, "a", a)
                    tg.start_soon(drain, "b", b)
        keys_a, keys_b = set(seen["a"]), set(seen["b"])
        assert keys_a | keys_b == {f"k{i}" for i in range(16)}
        assert not keys_a & keys_b, f"keys read by both members: {sorted(keys_a & keys_b)}"
        for member in seen.values():
            for numbers in member.values():
                assert numbers == sorted(numbers)
        assert sum(len(v) for m in seen.values() for v in m.values()) == 400

    @pytest.mark.anyio
    async def test_latest_start_skips_earlier_events(
        self, connector: Connector, topic: str
    ) -> None:
        """A new group starting at 'latest' sees only what is published after it joined."""
        await connector.publish(topic, _events(5, tag="before"))
        async with connector.subscribe(topic, "late", start="latest") as consumer:
            await connector.publish(topic, _events(3, tag="after"))
            got = await collect(consumer, 8, timeout=self.quiet + 2)
        assert [d.event.subject for d in got] == ["after"] * 3

    @pytest.mark.anyio
    async def test_earliest_start_replays_retained_events(
        self, connector: Connector, topic: str
    ) -> None:
        """A new group starting at 'earliest' gets events published before it existed."""
        self.need(connector, "replay")
        await connector.publish(topic, _events(5))
        async with connector.subscribe(topic, "replayer", start="earliest") as consumer:
            got = await collect(consumer, 5, timeout=self.timeout)
        assert sorted(_numbers(got)) == [0, 1, 2, 3, 4]

    @pytest.mark.anyio
    async def test_start_at_a_time_skips_older_events(
        self, connector: Connector, topic: str
    ) -> None:
        """A new group starting at a time gets the events stored from then on."""
        self.need(connector, "replay")
        await connector.publish(topic, _events(3, tag="old"))
        await anyio.sleep(1.1)
        cut = datetime.now(UTC) - timedelta(milliseconds=100)
        await anyio.sleep(0.2)
        await connector.publish(topic, _events(2, tag="new"))
        async with connector.subscribe(topic, "timed", start=cut) as consumer:
            got = await collect(consumer, 5, timeout=self.quiet + 2)
        assert [d.event.subject for d in got] == ["new", "new"]

    # -- durability ----------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_unacked_events_survive_a_restart(
        self, connector: Connector, topic: str, request: pytest.FixtureRequest
    ) -> None:
        """Events published and partly acked, the connector closed and a new one opened on
        the same backend: every unacked event is delivered again, nothing acked returns."""
        self.need(connector, "durable")
        reopen: Callable[[], Connector] = request.getfixturevalue("reopen")
        async with connector.subscribe(topic, "durable") as consumer:
            await connector.publish(topic, _events(30, keys=5))
            got = await collect(consumer, 30, timeout=self.timeout, ack=False)
            assert len(got) == 30
            by_partition: dict[int, list[Delivery]] = defaultdict(list)
            for delivery in got:
                by_partition[delivery.partition].append(delivery)
            acked: set[int] = set()
            for deliveries in by_partition.values():  # ack the first half of each partition
                deliveries.sort(key=lambda d: d.offset)
                for delivery in deliveries[: (len(deliveries) + 1) // 2]:
                    await delivery.ack()
                    acked.add(delivery.event.data["n"])
        await connector.publish(topic, _events(5, keys=5, tag="unread"))  # never fetched
        await connector.close()
        unacked = sorted(set(range(30)) - acked)
        async with reopen() as again, again.subscribe(topic, "durable") as consumer:
            back = await collect(consumer, len(unacked) + 5, timeout=self.timeout)
            back += await collect(consumer, 1, timeout=self.quiet)  # and nothing more
        old = sorted(d.event.data["n"] for d in back if d.event.subject is None)
        assert not set(old) & acked, f"acked events came back: {sorted(set(old) & acked)}"
        assert old == unacked
        assert sorted(d.event.data["n"] for d in back if d.event.subject == "unread") == list(
            range(5)
        )

    # -- optional parts: read() and state() ----------------------------------------------

    async def _read_all(self, connector: Connector, topic: str, **kw: Any) -> list[StoredEvent]:
        try:
            return await connector.read(topic, **kw)
        except RejectedError:
            pytest.skip(f"{type(connector).__name__} does not browse stored events")

    @pytest.mark.anyio
    async def test_read_browses_without_consuming(self, connector: Connector, topic: str) -> None:
        """read() returns stored events page by page (by offset cursor, in offset order
        per partition) and consumes nothing: a new group still gets them all."""
        await self._read_all(connector, topic, limit=1)
        await connector.publish(topic, _events(10, keys=3))
        every: list[StoredEvent] = []
        with anyio.move_on_after(self.timeout):
            while len(every) < 10:
                every = await connector.read(topic, limit=100)
                if len(every) < 10:
                    await anyio.sleep(0.1)
        assert sorted(s.event.data["n"] for s in every) == list(range(10))
        pages: list[StoredEvent] = []
        cursor: dict[int, int] = {}
        for _ in range(10):
            page = await connector.read(topic, after=cursor, limit=3)
            assert len(page) <= 3
            if not page:
                break
            pages += page
            for stored in page:
                cursor[stored.partition] = max(cursor.get(stored.partition, -1), stored.offset)
        assert sorted(s.event.data["n"] for s in pages) == list(range(10))
        for p in {s.partition for s in pages}:
            offsets = [s.offset for s in pages if s.partition == p]
            assert offsets == sorted(offsets)
        later = datetime.now(UTC) + timedelta(hours=1)
        assert await connector.read(topic, since=later) == []
        if connector.capabilities.replay:
            async with connector.subscribe(topic, "after-read", start="earliest") as consumer:
                got = await collect(consumer, 10, timeout=self.timeout)
            assert sorted(_numbers(got)) == list(range(10))

    @pytest.mark.anyio
    async def test_state_keeps_and_reports_keys(
        self, connector: Connector, request: pytest.FixtureRequest
    ) -> None:
        """state(bucket) stores, deletes and watches keys; on a durable connector the
        keys are there again after a restart."""
        bucket = f"kit_{uuid.uuid4().hex[:10]}"
        store = connector.state(bucket)
        if store is None:
            pytest.skip(f"{type(connector).__name__} keeps no state")
        seen: dict[str, bytes | None] = {}
        settled = anyio.Event()

        async def watch() -> None:
            async for key, value in store.watch():
                seen[key] = value  # the last report for a key is its value
                if seen.get("a", b"") is None and "b.c=d-e_f" in seen:
                    settled.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await anyio.sleep(0.2)  # let the watch begin: it reports changes after it
            await store.put("a", b"1")
            await store.put("b.c=d-e_f", b"\x00two")
            await store.delete("a")
            await store.delete("never-there")  # does nothing (a report of None is harmless)
            assert await store.load() == {"b.c=d-e_f": b"\x00two"}
            with anyio.fail_after(self.timeout):
                await settled.wait()
            tg.cancel_scope.cancel()
        seen.pop("never-there", None)
        assert seen == {"a": None, "b.c=d-e_f": b"\x00two"}
        if connector.capabilities.durable:
            reopen: Callable[[], Connector] = request.getfixturevalue("reopen")
            await connector.close()
            async with reopen() as again:
                again_store = again.state(bucket)
                assert again_store is not None
                assert await again_store.load() == {"b.c=d-e_f": b"\x00two"}

    # -- lifecycle and errors ------------------------------------------------------------

    @pytest.mark.anyio
    async def test_use_after_close_raises_closed_error(
        self, connector: Connector, topic: str
    ) -> None:
        """Publishing after close, and fetching from a closed consumer, raise ClosedError."""
        consumer = connector.subscribe(topic, "g")
        await consumer.start()
        await consumer.close()
        await consumer.close()  # idempotent
        with pytest.raises(ClosedError):
            await consumer.fetch(1, timeout=0.1)
        await connector.close()
        with pytest.raises(ClosedError):
            await connector.publish(topic, _events(1))
        with pytest.raises(ClosedError):
            await connector.open()

    @pytest.mark.anyio
    async def test_opening_twice_raises_lifecycle_error(self, connector: Connector) -> None:
        """An open connector refuses to be opened again."""
        with pytest.raises(LifecycleError):
            await connector.open()

    @pytest.mark.anyio
    async def test_fetch_returns_empty_after_its_timeout(
        self, connector: Connector, topic: str
    ) -> None:
        """fetch with a timeout and nothing to deliver returns an empty list."""
        async with connector.subscribe(topic, "idle") as consumer:
            assert await consumer.fetch(10, timeout=0.3) == []

    @pytest.mark.anyio
    async def test_a_topic_name_the_backend_refuses_is_rejected(
        self, connector: Connector, topic: str
    ) -> None:
        """A topic name the backend never accepts raises RejectedError (never retried)
        from check_topic, publish and subscribe, with a message naming the rule, and
        nothing of the refused publish reaches a valid topic."""
        with pytest.raises(RejectedError) as info:
            connector.check_topic(self.invalid_topic)
        assert str(info.value)
        connector.check_topic(topic)  # a fine name passes
        with pytest.raises(RejectedError):
            await connector.publish(self.invalid_topic, _events(1, tag="refused"))
        with pytest.raises(RejectedError):
            await connector.subscribe(self.invalid_topic, "g").start()
        async with connector.subscribe(topic, "after") as consumer:
            await connector.publish(topic, _events(1, tag="kept"))
            got = await collect(consumer, 2, timeout=self.quiet + 1)
        assert [d.event.subject for d in got] == ["kept"]

    # -- load ----------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_many_producers_and_consumers_lose_nothing(
        self, connector: Connector, topic: str
    ) -> None:
        """4 producers and 4 members of one group: every event is delivered at least once."""
        per_producer = self.stress_events
        total = 4 * per_producer
        seen: set[tuple[int, int]] = set()

        async def produce(p: int) -> None:
            for start in range(0, per_producer, 100):
                batch = [
                    Event(
                        type="io.eventmesh.stress",
                        source=f"/producer/{p}",
                        data={"p": p, "n": n},
                        extensions={"partitionkey": f"k{n % 31}"},
                    )
                    for n in range(start, min(start + 100, per_producer))
                ]
                await connector.publish(topic, batch)

        async def consume(consumer: Consumer) -> None:
            while len(seen) < total:
                for d in await consumer.fetch(200, timeout=0.2):
                    seen.add((d.event.data["p"], d.event.data["n"]))
                    await d.ack()

        consumers = [connector.subscribe(topic, "stress") for _ in range(4)]
        for consumer in consumers:
            await consumer.start()
        try:
            with anyio.move_on_after(self.timeout * 6):
                async with anyio.create_task_group() as tg:
                    for consumer in consumers:
                        tg.start_soon(consume, consumer)
                    async with anyio.create_task_group() as producers:
                        for p in range(4):
                            producers.start_soon(produce, p)
        finally:
            for consumer in consumers:
                await consumer.close()
        missing = total - len(seen)
        assert missing == 0, f"{missing} of {total} events were never delivered"
