"""The SDK surface: connect(), lifecycle errors, input errors, the blocking facade."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import anyio
import pytest

import eventmesh
from eventmesh import (
    ClosedError,
    ConfigError,
    Event,
    EventValidationError,
    LifecycleError,
    PluginNotFoundError,
)
from eventmesh.connectors import Connector
from eventmesh.testing.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.core]  # core: CI runs these on the core alone


async def test_readme_example_publishes_and_receives() -> None:
    """The README's snippet works as written."""
    async with eventmesh.connect() as mesh:
        await mesh.publish(
            "orders",
            eventmesh.Event(type="com.example.order.created", source="/shop", data={"id": 1}),
        )
        async with mesh.subscribe("orders", group="billing", start="earliest") as sub:
            async for delivery in sub:
                assert delivery.event.data == {"id": 1}
                await delivery.ack()
                break


async def test_publish_rejects_what_is_not_an_event() -> None:
    """Publishing a dict, or a list holding one, raises EventValidationError."""
    async with eventmesh.connect() as mesh:
        with pytest.raises(EventValidationError, match=r"not an eventmesh\.Event"):
            await mesh.publish("t", [Event(type="t", source="/s"), {"type": "t"}])  # type: ignore[list-item]
        with pytest.raises(EventValidationError):
            await mesh.publish("t", {"type": "t"})  # type: ignore[arg-type]


async def test_lifecycle_errors_are_clear() -> None:
    """Use before entering, after closing, and entering twice each raise their error."""
    mesh = eventmesh.connect()
    with pytest.raises(LifecycleError, match="not open"):
        await mesh.publish("t", Event(type="t", source="/s"))
    async with mesh:
        pass
    with pytest.raises(ClosedError):
        await mesh.publish("t", Event(type="t", source="/s"))
    with pytest.raises(LifecycleError):
        async with mesh:
            pass


async def test_bad_subscription_arguments_raise_config_errors() -> None:
    """An empty group or a wrong delivery policy is refused before anything starts."""
    async with eventmesh.connect() as mesh:
        with pytest.raises(ConfigError):
            mesh.subscribe("t", "")
        with pytest.raises(ConfigError, match="max_attempts"):
            mesh.subscribe("t", "g", delivery={"max_attempts": "many"})


async def test_iterating_a_handler_subscription_is_an_error() -> None:
    """A subscription with a handler cannot also be iterated."""

    async def handler(event: Event) -> None:
        pass

    async with eventmesh.connect() as mesh, mesh.subscribe("t", "g", handler=handler) as sub:
        with pytest.raises(LifecycleError, match="has a handler"):
            aiter(sub)


async def test_iterating_a_subscription_not_entered_is_an_error_and_a_closed_one_ends() -> None:
    """A subscription must be entered before it is iterated; one closed before its loop
    began (the mesh closing under a sidecar's stream as it starts) ends the loop at once,
    as it ends a loop that is running, instead of saying it was never entered."""
    async with eventmesh.connect() as mesh:
        sub = mesh.subscribe("t", "g")
        with pytest.raises(LifecycleError, match="enter the subscription first"):
            aiter(sub)
        await sub.start()
        await mesh.publish("t", [Event(type="t", source="/sdk")])
        await sub.close()
        with anyio.fail_after(5):
            assert [d async for d in sub] == []


async def test_a_mesh_closed_from_another_task_ends_its_block_and_closes() -> None:
    """close() from a task other than the one that entered the mesh (a shutdown
    endpoint's, a signal watcher's) closes its subscriptions, ends the async with block
    that opened it, and the connector is closed as the block exits; it used to raise
    RuntimeError, as anyio lets only the entering task leave the mesh's task group."""
    seen: list[str] = []

    async def handler(event: Event) -> None:
        seen.append(event.id)

    reached_end_of_block = False
    with anyio.fail_after(10):
        async with eventmesh.connect() as mesh:
            sub = await mesh.subscribe("t", "g", handler=handler)
            [event_id] = await mesh.publish("t", Event(type="t", source="/sdk"))
            await eventually(lambda: seen == [event_id], timeout=5)
            connector = mesh.connector("t")
            async with anyio.create_task_group() as tg:
                tg.start_soon(mesh.close)
                await anyio.sleep_forever()  # what the close ends
            reached_end_of_block = True
    assert not reached_end_of_block
    assert sub.closed
    assert not connector.is_open
    with pytest.raises(ClosedError):
        await mesh.publish("t", Event(type="t", source="/sdk"))


async def test_a_block_left_while_another_task_closes_the_mesh_still_closes_it() -> None:
    """The task that opened the mesh keeps publishing while a shutdown task closes it:
    its publish gets ClosedError during the close, which takes it out of the block, and
    leaving waits for that close to finish and then closes the connector (it used to
    leave it open, with the mesh's task group never left)."""
    started: list[str] = []
    drained: list[str] = []
    left = anyio.Event()

    async def handler(event: Event) -> None:
        started.append(event.id)
        await left.wait()  # so the close is still draining when the block is left
        drained.append(event.id)

    async def shutdown(mesh: eventmesh.Mesh) -> None:
        await eventually(lambda: bool(started), timeout=5)
        await mesh.close()

    opened: list[Connector] = []

    async def publish_until_closed(tg: anyio.abc.TaskGroup) -> None:
        async with eventmesh.connect() as mesh:
            opened.append(mesh.connector("t"))
            await mesh.subscribe("t", "g", handler=handler)
            tg.start_soon(shutdown, mesh)
            try:
                while True:
                    await mesh.publish("t", Event(type="t", source="/sdk"))
                    await anyio.sleep(0.01)
            except ClosedError:
                left.set()
                raise

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            with pytest.raises(ClosedError):
                await publish_until_closed(tg)
    connector = opened[0]
    assert started
    assert drained == started  # the close let the handlers finish before it went on
    assert not connector.is_open


async def test_a_handler_closing_its_own_mesh_does_not_wait_for_itself() -> None:
    """A handler that closes its mesh gets close() back at once (closing waits for the
    handlers, so it cannot wait there); the close goes on apart and ends the block. It
    used to hang for good."""
    returned: list[str] = []

    async def handler(event: Event) -> None:
        await mesh.close(timeout=1)
        returned.append(event.id)

    with anyio.fail_after(10):
        async with eventmesh.connect() as mesh:
            connector = mesh.connector("t")
            await mesh.subscribe("t", "g", handler=handler)
            [event_id] = await mesh.publish("t", Event(type="t", source="/sdk"))
            await anyio.sleep_forever()  # what the close ends
    assert returned == [event_id]
    assert not connector.is_open


async def test_a_mesh_whose_entering_task_ended_closes_from_another_and_says_why() -> None:
    """Entered in a task that then ended (a start-up hook), closed from another (a
    shutdown hook): the connector closes, and LifecycleError says why the task group
    could not be left (it used to be left open, silently, or anyio's RuntimeError)."""
    opened: list[eventmesh.Mesh] = []

    async def start_up() -> None:
        opened.append(await eventmesh.connect().__aenter__())

    async def shut_down() -> None:
        await opened[0].close()

    # Plain asyncio tasks, as a framework's hooks run: an anyio task group would itself
    # refuse a task that ends inside a task group it did not leave.
    with anyio.fail_after(10):
        await asyncio.create_task(start_up())
        connector = opened[0].connector("t")
        with pytest.raises(LifecycleError, match="ended without leaving it"):
            await asyncio.create_task(shut_down())
    assert not connector.is_open


async def test_leaving_a_mesh_by_an_error_or_an_outer_timeout_keeps_it_as_it_came() -> None:
    """An error raised in the block comes out as itself (not in an exception group),
    and an outer timeout cancels the block as it would without the mesh; either way the
    connector is closed."""
    opened: list[Connector] = []

    async def fail_in_the_block() -> None:
        async with eventmesh.connect() as mesh:
            opened.append(mesh.connector("t"))
            raise ValueError("from the block")

    with pytest.raises(ValueError, match="from the block"):
        await fail_in_the_block()
    assert not opened[0].is_open
    with anyio.move_on_after(0.2) as scope:
        async with eventmesh.connect() as mesh:
            connector = mesh.connector("t")
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert not connector.is_open


async def test_unknown_connector_types_and_bad_addresses_say_what_to_do() -> None:
    """A missing plugin names the real packages to install; an address of no known scheme,
    or a sidecar address with a config, is refused clearly."""
    with pytest.raises(ConfigError, match="pip install eventmesh-kafka"):
        eventmesh.connect(config={"connectors": {"default": {"type": "rabbit"}}})
    with pytest.raises(ConfigError, match="http:// or grpc://"):
        eventmesh.connect("amqp://127.0.0.1:5672")
    with pytest.raises(ConfigError, match="has its own configuration"):
        eventmesh.connect("http://127.0.0.1:10105", config={})
    from eventmesh.connectors import load_connector

    with pytest.raises(PluginNotFoundError, match="Did you mean 'memory'"):
        load_connector("memroy")


async def test_configured_subscriptions_start_with_the_mesh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription in the config calls its 'module:function' handler."""
    (tmp_path / "myhandlers.py").write_text(
        "seen = []\nasync def record(event):\n    seen.append(event.data)\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {
        "subscriptions": [
            {"name": "rec", "topic": "t", "sink": {"handler": "myhandlers:record"}, "filter": None}
        ]
    }
    async with eventmesh.connect(config=config) as mesh:
        await mesh.publish("t", Event(type="t", source="/s", data=42))
        with anyio.fail_after(5):
            while not sys.modules["myhandlers"].seen:
                await anyio.sleep(0.01)
    assert sys.modules["myhandlers"].seen == [42]


def test_blocking_facade_publishes_and_receives() -> None:
    """connect_blocking gives the same publish and subscribe without async code."""
    with eventmesh.connect_blocking() as mesh:
        mesh.publish("orders", Event(type="t", source="/s", data="hi"))
        with mesh.subscribe("orders", "g", start="earliest") as sub:
            delivery = sub.receive(timeout=5)
            assert delivery is not None
            assert delivery.event.data == "hi"
            delivery.ack()
            assert sub.receive(timeout=0.2) is None


def test_a_blocking_receive_that_timed_out_still_receives_what_comes_later() -> None:
    """A receive() that timed out leaves the subscription readable: the next one gets
    the event published after it (the timeout used to end the loop for good, so every
    later receive() returned None at once)."""
    with (
        eventmesh.connect_blocking() as mesh,
        mesh.subscribe("orders", "g", start="earliest") as sub,
    ):
        assert sub.receive(timeout=0.1) is None
        [event_id] = mesh.publish("orders", Event(type="t", source="/s"))
        delivery = sub.receive(timeout=5)
        assert delivery is not None
        assert delivery.event.id == event_id
        delivery.ack()


def test_blocking_calls_after_the_client_closed_say_it_is_closed() -> None:
    """After the client's with block, receive() and ack() raise ClosedError (they
    raised anyio's RuntimeError about its portal), and closing the subscription, which
    the client closed already, does nothing."""
    with eventmesh.connect_blocking() as mesh:
        mesh.publish("orders", Event(type="t", source="/s"))
        sub = mesh.subscribe("orders", "g", start="earliest").__enter__()
        delivery = sub.receive(timeout=5)
        assert delivery is not None
    with pytest.raises(ClosedError):
        sub.receive(timeout=0.1)
    with pytest.raises(ClosedError):
        delivery.ack()
    sub.close()


async def test_two_loops_reading_one_subscription_share_it_and_both_end_on_close() -> None:
    """Two tasks iterating one subscription both get events, and closing it ends both
    loops (the in-memory consumer kept one waiter, so the first loop never woke again,
    not even on close)."""
    got: dict[int, list[int]] = {1: [], 2: []}
    ended: list[int] = []

    async def read(sub: eventmesh.Subscription, n: int) -> None:
        async for delivery in sub:
            got[n].append(delivery.event.data)
            await delivery.ack()
            await anyio.sleep(0.01)  # the other loop's turn
        ended.append(n)

    with anyio.fail_after(10):
        async with (
            eventmesh.connect() as mesh,
            mesh.subscribe("t", "g") as sub,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(read, sub, 1)
            tg.start_soon(read, sub, 2)
            await anyio.sleep(0.05)  # both loops wait for events
            for n in range(20):
                await mesh.publish("t", Event(type="t", source="/s", data=n))
                await anyio.sleep(0.005)
            await eventually(lambda: len(got[1]) + len(got[2]) == 20, timeout=5)
            await sub.close()
    assert sorted(got[1] + got[2]) == list(range(20))
    assert got[1]
    assert got[2]
    assert sorted(ended) == [1, 2]


async def test_a_nack_that_cannot_dead_letter_after_the_mesh_closed_says_so() -> None:
    """The last attempt's nack after the mesh closed raises ClosedError at once (the
    event stays unacked) instead of retrying the dead-letter publish for ever."""
    async with eventmesh.connect() as mesh:
        sub = await mesh.subscribe("t", "g", start="earliest", delivery={"max_attempts": 1})
        await mesh.publish("t", Event(type="t", source="/s"))
        held: list[eventmesh.Delivery] = []
        async for delivery in sub:
            held.append(delivery)
            break
    with anyio.fail_after(5), pytest.raises(ClosedError):
        await held[0].nack("failed after the mesh closed")


async def test_a_bad_subscription_name_or_transform_is_a_config_error() -> None:
    """A name or a transform of the wrong type is a ConfigError naming it, not a
    TypeError from deep inside."""
    async with eventmesh.connect() as mesh:
        with pytest.raises(ConfigError, match="name must be a string"):
            mesh.subscribe("t", "g", name=5)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="transform must be"):
            mesh.subscribe("t", "g", transform=5)


async def test_a_handler_closing_its_own_subscription_does_not_wait_for_itself() -> None:
    """sub.close() in that subscription's own handler returns at once and the
    subscription closes (it waited out the whole timeout, then cancelled the handler)."""
    returned: list[str] = []

    async def handler(event: Event) -> None:
        await sub.close(timeout=30)
        returned.append(event.id)

    with anyio.fail_after(10):
        async with eventmesh.connect() as mesh:
            sub = await mesh.subscribe("t", "g", handler=handler)
            [event_id] = await mesh.publish("t", Event(type="t", source="/s"))
            await eventually(lambda: sub.closed and returned == [event_id], timeout=5)
            assert mesh.subscriptions == []


async def test_close_cancels_handlers_that_overrun_the_timeout() -> None:
    """close(timeout) stops a handler still running after the timeout; its event returns."""
    cancelled = anyio.Event()

    async def slow(event: Event) -> None:
        try:
            await anyio.sleep(60)
        except BaseException:
            cancelled.set()
            raise

    async with eventmesh.connect() as mesh:
        sub = await mesh.subscribe("t", "g", handler=slow)
        await mesh.publish("t", Event(type="t", source="/s", data=1))
        await anyio.sleep(0.05)
        with anyio.fail_after(5):
            await sub.close(timeout=0.1)
        assert cancelled.is_set()
        async with mesh.subscribe("t", "g") as again:
            async for delivery in again:
                assert delivery.event.data == 1
                break


async def test_a_failing_configured_subscription_raises_its_own_error() -> None:
    """A handler that cannot be imported raises ConfigError itself, not an exception group."""
    config = {"subscriptions": [{"name": "s", "topic": "t", "sink": {"handler": "nope.x:y"}}]}
    with pytest.raises(ConfigError, match=r"cannot import module 'nope\.x'"):
        async with eventmesh.connect(config=config):
            pass


async def test_a_config_object_can_be_overridden_from_the_environment() -> None:
    """load_config accepts a MeshConfig with env overrides, connectors included."""
    base = eventmesh.load_config({"connectors": {"default": {"type": "memory", "partitions": 2}}})
    config = eventmesh.load_config(base, env={"EVENTMESH__CONNECTORS__DEFAULT__PARTITIONS": "5"})
    assert config.connectors["default"].config.partitions == 5
    assert config.server.http.port == 10105


async def test_events_a_handler_returns_are_published_to_reply_to() -> None:
    """With reply_to, a handler's returned Event and lists of Events land on that topic;
    returning None publishes nothing."""

    async def enrich(event: Event) -> Event | list[Event] | None:
        n = event.data["n"]
        if n == 0:
            return None
        reply = Event(type="enriched", source="test", data={"n": n, "double": 2 * n})
        return reply if n == 1 else [reply, reply.replace(id=reply.id + "-b")]

    async with (
        eventmesh.Mesh() as mesh,
        mesh.subscribe("replies", "g", start="earliest") as replies,
        mesh.subscribe("orders", "g", handler=enrich, reply_to="replies"),
    ):
        for n in (0, 1, 2):
            await mesh.publish("orders", Event(type="order", source="t", data={"n": n}))
        seen = []
        with anyio.fail_after(5):
            async for delivery in replies:
                seen.append(delivery.event.data)
                await delivery.ack()
                if len(seen) == 3:
                    break
    assert sorted(d["n"] for d in seen) == [1, 2, 2]
    assert all(d["double"] == 2 * d["n"] for d in seen)
