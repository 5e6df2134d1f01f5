"""client.dead_letters(topic): browse and replay, the same embedded and over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from eventmesh import Event, Mesh
from eventmesh._client import Client
from eventmesh._status import NotFoundError
from eventmesh.delivery.deadletter import dead_letter_event
from eventmesh.errors import ConfigError, RejectedError
from eventmesh.testing import eventually

pytestmark = pytest.mark.anyio


def dead(n: int, *, reason: str, group: str, topic: str = "orders") -> Event:
    """Dead letter number ``n``, as the mesh makes one."""
    event = Event(type="order.created", source="/shop", id=f"{reason}-{group}-{n}", data={"n": n})
    return dead_letter_event(
        event, reason=reason, error="ValueError: boom", attempts=3, topic=topic, group=group
    )


async def test_list_show_and_replay_with_filters_and_no_double_replay(client: Client) -> None:
    """Browsing pages through the dead letters; a replay republishes the selected ones to
    their topics without deadletter* extensions; a second replay skips them."""
    if type(client).__name__ == "GrpcClient":
        with pytest.raises(RejectedError, match="connect over HTTP"):
            client.dead_letters("orders.dlq")
        return
    letters = [dead(i, reason="failed", group="billing") for i in range(3)]
    letters += [dead(i, reason="expired", group="shipping") for i in range(2)]
    letters.append(dead(0, reason="failed", group="billing", topic="payments"))
    await client.publish("orders.dlq", letters)
    dlq = client.dead_letters("orders.dlq")

    seen: list[str] = []
    after = None
    for _ in range(10):
        page = await dlq.list(limit=4, after=after)
        assert len(page.events) <= 4
        if not page.events:
            break
        seen += [s.event.id for s in page.events]
        after = page.next
    assert sorted(seen) == sorted(e.id for e in letters)
    [shown] = await dlq.show("expired-shipping-1")
    assert shown.event.extensions["deadletterreason"] == "expired"
    odd = dead(9, reason="failed", group="a/b c?")  # an id with '/', ' ' and '?'
    await client.publish("orders.dlq.odd", odd)
    [found] = await client.dead_letters("orders.dlq.odd").show(odd.id)
    assert found.event.id == "failed-a/b c?-9"
    with pytest.raises(NotFoundError):
        await dlq.show("no-such-id")

    dry = await dlq.replay(reason="expired", dry_run=True)
    assert (dry.selected, dry.replayed, dry.skipped, dry.dry_run) == (2, 2, 0, True)
    assert await client.dead_letters("orders").list() == ([], None)  # nothing published

    done = await dlq.replay(reason="expired")
    assert (done.replayed, sorted(done.ids)) == (2, ["expired-shipping-0", "expired-shipping-1"])
    replayed = (await client.dead_letters("orders").list()).events
    assert sorted(s.event.id for s in replayed) == sorted(done.ids)
    for stored in replayed:
        assert not [k for k in stored.event.extensions if k.startswith("deadletter")]
        assert stored.event.source == "/shop"

    again = await dlq.replay(reason="expired")
    assert (again.selected, again.replayed, again.skipped) == (2, 0, 2)

    rest = await dlq.replay(subscription="billing")
    assert (rest.selected, rest.replayed, rest.skipped) == (4, 4, 0)
    payments = (await client.dead_letters("payments").list()).events
    assert [s.event.id for s in payments] == ["failed-billing-0"]
    replayed_after_all = (await client.dead_letters("orders").list()).events
    assert len(replayed_after_all) == 5

    later = datetime.now(UTC) + timedelta(hours=1)
    assert (await dlq.replay(since=later)).selected == 0
    with pytest.raises(ConfigError):
        await dlq.replay(limit=0)

    long = "x" * 10_000  # a topic name above limits.max_name_length
    await client.publish(
        "bad.dlq",
        [dead(1, reason="failed", group="g"), dead(2, reason="failed", group="g", topic=long)],
    )
    with pytest.raises(RejectedError, match="max_name_length"):
        await client.dead_letters("bad.dlq").replay()
    assert (await client.dead_letters("orders").list()).events == replayed_after_all


async def test_a_replayed_dead_letter_reaches_the_subscription_that_failed_it() -> None:
    """Events a handler failed land on the dead-letter topic; once the handler is fixed,
    a replay delivers them to it again, and only once."""
    broken = True
    handled: list[str] = []

    async def handler(event: Event) -> None:
        if broken:
            raise ValueError("not yet")
        handled.append(event.id)

    async with Mesh() as mesh:
        policy = {"max_attempts": 1}
        async with mesh.subscribe("orders", "billing", handler=handler, delivery=policy):
            ids = await mesh.publish("orders", [Event(type="t", source="/s") for _ in range(3)])
            dlq = mesh.dead_letters("orders.dlq")

            async def all_dead() -> bool:
                return len((await dlq.list()).events) == 3

            await eventually(all_dead, what="three dead letters")
            broken = False
            result = await dlq.replay(subscription="billing", reason="failed")
            assert sorted(result.ids) == sorted(ids)
            await eventually(lambda: len(handled) == 3, what="the replayed events handled")
            assert sorted(handled) == sorted(ids)
            assert (await dlq.replay()).replayed == 0


def test_the_blocking_client_browses_and_replays() -> None:
    """connect_blocking().dead_letters(topic) lists, shows and replays, each call blocking."""
    import eventmesh

    with eventmesh.connect_blocking() as mesh:
        mesh.publish("orders.dlq", [dead(1, reason="failed", group="billing")])
        dlq = mesh.dead_letters("orders.dlq")
        [stored] = dlq.list(limit=5).events
        assert dlq.show(stored.event.id)[0].offset == stored.offset
        assert dlq.replay().ids == [stored.event.id]
        assert dlq.replay().skipped == 1
        assert [s.event.id for s in mesh.dead_letters("orders").list().events] == [stored.event.id]
