"""The dispatcher's hot path: a subscription without TTL, filter or transform skips the
gate, and events are fetched in small batches; neither may change what is delivered."""

from __future__ import annotations

from collections import defaultdict

import anyio
import anyio.lowlevel
import pytest

import eventmesh
from eventmesh import DeliveryPolicy, Event
from eventmesh.errors import DeliveryError
from eventmesh.testing.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.core]  # core: CI runs these on the core alone

FAST = {"backoff": {"initial": "1ms", "max": "5ms"}}


def _events(keys: int, per_key: int) -> list[Event]:
    return [
        Event(type="t", source="/s", data=n, extensions={"partitionkey": f"k{k}"})
        for n in range(per_key)
        for k in range(keys)
    ]


async def test_the_open_gate_and_the_gated_path_deliver_the_same_events() -> None:
    """Without filter or transform (the gate skipped) a group gets exactly what a group
    whose filter and transform let everything through gets: every event, in order per key,
    through handlers that sometimes give the turn away and sometimes fail once."""
    seen: dict[str, dict[str, list[int]]] = {"open": defaultdict(list), "gated": defaultdict(list)}
    failed: set[tuple[str, str]] = set()

    def handler(path: str):  # type: ignore[no-untyped-def]
        async def handle(event: Event) -> None:
            if event.data % 5 == 0:
                await anyio.lowlevel.checkpoint()
            if event.data % 11 == 0 and (path, event.id) not in failed:
                failed.add((path, event.id))
                raise RuntimeError("once")
            seen[path][event.partitionkey or ""].append(event.data)

        return handle

    events = _events(keys=40, per_key=30)
    async with eventmesh.connect() as mesh:
        policy = {"concurrency": 8, **FAST}
        async with (
            mesh.subscribe("o", "open", handler=handler("open"), delivery=policy) as plain,
            mesh.subscribe(
                "o",
                "gated",
                handler=handler("gated"),
                delivery=policy,
                filter=lambda event: True,
                transform=lambda event: event,
            ) as gated,
        ):
            await mesh.publish("o", events)
            await eventually(lambda: plain.stats.delivered == gated.stats.delivered == len(events))
    assert seen["open"] == seen["gated"]
    assert all(numbers == list(range(30)) for numbers in seen["open"].values())
    assert len(seen["open"]) == 40
    assert plain.stats.as_dict() == gated.stats.as_dict()
    assert plain.stats.retried == 3 * 40  # data 0, 11 and 22 of each key failed once


async def test_retries_and_dead_letters_work_on_the_open_gate() -> None:
    """Without filter or transform: a failing handler is retried, an event that fails
    every attempt is dead-lettered, and a DeliveryError that says a retry cannot help
    dead-letters at once."""
    attempts: dict[int, int] = defaultdict(int)

    async def handler(event: Event) -> None:
        attempts[event.data] += 1
        if event.data == 1 and attempts[1] < 3:
            raise RuntimeError("flaky")
        if event.data == 2:
            raise RuntimeError("broken")
        if event.data == 3:
            raise DeliveryError("refused", retryable=False)

    async with eventmesh.connect() as mesh:
        policy = {"max_attempts": 4, **FAST}
        async with mesh.subscribe("p", "g", handler=handler, delivery=policy) as sub:
            async with mesh.subscribe("p.dlq", "ops", start="earliest") as dlq:
                await mesh.publish("p", [Event(type="t", source="/s", data=n) for n in range(4)])
                dead: dict[int, Event] = {}
                with anyio.fail_after(10):
                    async for delivery in dlq:
                        dead[delivery.event.data] = delivery.event
                        await delivery.ack()
                        if len(dead) == 2:
                            break
            await eventually(lambda: sub.stats.delivered == 2)
    assert dict(attempts) == {0: 1, 1: 3, 2: 4, 3: 1}
    assert dead[2].extensions["deadletterattempts"] == 4
    assert dead[3].extensions["deadletterattempts"] == 1
    assert dead[3].extensions["deadlettererror"] == "DeliveryError: refused"
    assert (sub.stats.retried, sub.stats.dead_lettered) == (2 + 3, 2)


async def test_a_filter_is_still_applied_when_one_is_set() -> None:
    """The gate is skipped only when it has nothing to do: a filter still filters."""
    handled: list[int] = []

    async def handler(event: Event) -> None:
        handled.append(event.data)

    async with (
        eventmesh.connect() as mesh,
        mesh.subscribe("f", "g", handler=handler, filter=lambda event: event.data % 2 == 0) as sub,
    ):
        await mesh.publish("f", [Event(type="t", source="/s", data=n) for n in range(10)])
        await eventually(lambda: sub.stats.delivered + sub.stats.filtered == 10)
    assert sorted(handled) == [0, 2, 4, 6, 8]


async def test_slow_handlers_still_fill_the_prefetch() -> None:
    """Fetching in small batches does not cap how many events wait for busy handlers:
    with every handler stuck, the subscription still holds its whole prefetch."""
    release = anyio.Event()

    async def handler(event: Event) -> None:
        await release.wait()

    async with eventmesh.connect() as mesh:
        policy = DeliveryPolicy(concurrency=4, prefetch=300)
        async with mesh.subscribe("s", "g", handler=handler, delivery=policy) as sub:
            await mesh.publish("s", [Event(type="t", source="/s", data=n) for n in range(400)])
            await eventually(lambda: sub.stats.received == 300)
            await anyio.sleep(0.05)
            assert sub.stats.received == 300  # and no more
            release.set()
            await eventually(lambda: sub.stats.delivered == 400)
