"""Filters and transforms wired into subscriptions: config, SDK and dispatcher agree."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import eventmesh
from eventmesh import ConfigError, Event

pytestmark = [pytest.mark.anyio, pytest.mark.core]  # core: CI runs these on the core alone

ORDER = "com.example.order.created"
FILTER = {
    "all": [
        {"exact": {"type": ORDER}},
        {"sql": "subject LIKE 'orders/%'"},
        {"pattern": {"data": {"amount": [{"numeric": [">", 100]}]}}},
    ]
}
TRANSFORM = [
    {"set": {"subject": {"from": "$.data.customer"}}},
    {"template": {"variables": {"amount": "$.data.amount"}, "template": '{"total": ${amount}}'}},
]


def orders() -> list[Event]:
    """Four events of which exactly one passes FILTER."""
    return [
        Event(type=ORDER, source="/s", subject="orders/1", data={"amount": 150, "customer": "c1"}),
        Event(type=ORDER, source="/s", subject="orders/2", data={"amount": 50, "customer": "c2"}),
        Event(type="other", source="/s", subject="orders/3", data={"amount": 500}),
        Event(type=ORDER, source="/s", subject="refunds/4", data={"amount": 500}),
    ]


async def test_handler_subscriptions_filter_and_transform() -> None:
    """Only matching events reach the handler, transformed; the rest are counted and acked."""
    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    async with eventmesh.connect() as mesh:
        sub = mesh.subscribe("o", "g", handler=handler, filter=FILTER, transform=TRANSFORM)
        async with sub:
            await mesh.publish("o", orders())
            with anyio.fail_after(5):
                while sub.stats.delivered + sub.stats.filtered < 4:
                    await anyio.sleep(0.01)
    assert [(e.subject, e.data) for e in got] == [("c1", {"total": 150})]
    assert sub.stats.filtered == 3


async def test_iterator_subscriptions_take_the_same_forms() -> None:
    """The iterator form applies the same filter and transform as the handler form."""
    async with eventmesh.connect() as mesh:
        await mesh.publish("o", orders())
        sub = mesh.subscribe("o", "g", filter=FILTER, transform=TRANSFORM, start="earliest")
        async with sub:
            async for delivery in sub:
                assert (delivery.event.subject, delivery.event.data) == ("c1", {"total": 150})
                await delivery.ack()
                break


async def test_a_transform_returning_none_drops_on_purpose(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A Python transform returning None drops the event, counted and not dead-lettered."""
    (tmp_path / "steps.py").write_text(
        "def keep_big(event):\n    return event if event.data['amount'] > 100 else None\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    async with eventmesh.connect() as mesh:
        sub = mesh.subscribe("o", "g", handler=handler, transform=[{"call": "steps:keep_big"}])
        async with sub:
            await mesh.publish("o", orders()[:2])
            with anyio.fail_after(5):
                while sub.stats.delivered + sub.stats.dropped < 2:
                    await anyio.sleep(0.01)
    assert [e.data["amount"] for e in got] == [150]
    assert (sub.stats.dropped, sub.stats.dead_lettered) == (1, 0)


async def test_a_failing_step_dead_letters_with_its_path() -> None:
    """A transform step that raises sends the event to the dead letters naming the step."""

    async def handler(event: Event) -> None:
        raise AssertionError("must not be called")

    bad = [{"set": {"subject": "ok"}}, {"set": {"source": {"from": "$.data.missing"}}}]
    async with eventmesh.connect() as mesh:
        async with mesh.subscribe("o", "g", handler=handler, transform=bad) as sub:
            await mesh.publish("o", orders()[0])
            with anyio.fail_after(5):
                while not sub.stats.dead_lettered:
                    await anyio.sleep(0.01)
        async with mesh.subscribe("o.dlq", "ops", start="earliest") as dlq:
            async for delivery in dlq:
                ext = delivery.event.extensions
                assert ext["deadletterreason"] == "transform"
                assert "transform[1]" in str(ext["deadlettererror"])
                assert delivery.event.subject == "orders/1"  # the event as read
                break


def test_config_filters_compile_at_load_time(tmp_path: Path) -> None:
    """A filter that cannot compile is a ConfigError naming the subscription at load time."""
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "subscriptions:\n"
        "  - name: billing\n"
        "    topic: orders\n"
        "    sink: {handler: 'json:dumps'}\n"
        "    filter: {sql: \"type = 'x' AND\"}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="subscription 'billing'"):
        eventmesh.load_config(path)


async def test_sdk_filter_errors_are_config_errors() -> None:
    """subscribe() with a malformed filter raises ConfigError before anything starts."""
    async with eventmesh.connect() as mesh:
        with pytest.raises(ConfigError, match=r"exactt|dialect"):
            mesh.subscribe("o", "g", filter={"exactt": {"type": "x"}})
