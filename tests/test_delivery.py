"""The delivery engine: retries, dead letters, TTL, order per key, at-least-once."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel
import pytest

import eventmesh
from eventmesh import ConfigError, DeliveryPolicy, Event, Mesh
from eventmesh.testing.polling import eventually

pytestmark = pytest.mark.anyio

FAST = {"backoff": {"initial": "1ms", "max": "10ms"}}


async def test_handler_failing_twice_is_acked_on_the_third_attempt() -> None:
    """A handler that raises twice sees the event three times; then it is committed."""
    calls: list[int] = []

    async def flaky(event: Event) -> None:
        calls.append(event.data)
        if len(calls) < 3:
            raise RuntimeError("not yet")

    async with eventmesh.connect() as mesh:
        async with mesh.subscribe("orders", "billing", handler=flaky, delivery=FAST) as sub:
            await mesh.publish("orders", Event(type="t", source="/s", data=7))
            await eventually(lambda: sub.stats.delivered == 1)
        assert calls == [7, 7, 7]
        assert sub.stats.retried == 2
        # Committed: the group's next member does not get it again.
        async with mesh.subscribe("orders", "billing") as again:
            await mesh.publish("orders", Event(type="t", source="/s", data="marker"))
            async for delivery in again:
                assert delivery.event.data == "marker"
                await delivery.ack()
                break


async def test_exhausted_events_go_to_the_dead_letter_topic_with_their_error() -> None:
    """After max_attempts the event lands on <topic>.dlq with why, how often and whence."""
    attempts = 0

    async def broken(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("card declined")

    async with eventmesh.connect() as mesh:
        sent = Event(type="pay", source="/s", data={"amount": 5})
        policy = {"max_attempts": 3, **FAST}
        async with mesh.subscribe("payments", "charge", handler=broken, delivery=policy):
            await mesh.publish("payments", sent)
            async with mesh.subscribe("payments.dlq", "ops", start="earliest") as dlq:
                async for delivery in dlq:
                    dead = delivery.event
                    await delivery.ack()
                    break
    assert attempts == 3
    assert (dead.id, dead.data) == (sent.id, sent.data)
    assert dead.extensions == {
        "deadletterreason": "failed",
        "deadlettererror": "ValueError: card declined",
        "deadletterattempts": 3,
        "deadlettertopic": "payments",
        "deadlettergroup": "charge",
    }


async def test_expired_events_are_dead_lettered_not_delivered() -> None:
    """An event older than the ttl skips the handler and is dead-lettered as expired."""
    handled: list[Event] = []

    async def handler(event: Event) -> None:
        handled.append(event)

    old = Event(type="t", source="/s", time=datetime.now(UTC) - timedelta(minutes=5))
    fresh = Event(type="t", source="/s")
    async with eventmesh.connect() as mesh:
        policy = {"ttl": "1m", "dead_letter": "expired.{group}"}
        async with mesh.subscribe("t", "g", handler=handler, delivery=policy) as sub:
            await mesh.publish("t", [old, fresh])
            await eventually(lambda: sub.stats.delivered + sub.stats.dead_lettered == 2)
        async with mesh.subscribe("expired.g", "ops", start="earliest") as dlq:
            async for delivery in dlq:
                assert delivery.event.id == old.id
                assert delivery.event.extensions["deadletterreason"] == "expired"
                break
    assert [e.id for e in handled] == [fresh.id]


async def test_order_per_key_holds_with_concurrency_16() -> None:
    """1,000 keys x 100 events reach a concurrency-16 handler in order per key."""
    keys, per_key = 1_000, 100
    seen: dict[str, list[int]] = defaultdict(list)
    active = 0
    most_active = 0

    async def handler(event: Event) -> None:
        nonlocal active, most_active
        active += 1
        most_active = max(most_active, active)
        if event.data % 7 == 0:
            await anyio.lowlevel.checkpoint()  # let other lanes run in between
        seen[event.extensions["partitionkey"]].append(event.data)  # type: ignore[index]
        active -= 1

    async with eventmesh.connect() as mesh:
        policy = DeliveryPolicy(concurrency=16, ordering="partitionkey")
        async with mesh.subscribe("o", "g", handler=handler, delivery=policy) as sub:
            for n in range(per_key):
                await mesh.publish(
                    "o",
                    [
                        Event(type="t", source="/s", data=n, extensions={"partitionkey": f"k{k}"})
                        for k in range(keys)
                    ],
                )
            await eventually(lambda: sub.stats.delivered == keys * per_key, timeout=60)
    assert len(seen) == keys
    assert all(numbers == list(range(per_key)) for numbers in seen.values())
    assert 1 < most_active <= 16


async def test_unacked_events_are_redelivered_after_shutdown() -> None:
    """An event still in a handler when its subscription stops comes back to the group."""
    started = anyio.Event()

    async def stuck(event: Event) -> None:
        started.set()
        await anyio.sleep(60)

    async with eventmesh.connect() as mesh:
        sub = mesh.subscribe("jobs", "workers", handler=stuck)
        await sub
        await mesh.publish("jobs", Event(type="t", source="/s", data="job"))
        await started.wait()
        await sub.close(timeout=0.1)
        async with mesh.subscribe("jobs", "workers") as again:
            async for delivery in again:
                assert delivery.event.data == "job"
                await delivery.ack()
                break


async def test_iterator_nack_retries_then_dead_letters() -> None:
    """A nacked delivery returns as attempt 2, and after max_attempts goes to the dead letters."""
    async with eventmesh.connect() as mesh:
        await mesh.publish("n", Event(type="t", source="/s"))
        attempts = []
        policy = {"max_attempts": 2, **FAST}
        async with mesh.subscribe("n", "g", start="earliest", delivery=policy) as sub:
            async for delivery in sub:
                attempts.append(delivery.attempt)
                await delivery.nack("handler said no")
                if len(attempts) == 2:
                    break
        async with mesh.subscribe("n.dlq", "ops", start="earliest") as dlq:
            async for delivery in dlq:
                assert delivery.event.extensions["deadlettererror"] == "handler said no"
                break
    assert attempts == [1, 2]


async def test_without_a_dead_letter_topic_failures_are_dropped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """dead_letter: null drops an exhausted event with an error log, and acks it."""

    async def broken(event: Event) -> None:
        raise RuntimeError("no")

    async with eventmesh.connect() as mesh:
        policy = {"max_attempts": 1, "dead_letter": None}
        async with mesh.subscribe("d", "g", handler=broken, delivery=policy) as sub:
            await mesh.publish("d", Event(type="t", source="/s"))
            await eventually(lambda: sub.stats.dead_lettered == 1)
    assert "no dead-letter topic is set" in caplog.text


@pytest.mark.parametrize(
    ("group", "dead_letter"), [("g", "{topic}"), ("g", "loop"), ("loop", "{group}")]
)
async def test_a_dead_letter_topic_that_is_the_subscriptions_own_is_refused(
    group: str, dead_letter: str
) -> None:
    """A dead_letter that resolves to the subscribed topic (by {topic}, {group} or its
    name) fails the subscribe with a ConfigError naming delivery.dead_letter: every
    event given up on would come back to the topic and be given up again, for ever."""
    async with eventmesh.connect() as mesh:
        with pytest.raises(ConfigError, match="names the topic the subscription reads") as error:
            mesh.subscribe("loop", group, delivery={"dead_letter": dead_letter})
        assert error.value.key == "delivery.dead_letter"
        assert "'loop'" in str(error.value)
        async with mesh.subscribe("loop", group, delivery={"dead_letter": "{topic}.{group}"}):
            pass


class OwnTopic(DeliveryPolicy, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A policy that names the subscription's own topic without the check, as a plugin's
    own policy class might."""

    def dead_letter_topic(self, topic: str, group: str) -> str | None:
        return topic


async def test_an_event_is_never_dead_lettered_to_the_topic_it_was_read_from(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Should a policy name the topic itself all the same, the event given up on is
    dropped with an error saying why, and acked: it is not stored on its topic again,
    so it is not delivered again."""
    calls: list[str] = []

    async def broken(event: Event) -> None:
        calls.append(event.id)
        raise RuntimeError("no")

    async with Mesh() as mesh:
        policy = OwnTopic(max_attempts=1)
        async with mesh.subscribe("loop", "g", handler=broken, delivery=policy) as sub:
            await mesh.publish("loop", Event(type="t", source="/s", id="one"))
            await eventually(lambda: sub.stats.dead_lettered >= 1)
            held = await mesh.connector("loop").read("loop", limit=10)
    assert [stored.event.id for stored in held] == ["one"]
    assert calls == ["one"]
    assert sub.stats.dead_lettered == 1
    assert "'loop' is the topic it was read from" in caplog.text


async def test_sync_handlers_do_not_block_the_loop() -> None:
    """A blocking plain-function handler runs in a thread while async work keeps its pace."""
    threads: set[str] = set()
    during: list[int] = []

    def blocking(event: Event) -> None:
        threads.add(threading.current_thread().name)
        start = ticks
        time.sleep(0.3)
        during.append(ticks - start)

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with eventmesh.connect() as mesh, anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with mesh.subscribe("s", "g", handler=blocking) as sub:
            await mesh.publish("s", Event(type="t", source="/s"))
            await eventually(lambda: sub.stats.delivered == 1)
        tg.cancel_scope.cancel()
    assert threading.main_thread().name not in threads
    # About 30 ticks fit in the 0.3 s the handler blocked; a blocked loop makes none. A
    # few, not a rate, so that a slow machine's late wake-ups do not decide it.
    [blocked] = during
    assert blocked >= 3, during


async def test_many_producers_and_consumers_lose_nothing() -> None:
    """4 producers x 4 consumers (one group) x 100,000 events each: every event arrives."""
    per_producer = 100_000
    seen: set[tuple[int, int]] = set()

    async def handler(event: Event) -> None:
        seen.add((event.data[0], event.data[1]))

    async def produce(p: int) -> None:
        for start in range(0, per_producer, 500):
            await mesh.publish(
                "load",
                [
                    Event(type="t", source="/s", data=(p, n), extensions={"partitionkey": n % 97})
                    for n in range(start, start + 500)
                ],
            )

    async with Mesh({"connectors": {"default": {"type": "memory", "partitions": 8}}}) as mesh:
        subs = [mesh.subscribe("load", "workers", handler=handler) for _ in range(4)]
        for sub in subs:
            await sub
        async with anyio.create_task_group() as tg:
            for p in range(4):
                tg.start_soon(produce, p)
        await eventually(lambda: len(seen) == 4 * per_producer, timeout=120)
        assert all(sub.stats.received > 0 for sub in subs)
    assert len(seen) == 4 * per_producer


async def test_a_failing_fetch_is_retried_not_fatal() -> None:
    """A backend error while fetching is retried; the subscription keeps delivering."""
    from faults import Troubled

    from eventmesh.errors import SubscribeError

    class Flaky(Troubled):
        """A memory connector whose first two fetches on 'f' fail."""

        def __init__(self) -> None:
            super().__init__()
            self.failures = [SubscribeError("broker away"), SubscribeError("still away")]

        def trouble(self, topic: str) -> None:
            if topic == "f" and self.failures:
                raise self.failures.pop(0)

    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    async with (
        Mesh(connectors={"default": Flaky()}) as mesh,
        mesh.subscribe("f", "g", handler=handler, delivery=FAST) as sub,
    ):
        await mesh.publish("f", Event(type="t", source="/s"))
        await eventually(lambda: sub.stats.delivered == 1)
    assert len(got) == 1


def test_the_backoff_holds_at_its_max_for_any_attempt_a_policy_allows() -> None:
    """The delay grows by the multiplier up to ``max`` and stays there, for every attempt
    ``max_attempts`` allows (up to 10,000 with a multiplier of up to 100), instead of
    overflowing a float and failing the retry."""
    from eventmesh._duration import Duration
    from eventmesh.delivery.policy import Backoff, retry_delay

    backoff = Backoff(initial=Duration(1), max=Duration(60), multiplier=100, jitter=0)
    policy = DeliveryPolicy(max_attempts=10_000, backoff=backoff)
    assert [policy.backoff.delay(n) for n in (1, 2, 3)] == [1.0, 60.0, 60.0]
    assert retry_delay(policy, 9_999, RuntimeError("boom")) == 60.0
    assert retry_delay(policy, 10_000, RuntimeError("boom")) is None
