"""Correlation triggers: fire once per complete set within the window, expire the rest."""

from __future__ import annotations

import gc

import pytest
from faults import Forwarding, Troubled
from fn_support import FAST, eventually, read

from eventmesh import Event, Mesh
from eventmesh.connectors.base import Delivery as ConnectorDelivery
from eventmesh.errors import SubscribeError
from eventmesh.subscription import Delivery, Subscription
from eventmesh.testing.polling import holds_throughout

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
        await eventually(lambda: sub.stats.delivered == 2)  # the o-2 order is still held
        await holds_throughout(lambda: len(fired) == 1, 0.1, what="no second set fired")
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
        await eventually(lambda: len(fired) == 1)
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


def shop_subscription(mesh: Mesh) -> Subscription:
    """The subscription of the function 'ship'."""
    return next(s for s in mesh.subscriptions if s.name == "function.ship")


async def test_a_fired_set_is_let_go_at_once() -> None:
    """A set that fired keeps none of its deliveries until its window ends, even behind
    an older set still open: the trigger then holds that open set's event only."""
    fired: list[list[Event]] = []
    mesh = Mesh()

    @mesh.function(topic="shop", correlate={"window": "60s", "match": MATCH})
    async def ship(events: list[Event]) -> None:
        fired.append(events)

    async with mesh:
        sub = shop_subscription(mesh)
        lonely = ev("order.placed", "o-open")
        await mesh.publish("shop", lonely)
        await eventually(lambda: sub.stats.received == 1)
        for i in range(50):
            pair = [ev("order.placed", f"o-{i}"), ev("payment.received", f"o-{i}")]
            await mesh.publish("shop", pair)
        await eventually(lambda: sub.stats.delivered == 100)
        gc.collect()
        held = [o for o in gc.get_objects() if isinstance(o, Delivery) and o.topic == "shop"]
        assert [d.event.id for d in held] == [lonely.id]
        assert mesh.functions[0].stats.events_held == 1
        assert mesh.functions[0].stats.sets_open == 1
    assert len(fired) == 50


async def test_at_max_pending_reading_waits_until_sets_fire_or_expire() -> None:
    """With max_pending events held in open sets the trigger reads no further until
    sets fire or expire, so an event behind the limit can miss its set."""
    fired: list[list[Event]] = []
    mesh = Mesh()

    @mesh.function(topic="shop", correlate={"window": "300ms", "max_pending": 2, "match": MATCH})
    async def ship(events: list[Event]) -> None:
        fired.append(events)

    async with mesh:
        await mesh.publish(
            "shop",
            [
                ev("order.placed", "o-1"),
                ev("order.placed", "o-2"),
                ev("payment.received", "o-1"),
                ev("payment.received", "o-2"),
            ],
        )
        dead = await read(mesh, "shop.dlq", 4)
        assert mesh.functions[0].stats.sets_expired == 4
    assert fired == []
    assert {d.extensions["deadletterreason"] for d in dead} == {"uncorrelated"}


class FlakyFetch(Troubled):
    """A memory connector whose consumers' fetches fail as ``failures`` says."""

    def __init__(self, failures: list[BaseException]) -> None:
        super().__init__()
        self.failures = failures

    def trouble(self, topic: str) -> None:
        if topic == "shop" and self.failures:
            raise self.failures.pop(0)


async def test_a_failed_fetch_is_retried_and_sets_still_fire() -> None:
    """A backend error while the trigger reads is retried after a backoff: the
    function keeps running and fires for the events that come next."""
    fired: list[list[Event]] = []
    mesh = Mesh(connectors={"default": FlakyFetch([SubscribeError("broker away")] * 2)})
    correlated(mesh, fired, window="10s")
    async with mesh:
        await mesh.publish("shop", [ev("order.placed", "o-1"), ev("payment.received", "o-1")])
        await eventually(lambda: len(fired) == 1)
        assert mesh.functions[0].state == "idle"
        assert not shop_subscription(mesh).closed


async def test_a_trigger_that_stops_for_good_shows_failed_and_leaves_its_group() -> None:
    """An unexpected error that stops a correlation trigger marks the function failed
    and closes its subscription, so its group's other members get the events."""
    fired: list[list[Event]] = []
    mesh = Mesh(connectors={"default": FlakyFetch([RuntimeError("connector bug")])})
    correlated(mesh, fired, window="10s")
    async with mesh:
        await eventually(lambda: mesh.functions[0].state == "failed")
        await eventually(lambda: not any(s.name == "function.ship" for s in mesh.subscriptions))
        assert mesh.functions[0].describe()["state"] == "failed"


async def test_a_redelivered_copy_of_a_held_event_joins_its_set() -> None:
    """An event delivered again while its set is open (here after a rebalance) does not
    open a second set: each set fires once and nothing expires."""
    fired: list[list[Event]] = []
    mesh = Mesh()
    # A window long enough that no pause of a busy machine expires a set: a second set,
    # had a copy opened one, would still be open when the eight have fired.
    correlated(mesh, fired, window="10s")
    async with mesh:
        sub = shop_subscription(mesh)
        placed = [ev("order.placed", f"o-{i}") for i in range(8)]  # one per partition
        await mesh.publish("shop", placed)
        await eventually(lambda: sub.stats.received == 8)
        async with mesh.subscribe("shop", "ship"):  # takes half the partitions...
            pass  # ...and gives them back unacked: the held events come again
        await eventually(lambda: sub.stats.received > 8)
        await mesh.publish("shop", [ev("payment.received", f"o-{i}") for i in range(8)])
        await eventually(lambda: len(fired) == 8)
        stats = mesh.functions[0].stats
        assert (stats.sets_fired, stats.sets_open, stats.sets_expired) == (8, 0, 0)
        assert sub.stats.dead_lettered == 0
        assert sub.stats.delivered == 16
        assert sub.stats.dropped == sub.stats.received - 16  # the copies
    assert len(fired) == 8


async def test_the_subscription_counts_what_became_of_each_event() -> None:
    """The trigger's subscription counts unmatched events as filtered, dead letters as
    dead_lettered, each failed attempt of a set's events as failed and each retry as
    retried; only the events of sets that fired count as delivered."""
    mesh = Mesh()

    @mesh.function(topic="shop", correlate={"match": MATCH, "window": "10s"}, delivery=FAST)
    async def ship(events: list[Event]) -> None:
        raise RuntimeError("warehouse offline")

    async with mesh:
        sub = shop_subscription(mesh)
        await mesh.publish(
            "shop",
            [
                ev("order.placed", "o-5"),
                ev("payment.received", "o-5"),
                ev("refund.issued", "o-5"),
                ev("order.placed", None),
            ],
        )
        await read(mesh, "shop.dlq", 3)
        await eventually(lambda: sub.stats.dead_lettered == 3)
        assert sub.stats.as_dict() == {
            "received": 4,
            "delivered": 0,
            "failed": 6,  # two events, three attempts
            "retried": 4,
            "dead_lettered": 3,
            "filtered": 1,
            "dropped": 0,
        }


class _FlakyAckDelivery(Forwarding):
    """A delivery whose first ack fails as a broker blip would, then is the real one's."""

    __slots__ = ("failures",)

    def __init__(self, inner: ConnectorDelivery, failures: list[BaseException]) -> None:
        super().__init__(inner)
        self.failures = failures

    async def ack(self) -> None:
        if self.failures:
            raise self.failures.pop(0)
        await self.inner.ack()


class FlakyAck(Troubled):
    """A memory connector (a plugin, as far as the mesh knows) whose first ack on 'shop'
    raises ``failure``: an ack that breaks the contract's 'raises nothing'."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__()
        self.failures = [failure]

    def wrap(self, topic: str, delivery: ConnectorDelivery) -> ConnectorDelivery:
        return _FlakyAckDelivery(delivery, self.failures) if topic == "shop" else delivery


async def test_an_ack_that_fails_as_a_set_fires_leaves_the_function_running() -> None:
    """An ack that raises while a fired set is settled is logged, the set's events are
    given back (and fire again), and the function goes on firing for the next sets;
    before, the error ended every task of the function and cancelled the block the mesh
    was opened in."""
    fired: list[list[Event]] = []
    mesh = Mesh(connectors={"default": FlakyAck(SubscribeError("commit failed: broker away"))})
    correlated(mesh, fired, window="10s")
    async with mesh:
        await mesh.publish("shop", [ev("order.placed", "o-1"), ev("payment.received", "o-1")])
        # The set whose ack failed was given back whole: it comes again and fires again.
        await eventually(lambda: [e[0].subject for e in fired] == ["o-1", "o-1"])
        await mesh.publish("shop", [ev("order.placed", "o-2"), ev("payment.received", "o-2")])
        await eventually(lambda: [e[0].subject for e in fired] == ["o-1", "o-1", "o-2"])
        assert mesh.functions[0].state != "failed"
