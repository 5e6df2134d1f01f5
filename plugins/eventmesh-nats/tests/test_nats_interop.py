"""The connector inside a Mesh, next to foreign NATS clients and through a server restart."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import eventmesh
from eventmesh import Backoff, DeliveryPolicy, Event, PublishError
from eventmesh.testing.polling import eventually
from eventmesh_nats import NatsConnector

pytestmark = [pytest.mark.nats, pytest.mark.anyio]

MeshConfigFactory = Callable[..., dict[str, Any]]


async def test_foreign_cloudevents_are_routed_to_a_subscriber(
    mesh_config: MeshConfigFactory, stream_prefix: str, raw_nats: Any
) -> None:
    """A plain nats-py client's ce- header messages reach a Mesh subscriber as events."""
    topic = f"interop.{uuid.uuid4().hex[:8]}"
    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    async with eventmesh.Mesh(mesh_config()) as mesh:
        await mesh.subscribe(topic, "billing", handler=handler, start="earliest")
        subject = f"{stream_prefix.lower()}.{topic}"
        js = raw_nats.jetstream()
        for n in range(3):
            headers = {
                "ce-specversion": "1.0",
                "ce-id": f"foreign-{n}",
                "ce-source": "/foreign/app",
                "ce-type": "com.example.order.created",
                "ce-time": "2024-05-01T12:00:00Z",
                "ce-datacontenttype": "application/json",
                "ce-partitionkey": "customer%2042",
            }
            await js.publish(subject, b'{"n": %d}' % n, headers=headers)
        await js.publish(subject, b"not a cloudevent")
        await eventually(lambda: len(got) >= 4, timeout=20)
    events = sorted(got[:3], key=lambda e: e.id)
    assert [e.id for e in events] == ["foreign-0", "foreign-1", "foreign-2"]
    assert [e.data for e in events] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert events[0].partitionkey == "customer 42"
    assert events[0].type == "com.example.order.created"
    (plain,) = [e for e in got if e.type == "io.eventmesh.nats.message"]
    assert plain.data == b"not a cloudevent"
    assert plain.source == f"nats://{subject}"


async def test_mesh_events_reach_a_foreign_subscriber(
    mesh_config: MeshConfigFactory, stream_prefix: str, raw_nats: Any
) -> None:
    """What a Mesh publishes is a CloudEvent any NATS client can read off the subject."""
    topic = f"outbound.{uuid.uuid4().hex[:8]}"
    subject = f"{stream_prefix.lower()}.{topic}"
    sub = await raw_nats.subscribe(subject)
    await raw_nats.flush()
    async with eventmesh.Mesh(mesh_config(binding="binary")) as mesh:
        await mesh.publish(topic, Event(type="t.out", source="/mesh", id="m-1", data={"k": "v"}))
    msg = await sub.next_msg(timeout=5)
    assert msg.headers["ce-id"] == "m-1"
    assert msg.headers["ce-type"] == "t.out"
    assert msg.data == b'{"k":"v"}'


async def test_nack_with_delay_redelivers_after_the_delay(
    mesh_config: MeshConfigFactory,
) -> None:
    """A nacked delivery comes back, attempt 2, no sooner than the policy's backoff."""
    topic = f"nack.{uuid.uuid4().hex[:8]}"
    policy = DeliveryPolicy(backoff=Backoff(initial=1.5, jitter=0.0), max_attempts=3)
    seen: list[tuple[int, float]] = []
    mesh = eventmesh.Mesh(mesh_config())
    async with mesh, mesh.subscribe(topic, "g", delivery=policy, start="earliest") as sub:
        await mesh.publish(topic, Event(type="t", source="/s", id="n-1"))
        with anyio.fail_after(20):
            async for delivery in sub:
                seen.append((delivery.attempt, time.monotonic()))
                if delivery.attempt == 1:
                    await delivery.nack("try again later")
                else:
                    await delivery.ack()
                    break
    (first, t1), (second, t2) = seen
    assert (first, second) == (1, 2)
    assert t2 - t1 >= 1.5 * 0.9


@pytest.mark.parametrize("mode", ["jetstream", "core"])
async def test_two_meshes_in_one_group_share_the_work(
    mesh_config: MeshConfigFactory, mode: str
) -> None:
    """Two Mesh instances subscribed as one group split the events; none is lost."""
    topic = f"shared.{uuid.uuid4().hex[:8]}"
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def handler_for(name: str) -> Callable[[Event], Any]:
        async def handler(event: Event) -> None:
            seen[name].append(event.data["n"])
            await anyio.sleep(0.001)  # some work, so one member cannot take everything

        return handler

    config = mesh_config(mode=mode)
    async with eventmesh.Mesh(config) as a, eventmesh.Mesh(config) as b:
        await a.subscribe(topic, "workers", handler=handler_for("a"))
        await b.subscribe(topic, "workers", handler=handler_for("b"))
        events = [Event(type="t", source="/s", data={"n": n}) for n in range(400)]
        for i in range(0, 400, 50):
            await a.publish(topic, events[i : i + 50])
        await eventually(lambda: len(set(seen["a"]) | set(seen["b"])) >= 400, timeout=30)
    assert set(seen["a"]) | set(seen["b"]) == set(range(400))
    assert seen["a"], "the first mesh got no work"
    assert seen["b"], "the second mesh got no work"


@pytest.mark.slow
async def test_server_restart_loses_no_stored_event(
    mesh_config: MeshConfigFactory, nats_url: str, nats_sh: Path
) -> None:
    """Events whose publish returned survive a server restart and all reach the group."""
    state = await anyio.run_process([str(nats_sh), "env"], check=False)
    if state.stdout.decode().strip().splitlines()[-1:] != [f"NATS_URL={nats_url}"]:
        pytest.skip("the server at NATS_URL was not started by scripts/nats.sh")
    topic = f"restart.{uuid.uuid4().hex[:8]}"
    stored: set[str] = set()
    failed = 0
    got: set[str] = set()

    async def handler(event: Event) -> None:
        got.add(event.id)

    def restart() -> None:
        subprocess.run([str(nats_sh), "restart"], capture_output=True, timeout=120, check=True)

    config = mesh_config(consumer={"ack_wait": "3s"}, publish_timeout="20s")
    async with eventmesh.Mesh(config) as mesh:
        connector = mesh.connector(topic)
        assert isinstance(connector, NatsConnector)
        await mesh.subscribe(topic, "survivors", handler=handler, start="earliest")
        thread = threading.Thread(target=restart)
        started = time.monotonic()
        for batch in range(400):
            events = [Event(type="t", source="/restart", id=f"{batch}-{n}") for n in range(25)]
            try:
                await mesh.publish(topic, events)
            except PublishError:
                failed += 1
            else:
                stored.update(e.id for e in events)
            if batch == 20:
                thread.start()
            restarted = batch > 20 and not thread.is_alive()
            if restarted and time.monotonic() - started > 3 and len(stored) >= 2_000:
                break
            await anyio.sleep(0.005)
        await anyio.to_thread.run_sync(thread.join, 120)
        await eventually(lambda: stored <= got, timeout=60)
    assert len(stored) >= 1_000, f"too few publishes succeeded ({failed} batches failed)"
    missing = stored - got
    assert not missing, f"{len(missing)} stored events never arrived, e.g. {sorted(missing)[:5]}"
