"""The SDK's behaviour, the same embedded, over HTTP and over gRPC (``client`` fixture)."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from eventmesh import (
    ClosedError,
    ConfigError,
    Delivery,
    DeliveryError,
    Event,
    EventValidationError,
    Subscription,
)
from eventmesh._client import Client
from eventmesh.testing.polling import eventually

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {"backoff": {"initial": "1ms", "max": "1ms", "jitter": 0}}
"""A delivery policy that retries at once, so tests need not wait for backoff."""


def order(n: int, **attributes: Any) -> Event:
    """A small event with a JSON object as data."""
    return Event(type="com.example.order", source="/shop", data={"n": n}, **attributes)


async def take(sub: Subscription, count: int, *, ack: bool = True) -> list[Delivery]:
    """The next ``count`` deliveries of an iterated subscription, acked unless told."""
    got: list[Delivery] = []
    with anyio.fail_after(10):
        async for delivery in sub:
            if ack:
                await delivery.ack()
            got.append(delivery)
            if len(got) == count:
                break
    return got


async def test_events_arrive_in_order_from_earliest(client: Client) -> None:
    """One event and then a batch, published before subscribing, arrive in order."""
    first, batch = order(1), [order(2), order(3)]
    await client.publish("orders", first)
    await client.publish("orders", batch)
    async with client.subscribe("orders", "g", start="earliest") as sub:
        got = await take(sub, 3)
    assert [d.event.id for d in got] == [first.id, batch[0].id, batch[1].id]
    assert [d.event.data for d in got] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert {(d.topic, d.attempt) for d in got} == {("orders", 1)}


async def test_ack_settles_and_nack_redelivers(client: Client) -> None:
    """A nacked event comes back with attempt 2; an acked one never comes back."""
    event, marker = order(1), order(2)
    await client.publish("orders", event)
    async with client.subscribe("orders", "g", start="earliest", delivery=FAST) as sub:
        (first,) = await take(sub, 1, ack=False)
        await first.nack("try again")
        (second,) = await take(sub, 1)
        await client.publish("orders", marker)
        (after,) = await take(sub, 1)
    assert (first.event.id, first.attempt) == (event.id, 1)
    assert (second.event.id, second.attempt) == (event.id, 2)
    assert after.event.id == marker.id


async def test_exhausted_attempts_go_to_the_dead_letter_topic(client: Client) -> None:
    """After max_attempts nacks the event is stored on '{topic}.dlq', marked failed."""
    event = order(1)
    await client.publish("orders", event)
    policy = {**FAST, "max_attempts": 2}
    async with client.subscribe("orders", "g", start="earliest", delivery=policy) as sub:
        for _ in range(2):
            (delivery,) = await take(sub, 1, ack=False)
            await delivery.nack(ValueError("bad order"))
    async with client.subscribe("orders.dlq", "ops", start="earliest") as dlq:
        (dead,) = await take(dlq, 1)
    assert dead.event.id == event.id
    assert dead.event.extensions["deadletterreason"] == "failed"
    assert "ValueError: bad order" in str(dead.event.extensions["deadlettererror"])


async def test_extension_types_survive_a_single_publish(client: Client) -> None:
    """An int and a bool extension of one published event arrive as an int and a bool."""
    event = Event(type="t", source="/s", extensions={"priority": 3, "urgent": True})
    await client.publish("typed", event)
    async with client.subscribe("typed", "g", start="earliest") as sub:
        (got,) = await take(sub, 1)
    assert got.event.extensions == {"priority": 3, "urgent": True}


async def test_a_nack_that_gives_up_dead_letters_at_once(client: Client) -> None:
    """nack(DeliveryError(retryable=False)) skips the remaining attempts, on every
    transport."""
    event = order(1)
    await client.publish("orders", event)
    async with client.subscribe("orders", "g", start="earliest", delivery=FAST) as sub:
        (delivery,) = await take(sub, 1, ack=False)
        await delivery.nack(DeliveryError("gone for good", retryable=False))
    async with client.subscribe("orders.dlq", "ops", start="earliest") as dlq:
        (dead,) = await take(dlq, 1)
    assert dead.event.id == event.id
    assert dead.event.extensions["deadletterattempts"] == 1
    assert "gone for good" in str(dead.event.extensions["deadlettererror"])


async def test_filter_and_transform_apply(client: Client) -> None:
    """Only events of the filtered type arrive, changed by the transform."""
    kept, other, kept2 = order(1), Event(type="com.example.refund", source="/shop"), order(2)
    await client.publish("orders", [kept, other, kept2])
    async with client.subscribe(
        "orders",
        "g",
        start="earliest",
        filter={"exact": {"type": "com.example.order"}},
        transform=[{"set": {"region": "eu", "subject": {"from": "$.data.n"}}}],
    ) as sub:
        got = await take(sub, 2)
    assert [d.event.id for d in got] == [kept.id, kept2.id]
    assert [d.event.extensions["region"] for d in got] == ["eu", "eu"]
    assert [d.event.subject for d in got] == ["1", "2"]


async def test_async_and_sync_handlers_get_events(client: Client) -> None:
    """An async handler runs on the loop and a plain one in a worker thread; both the
    'async with' and the 'await' then close() forms deliver."""
    loop_thread = threading.get_ident()
    seen: dict[str, list[tuple[str, int]]] = {"async": [], "sync": []}

    async def on_async(event: Event) -> None:
        seen["async"].append((event.id, threading.get_ident()))

    def on_sync(event: Event) -> None:
        seen["sync"].append((event.id, threading.get_ident()))

    events = [order(1), order(2)]
    async with client.subscribe("orders", "a", handler=on_async, start="earliest"):
        plain = await client.subscribe("orders", "s", handler=on_sync, start="earliest")
        await client.publish("orders", events)
        await eventually(lambda: len(seen["async"]) == len(seen["sync"]) == 2)
        await plain.close()
        assert plain.closed
    ids = sorted(e.id for e in events)
    assert sorted(i for i, _ in seen["async"]) == ids
    assert sorted(i for i, _ in seen["sync"]) == ids
    assert {t for _, t in seen["async"]} == {loop_thread}
    assert loop_thread not in {t for _, t in seen["sync"]}


async def test_a_raising_handler_is_retried(client: Client) -> None:
    """A handler that raises gets the same event again until it returns."""
    calls: list[str] = []

    async def flaky(event: Event) -> None:
        calls.append(event.id)
        if len(calls) < 3:
            raise RuntimeError("not yet")

    event = order(1)
    async with client.subscribe("orders", "g", handler=flaky, delivery=FAST, start="earliest"):
        await client.publish("orders", event)
        await eventually(lambda: len(calls) >= 3)
    assert calls[:3] == [event.id] * 3


async def test_handler_reply_is_published_to_reply_to(client: Client) -> None:
    """With reply_to, the event a handler returns is stored on that topic."""

    async def enrich(event: Event) -> Event:
        return Event(type="com.example.enriched", source="/enricher", data=event.data)

    event = order(7)
    async with client.subscribe(
        "orders", "g", handler=enrich, reply_to="enriched", start="earliest"
    ):
        await client.publish("orders", event)
        async with client.subscribe("enriched", "r", start="earliest") as replies:
            (reply,) = await take(replies, 1)
    assert reply.event.type == "com.example.enriched"
    assert reply.event.data == {"n": 7}


async def test_group_members_share_events_without_duplicates(client: Client) -> None:
    """Two members of one group together receive each event exactly once."""
    events = [order(n) for n in range(20)]
    seen: list[str] = []

    async def member(sub: Subscription) -> None:
        async for delivery in sub:
            seen.append(delivery.event.id)
            await delivery.ack()

    async with (
        client.subscribe("orders", "g", start="earliest") as one,
        client.subscribe("orders", "g", start="earliest") as two,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(member, one)
        tg.start_soon(member, two)
        await client.publish("orders", events)
        await eventually(lambda: len(seen) >= len(events))
        tg.cancel_scope.cancel()
    assert sorted(seen) == sorted(e.id for e in events)


async def test_closing_returns_unacked_events_to_the_group(client: Client) -> None:
    """Events a member held unacked when it closed go to the next member of the group."""
    events = [order(1), order(2)]
    await client.publish("orders", events)
    async with client.subscribe("orders", "g", start="earliest") as first:
        held = await take(first, 2, ack=False)
    async with client.subscribe("orders", "g", start="earliest") as second:
        again = await take(second, 2)
    assert [d.event.id for d in held] == [e.id for e in events]
    assert sorted(d.event.id for d in again) == sorted(e.id for e in events)


async def test_closing_ends_an_iteration_waiting_for_events(client: Client) -> None:
    """A loop waiting for events ends when its subscription is closed elsewhere."""
    sub = await client.subscribe("orders", "g")
    got: list[Delivery] = []

    async def read() -> None:
        async for delivery in sub:
            got.append(delivery)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await anyio.sleep(0.05)  # let the loop start waiting
            await sub.close()
    assert got == []


async def test_invalid_events_are_refused(client: Client) -> None:
    """Publishing what is not an Event raises EventValidationError and stores nothing."""
    with pytest.raises(EventValidationError, match=r"not an eventmesh\.Event"):
        await client.publish("orders", [order(1), {"type": "t"}])  # type: ignore[list-item]
    with pytest.raises(EventValidationError):
        await client.publish("orders", {"type": "t"})  # type: ignore[arg-type]
    marker = order(2)
    await client.publish("orders", marker)
    async with client.subscribe("orders", "g", start="earliest") as sub:
        (first,) = await take(sub, 1)
    assert first.event.id == marker.id


async def test_a_bad_filter_is_a_config_error(client: Client) -> None:
    """An unknown filter dialect raises ConfigError naming it (at the latest on start)."""
    with pytest.raises(ConfigError, match="nope"):
        async with client.subscribe("orders", "g", filter={"nope": {"type": "x"}}):
            pass


async def test_use_after_close_is_a_closed_error(client: Client) -> None:
    """After the client closed, publish and subscribe raise ClosedError."""
    await client.__aexit__(None, None, None)
    with pytest.raises(ClosedError):
        await client.publish("orders", order(1))
    with pytest.raises(ClosedError):
        client.subscribe("orders", "g")
