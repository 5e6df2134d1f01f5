"""Correlation triggers on JetStream: a held event is not redelivered after ack_wait."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from eventmesh import Event, Mesh
from eventmesh.testing.polling import eventually

pytestmark = [pytest.mark.nats, pytest.mark.anyio]

MATCH = [{"exact": {"type": "order.placed"}}, {"exact": {"type": "payment.received"}}]


async def test_a_set_held_past_ack_wait_fires_once_and_is_not_redelivered(
    mesh_config: Callable[..., dict[str, Any]],
) -> None:
    """An event held in an open set longer than the consumer's ack_wait is touched, so
    JetStream does not deliver it again: the set fires once and nothing is dead-lettered."""
    fired: list[list[str]] = []
    mesh = Mesh(mesh_config(consumer={"ack_wait": "1s"}))

    @mesh.function(topic="shop", correlate={"window": "4s", "match": MATCH})
    async def ship(events: list[Event]) -> None:
        fired.append([e.id for e in events])

    async with mesh:
        sub = next(s for s in mesh.subscriptions if s.name == "function.ship")
        placed = Event(type="order.placed", source="/t", subject="k", id="a1")
        paid = Event(type="payment.received", source="/t", subject="k", id="b1")
        await mesh.publish("shop", placed)
        await eventually(lambda: sub.stats.received >= 1)
        await anyio.sleep(2.5)  # two and a half ack_waits with the event held
        await mesh.publish("shop", paid)
        await eventually(lambda: sub.stats.delivered >= 2)
        assert sub.stats.received == 2  # no copy came back
        assert sub.stats.dropped == 0
        assert mesh.functions[0].stats.sets_expired == 0
    assert fired == [["a1", "b1"]]
