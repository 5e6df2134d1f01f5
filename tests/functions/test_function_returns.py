"""What a function returns decides the event's fate: ack, reply, retry, dead letter, drop."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from fn_support import FAST, eventually, order, read

from eventmesh import ConfigError, DeliveryError, Drop, Event, Function, LifecycleError, Mesh
from eventmesh.functions.function import CAUSATION_EXTENSION

pytestmark = [pytest.mark.anyio, pytest.mark.core]  # core: CI runs these on the core alone

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_returning_none_acks_the_event() -> None:
    """A function that returns None is invoked once and its event is acked."""
    seen: list[int] = []
    mesh = Mesh()

    @mesh.function(topic="orders")
    async def handle(event: Event) -> None:
        seen.append(event.data["n"])

    async with mesh:
        await mesh.publish("orders", [order(1), order(2)])
        sub = next(s for s in mesh.subscriptions if s.name == "function.handle")
        await eventually(lambda: sub.stats.delivered == 2)
        (runner,) = mesh.functions
        assert sorted(seen) == [1, 2]
        assert (runner.stats.invocations, runner.stats.failures, runner.stats.replies) == (2, 0, 0)
        assert runner.kind == "async"


async def test_returning_an_event_publishes_a_reply_with_its_cause_and_trace() -> None:
    """A returned Event goes to reply_to with causationid = the cause's id and the
    cause's traceparent and tracestate."""
    mesh = Mesh()

    @mesh.function(topic="orders", reply_to="orders.enriched")
    async def enrich(event: Event) -> Event:
        return Event(type="enriched", source="/fn", data={"n": event.data["n"] * 10})

    cause = order(4, extensions={"traceparent": TRACEPARENT, "tracestate": "k=v"})
    async with mesh:
        await mesh.publish("orders", cause)
        (reply,) = await read(mesh, "orders.enriched", 1)
    assert reply.data == {"n": 40}
    assert reply.extensions[CAUSATION_EXTENSION] == cause.id
    assert reply.extensions["traceparent"] == TRACEPARENT
    assert reply.extensions["tracestate"] == "k=v"


async def test_a_reply_keeps_its_own_trace_and_causation() -> None:
    """A reply that sets traceparent or causationid itself keeps them."""
    mesh = Mesh()

    @mesh.function(topic="orders", reply_to="out")
    async def enrich(event: Event) -> Event:
        return Event(
            type="r",
            source="/fn",
            extensions={
                "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
                "causationid": "x",
            },
        )

    async with mesh:
        await mesh.publish("orders", order(1, extensions={"traceparent": TRACEPARENT}))
        (reply,) = await read(mesh, "out", 1)
    assert reply.extensions["traceparent"].startswith("00-111")
    assert reply.extensions["causationid"] == "x"


async def test_returning_a_list_publishes_every_reply_from_a_plain_function() -> None:
    """A plain (sync) function returning a list of Events publishes each one."""
    mesh = Mesh()

    @mesh.function(topic="orders", reply_to="out")
    def split(event: Event) -> list[Event]:
        return [Event(type=f"part{i}", source="/fn") for i in range(3)]

    async with mesh:
        cause = order(1)
        await mesh.publish("orders", cause)
        replies = await read(mesh, "out", 3)
        assert mesh.functions[0].kind == "thread"
        assert mesh.functions[0].stats.replies == 3
    assert sorted(r.type for r in replies) == ["part0", "part1", "part2"]
    assert {r.extensions[CAUSATION_EXTENSION] for r in replies} == {cause.id}


async def test_raising_retries_then_dead_letters() -> None:
    """A function that keeps raising is retried max_attempts times, then its event is
    dead-lettered with the error."""
    calls = 0
    mesh = Mesh()

    @mesh.function(topic="orders", delivery=FAST)
    async def broken(event: Event) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("the ledger is down")

    async with mesh:
        event = order(1)
        await mesh.publish("orders", event)
        (dead,) = await read(mesh, "orders.dlq", 1)
        runner = mesh.functions[0]
        assert (runner.stats.invocations, runner.stats.failures) == (3, 3)
    assert calls == 3
    assert dead.id == event.id
    assert dead.extensions["deadletterreason"] == "failed"
    assert dead.extensions["deadlettererror"] == "RuntimeError: the ledger is down"
    assert dead.extensions["deadlettergroup"] == "broken"


async def test_a_retry_that_succeeds_acks_the_event() -> None:
    """A function that fails once and then succeeds has its reply published once."""
    calls = 0
    mesh = Mesh()

    @mesh.function(topic="orders", reply_to="out", delivery=FAST)
    async def flaky(event: Event) -> Event:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("blip")
        return Event(type="ok", source="/fn")

    async with mesh:
        await mesh.publish("orders", order(1))
        (reply,) = await read(mesh, "out", 1)
        runner = mesh.functions[0]
        await eventually(lambda: runner.stats.invocations == 2)
        assert runner.stats.failures == 1
    assert reply.type == "ok"


async def test_drop_acks_without_retry_or_dead_letter() -> None:
    """Raising Drop acks the event at once: one invocation, nothing dead-lettered."""
    mesh = Mesh()

    @mesh.function(topic="orders", delivery=FAST)
    def skip(event: Event) -> None:
        raise Drop("a test order")

    async with mesh:
        await mesh.publish("orders", order(1))
        sub = next(s for s in mesh.subscriptions if s.name == "function.skip")
        await eventually(lambda: sub.stats.delivered == 1)
        runner = mesh.functions[0]
        assert (runner.stats.invocations, runner.stats.dropped, runner.stats.failures) == (1, 1, 0)
        assert sub.stats.dead_lettered == 0


async def test_replies_without_reply_to_dead_letter_the_cause() -> None:
    """Events returned by a function without reply_to are not lost silently: the cause
    is dead-lettered at once with an error saying why."""
    mesh = Mesh()

    @mesh.function(topic="orders", delivery=FAST)
    async def forgetful(event: Event) -> Event:
        return Event(type="r", source="/fn")

    async with mesh:
        await mesh.publish("orders", order(1))
        (dead,) = await read(mesh, "orders.dlq", 1)
        assert mesh.functions[0].stats.invocations == 1
    assert "no reply_to" in dead.extensions["deadlettererror"]


async def test_returning_something_else_dead_letters_the_cause() -> None:
    """A return value that is not None, an Event or a list of Events is an error a retry
    cannot mend: dead-lettered after one invocation."""
    mesh = Mesh()

    @mesh.function(topic="orders", reply_to="out", delivery=FAST)
    async def wrong(event: Event) -> dict[str, Any]:
        return {"n": 1}

    async with mesh:
        await mesh.publish("orders", order(1))
        (dead,) = await read(mesh, "orders.dlq", 1)
    assert "returned a dict" in dead.extensions["deadlettererror"]


async def test_config_and_code_declarations_are_the_same_struct(tmp_path: Any) -> None:
    """A function in the config file and one declared in code build equal FunctionConfigs,
    and the configured one runs its handler."""
    config = {
        "functions": [
            {
                "name": "enrich",
                "trigger": {"topic": "orders", "filter": {"exact": {"type": "com.example.order"}}},
                "handler": "fn_handlers_inline:enrich",
                "reply_to": "out",
                "timeout": "2s",
            }
        ]
    }
    (tmp_path / "fn_handlers_inline.py").write_text(
        "from eventmesh import Event\n"
        "async def enrich(event):\n"
        "    return Event(type='from-config', source='/cfg')\n",
        encoding="utf-8",
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        mesh = Mesh(config)
        declared = Function.declare(
            lambda e: None,
            topic="orders",
            name="enrich",
            filter={"exact": {"type": "com.example.order"}},
            reply_to="out",
            timeout="2s",
        )
        assert msgspec_replace_handler(mesh.config.functions[0]) == declared.spec
        async with mesh:
            await mesh.publish("orders", order(1))
            (reply,) = await read(mesh, "out", 1)
        assert reply.type == "from-config"
    finally:
        sys.path.remove(str(tmp_path))


def msgspec_replace_handler(spec: Any) -> Any:
    """The spec without its handler path (a code declaration has the callable instead)."""
    import msgspec

    return msgspec.structs.replace(spec, handler=None)


def test_bad_declarations_name_the_key() -> None:
    """Wrong function settings raise ConfigError naming the key, in config and in code."""
    with pytest.raises(ConfigError, match=r"functions\[0\].concurrency"):
        Mesh({"functions": [{"name": "f", "trigger": {"topic": "t"}, "handler": "m:f",
                             "concurrency": 0}]})  # fmt: skip
    with pytest.raises(ConfigError, match=r"functions\[0\].*exactly one of"):
        Mesh({"functions": [{"name": "f", "trigger": {"topic": "t"}}]})
    with pytest.raises(ConfigError, match=r"functions\[0\].tigger"):
        Mesh({"functions": [{"name": "f", "tigger": {"topic": "t"}, "handler": "m:f"}]})
    with pytest.raises(ConfigError, match=r"functions\[1\].name: .*already defined"):
        Mesh({"functions": [{"name": "f", "trigger": {"topic": "t"}, "handler": "m:f"}] * 2})
    with pytest.raises(ConfigError, match=r"correlate.*at least two"):
        Function.declare(print, topic="t", correlate={"match": [{"exact": {"type": "a"}}]})
    with pytest.raises(ConfigError, match="batch is for Python functions"):
        Mesh({"functions": [{"name": "f", "trigger": {"topic": "t"}, "url": "http://x/",
                             "batch": {"max": 2}}]})  # fmt: skip


async def test_declaring_on_an_open_mesh_is_refused() -> None:
    """@mesh.function after the mesh opened raises LifecycleError."""
    async with Mesh() as mesh:
        with pytest.raises(LifecycleError, match="before entering"):
            mesh.function(topic="t")


async def test_a_delivery_error_that_is_not_retryable_dead_letters_at_once() -> None:
    """A function raising DeliveryError(retryable=False) is invoked once."""
    mesh = Mesh()

    @mesh.function(topic="orders", delivery=FAST)
    async def refuse(event: Event) -> None:
        raise DeliveryError("bad order", retryable=False)

    async with mesh:
        await mesh.publish("orders", order(1))
        await read(mesh, "orders.dlq", 1)
        assert mesh.functions[0].stats.invocations == 1
    await anyio.lowlevel.checkpoint()


async def test_a_trigger_filters_and_transforms_before_the_function() -> None:
    """Only events the trigger's filter keeps reach the function, transformed; a code
    declaration may pass a Python callable as the filter."""
    seen: list[tuple[int, str | None]] = []
    mesh = Mesh()

    @mesh.function(
        topic="orders",
        filter=lambda e: e.data["n"] % 2 == 0,
        transform=[{"set": {"subject": "checked"}}],
    )
    async def even(event: Event) -> None:
        seen.append((event.data["n"], event.subject))

    async with mesh:
        await mesh.publish("orders", [order(i) for i in range(6)])
        sub = next(s for s in mesh.subscriptions if s.name == "function.even")
        await eventually(lambda: sub.stats.delivered + sub.stats.filtered == 6)
    assert sorted(seen) == [(0, "checked"), (2, "checked"), (4, "checked")]
