"""Correlation triggers: fire once per complete set within the window, expire the rest."""

from __future__ import annotations

import anyio
import pytest
from fn_support import FAST, read, until

from eventmesh import Event, Mesh

pytestmark = pytest.mark.anyio

MATCH = [{"exact": {"type": "order.placed"}}, {"exact": {"type": "payment.received"}}]


def ev(kind: str, subject: str | None, n: int = 0) -> Event:
    """An event of type ``kind`` about ``subject``."""
    return Event(type=kind, source="/shop", subject=subject, data={"n": n})


def correlated(mesh: Mesh, fired: list[list[Event]], window: str = "300ms") -> None:
    """Declare a function on 'shop' that records each correlated set it gets."""

    @mesh.function(
        topic="shop",
        correlate={"by": "subject", "window": window, "match": MATCH},
        reply_to="shipments",
        delivery=FAST,
    )
    async def ship(events: list[Event]) -> Event:
        fired.append(events)
        return Event(type="shipment", source="/fn", subject=events[0].subject)


async def test_a_complete_set_fires_once_in_filter_order() -> None:
    """Events matching every filter with the same subject fire the function once, with
    the events in filter order; every event is acked."""
    fired: list[list[Event]] = []
    mesh = Mesh()
    correlated(mesh, fired, window="10s")
    async with mesh:
        payment = ev("payment.received", "o-1")
        placed = ev("order.placed", "o-1")
        await mesh.publish("shop", [payment, ev("order.placed", "o-2"), placed])
        (shipment,) = await read(mesh, "shipments", 1)
        runner = mesh.functions[0]
        assert runner.stats.sets_fired == 1
        sub = next(s for s in mesh.subscriptions if s.name == "function.ship")
        await until(lambda: sub.stats.delivered == 2)  # the o-2 order is still held
        await anyio.sleep(0.1)
        assert len(fired) == 1
    assert [e.id for e in fired[0]] == [placed.id, payment.id]
    assert shipment.subject == "o-1"
    assert shipment.extensions["causationid"] == placed.id


async def test_an_incomplete_set_expires_to_the_dead_letter_topic() -> None:
    """A set still missing an event when its window ends is dead-lettered with reason
    'uncorrelated' and never fires."""
    fired: list[list[Event]] = []
    mesh = Mesh()
    correlated(mesh, fired)
    async with mesh:
        lonely = ev("order.placed", "o-9")
        await mesh.publish("shop", lonely)
        (dead,) = await read(mesh, "shop.dlq", 1)
        assert mesh.functions[0].stats.sets_expired == 1
    assert fired == []
    assert dead.id == lonely.id
    assert dead.extensions["deadletterreason"] == "uncorrelated"
    assert "correlate.match[1]" in dead.extensions["deadlettererror"]


async def test_a_duplicate_opens_a_second_set_and_fires_once() -> None:
    """A second event for a place already taken waits in a new set: the first set fires
    once, the second expires."""
    fired: list[list[Event]] = []
    mesh = Mesh()
    correlated(mesh, fired)
    async with mesh:
        first, second = ev("order.placed", "o-3", 1), ev("order.placed", "o-3", 2)
        await mesh.publish("shop", [first, second, ev("payment.received", "o-3")])
        (dead,) = await read(mesh, "shop.dlq", 1)
        await until(lambda: len(fired) == 1)
    assert fired[0][0].id == first.id
    assert dead.id == second.id


async def test_an_event_without_the_key_is_dead_lettered() -> None:
    """An event that lacks the 'by' attribute cannot be correlated: dead-lettered at once."""
    fired: list[list[Event]] = []
    mesh = Mesh()
    correlated(mesh, fired, window="10s")
    async with mesh:
        await mesh.publish("shop", ev("order.placed", None))
        (dead,) = await read(mesh, "shop.dlq", 1)
    assert "has no 'subject'" in dead.extensions["deadlettererror"]


async def test_a_failing_set_is_retried_then_dead_lettered_whole() -> None:
    """A correlated function that keeps raising is retried under the policy, then every
    event of its set is dead-lettered with reason 'failed'."""
    mesh = Mesh()
    calls = 0

    @mesh.function(topic="shop", correlate={"match": MATCH, "window": "10s"}, delivery=FAST)
    async def broken(events: list[Event]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("warehouse offline")

    async with mesh:
        await mesh.publish("shop", [ev("order.placed", "o-5"), ev("payment.received", "o-5")])
        dead = await read(mesh, "shop.dlq", 2)
    assert calls == 3
    assert {d.type for d in dead} == {"order.placed", "payment.received"}
    assert all(d.extensions["deadletterreason"] == "failed" for d in dead)
