"""The first hour with the SDK: publish returns the ids of the events it stored."""

from __future__ import annotations

import anyio
import pytest

import eventmesh
from eventmesh import Event
from eventmesh.client.base import Client


def _order(n: int, **attributes: str) -> Event:
    return Event(type="order", source="/shop", data=n, **attributes)


@pytest.mark.anyio
async def test_publish_returns_the_ids_of_the_events_stored_in_order(client: Client) -> None:
    """One event gives a list of its id; a list gives their ids in the order sent, the
    same ids a reader of the topic sees."""
    one = _order(0, id="first")
    assert await client.publish("orders", one) == ["first"]
    batch = [_order(n) for n in range(1, 4)]
    ids = await client.publish("orders", batch)
    assert ids == [event.id for event in batch]
    assert await client.publish("orders", ()) == []
    seen: list[str] = []
    with anyio.fail_after(10):
        async with client.subscribe("orders", "reader", start="earliest") as sub:
            async for delivery in sub:
                seen.append(delivery.event.id)
                await delivery.ack()
                if len(seen) == 4:
                    break
    assert seen == ["first", *ids]


def test_the_blocking_publish_returns_the_ids_too() -> None:
    with eventmesh.connect_blocking() as mesh:
        events = [_order(1, id="a"), _order(2, id="b")]
        assert mesh.publish("orders", events) == ["a", "b"]
        assert mesh.publish("orders", _order(3, id="c")) == ["c"]
