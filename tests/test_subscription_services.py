"""A Subscription is built from parts, without a Mesh: a connector's consumer, the owner's
Services (publish, task group, register) and a settle strategy (who runs the policy)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
import anyio.abc
import pytest

from eventmesh import DeliveryPolicy, Event, Subscription
from eventmesh._duration import Duration
from eventmesh.connectors.base import Delivery as ConnectorDelivery
from eventmesh.connectors.memory import MemoryConnector
from eventmesh.delivery.lanes import Lanes
from eventmesh.delivery.policy import Backoff
from eventmesh.delivery.services import Services
from eventmesh.delivery.settle import HandBack
from eventmesh.errors import ClosedError
from eventmesh.testing.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.core]

POLICY = DeliveryPolicy(
    max_attempts=3, backoff=Backoff(initial=Duration(0.001), max=Duration(0.001))
)


@dataclass
class Owner:
    """What a Mesh would be to its subscriptions, and a record of what they asked of it."""

    tg: anyio.abc.TaskGroup
    published: list[tuple[str, Event]] = field(default_factory=list)
    members: list[Subscription] = field(default_factory=list)

    async def publish(self, topic: str, events: Event | Sequence[Event]) -> None:
        for event in [events] if isinstance(events, Event) else events:
            self.published.append((topic, event))

    def services(self) -> Services[Subscription]:
        return Services(
            publish=self.publish,
            task_group=lambda: self.tg,
            register=self.members.append,
            unregister=self.members.remove,
        )


@pytest.fixture
async def connector() -> AsyncIterator[MemoryConnector]:
    """An open in-memory connector."""
    async with MemoryConnector() as memory:
        yield memory


def _subscription(
    owner: Owner, connector: MemoryConnector, handler: object, **options: object
) -> Subscription:
    return Subscription(
        owner.services(),
        name="orders/g",
        topic="orders",
        group="g",
        consumer=connector.subscribe("orders", "g", start="earliest"),
        policy=options.pop("policy", POLICY),  # type: ignore[arg-type]
        handler=handler,  # type: ignore[arg-type]
        filter=None,
        transform=None,
        **options,  # type: ignore[arg-type]
    )


async def test_a_subscription_runs_over_services_without_a_mesh(
    connector: MemoryConnector,
) -> None:
    """Over a plain Services object a handler subscription registers with its owner,
    retries a failed attempt here, publishes the handler's reply through the owner's
    publish, dead-letters through it after the last attempt, and unregisters on close."""
    calls: list[int] = []

    async def handle(event: Event) -> Event | None:
        calls.append(event.data)
        if event.data == 1 and calls.count(1) == 1:
            raise RuntimeError("once")  # retried here
        if event.data == 2:
            raise RuntimeError("always")  # dead-lettered after max_attempts
        return Event(type="reply", source="/t", data=event.data)

    async with anyio.create_task_group() as tg:
        owner = Owner(tg)
        await connector.publish("orders", [Event(type="t", source="/s", data=n) for n in (1, 2)])
        sub = _subscription(owner, connector, handle, reply_to="replies")
        async with sub:
            assert owner.members == [sub]
            await eventually(lambda: len(owner.published) == 2)
        assert owner.members == []
    assert (calls.count(1), calls.count(2)) == (2, 3)
    assert sorted((topic, event.data) for topic, event in owner.published) == [
        ("orders.dlq", 2),
        ("replies", 1),
    ]
    assert (sub.stats.delivered, sub.stats.dead_lettered, sub.stats.retried) == (1, 1, 3)


async def test_hand_back_sends_failures_to_the_source_and_checks_nothing_here(
    connector: MemoryConnector,
) -> None:
    """With HandBack (a sidecar runs the policy) a failed attempt goes to ``reject`` with
    its error at once: no retry, no dead letter and no TTL here."""
    rejected: list[tuple[int, str]] = []
    handled: list[int] = []

    async def reject(delivery: ConnectorDelivery, error: BaseException | str | None) -> None:
        rejected.append((delivery.event.data, str(error)))
        await delivery.ack()

    async def handle(event: Event) -> None:
        handled.append(event.data)
        if event.data == 1:
            raise RuntimeError("no")

    old = datetime.now(UTC) - timedelta(days=1)
    events = [Event(type="t", source="/s", data=n, time=old) for n in (0, 1)]
    policy = DeliveryPolicy(max_attempts=5, ttl=Duration(60))
    async with anyio.create_task_group() as tg:
        owner = Owner(tg)
        await connector.publish("orders", events)
        sub = _subscription(owner, connector, handle, policy=policy, settle=HandBack(reject))
        async with sub:
            await eventually(lambda: len(handled) == 2 and len(rejected) == 1)
    assert sorted(handled) == [0, 1]  # older than the ttl, and delivered all the same
    assert rejected == [(1, "no")]
    assert owner.published == []
    assert (sub.stats.failed, sub.stats.retried, sub.stats.dead_lettered) == (1, 0, 0)


def test_one_key_always_takes_one_lane_and_keyless_deliveries_go_round_robin() -> None:
    """The lane router: by key under partitionkey ordering, else the next lane in turn."""

    class Item(ConnectorDelivery):
        async def ack(self) -> None:
            pass

        async def nack(self, delay: float = 0.0) -> None:
            pass

    def item(key: str | None) -> Item:
        return Item(Event(type="t", source="/s"), topic="t", partition=0, offset=0, key=key)

    lanes = Lanes(4, by_key=True)
    lanes.route([item("a") for _ in range(5)] + [item(None) for _ in range(8)])
    holding_a = [lane for lane in lanes if any(d.key == "a" for d in lane.items)]
    assert [len(lane.items) for lane in holding_a] == [5 + 2]
    assert [len(lane.items) for lane in lanes if lane is not holding_a[0]] == [2, 2, 2]

    unordered = Lanes(4, by_key=False)
    unordered.route([item("a") for _ in range(8)])
    assert [len(lane.items) for lane in unordered] == [2, 2, 2, 2]


async def test_a_source_shutting_down_is_waited_out_and_an_ended_consumer_closes(
    connector: MemoryConnector,
) -> None:
    """A fetch that raises ClosedError while the consumer is open (a sidecar shutting
    down, answering 503) is retried after the backoff; a consumer that ends by itself
    (a sidecar's stream that ended) closes its subscription, which leaves its owner."""
    consumer = connector.subscribe("orders", "g", start="earliest")
    real_fetch = consumer.fetch
    failures = [ClosedError("the sidecar is shutting down")] * 2

    async def fetch(max_events: int = 256, timeout: float | None = None) -> list[ConnectorDelivery]:
        if failures:
            raise failures.pop()
        return await real_fetch(max_events, timeout)

    consumer.fetch = fetch  # type: ignore[method-assign]
    handled: list[int] = []

    async def handle(event: Event) -> None:
        handled.append(event.data)

    async with anyio.create_task_group() as tg:
        owner = Owner(tg)
        sub = Subscription(
            owner.services(),
            name="orders/g",
            topic="orders",
            group="g",
            consumer=consumer,
            policy=POLICY,
            handler=handle,
            filter=None,
            transform=None,
        )
        await sub.start()
        await connector.publish("orders", [Event(type="t", source="/s", data=1)])
        await eventually(lambda: handled == [1])
        assert failures == []
        await consumer.close()  # the source ends it, not the subscription
        await eventually(lambda: sub.closed)
        assert owner.members == []
