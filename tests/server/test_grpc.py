"""The sidecar's gRPC API and the gRPC client, end to end on a real server on 127.0.0.1.

Each test runs a ``grpc.aio`` server with the EventMesh service over an in-memory Mesh,
and talks to it with :class:`GrpcClient` (or, for the wire protocol itself, with the
generated stub).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import grpc
import grpc.aio
import msgspec
import pytest

from eventmesh import (
    ClosedError,
    ConfigError,
    ConnectError,
    Delivery,
    Event,
    EventValidationError,
    LifecycleError,
    Mesh,
    Subscription,
)
from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._generated.eventmesh.v1.eventmesh_pb2_grpc import EventMeshStub
from eventmesh.bindings.protobuf import to_proto, to_proto_batch
from eventmesh.client.grpc import GrpcClient
from eventmesh.server.grpc import add_to_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> Any:
    """asyncio with uvloop, as in conftest.py, but one loop for the whole module (below)."""
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture(scope="module", autouse=True)
async def one_loop() -> AsyncIterator[None]:
    """Runs every test of the module on one event loop.

    grpc.aio completes core operations on the loop that started them; one that completes
    after its loop closed (a call cut short as a test ends, say) makes the next test's
    loop fail with "Event loop is closed". A process normally has one loop for its life.
    """
    yield  # noqa: PT022  # anyio keeps its runner, so the loop, until this fixture ends


FAST_RETRY = {"max_attempts": 2, "backoff": {"initial": "10ms", "max": "10ms"}}


@pytest.fixture
async def sidecar() -> AsyncIterator[tuple[Mesh, str]]:
    """An in-memory mesh served over gRPC on a free port: (mesh, "127.0.0.1:port")."""
    async with Mesh() as mesh:
        server = grpc.aio.server()
        add_to_server(server, mesh)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield mesh, f"127.0.0.1:{port}"
        finally:
            await server.stop(None)


def events(n: int) -> list[Event]:
    """n small events with data 0..n-1, all with one key (one partition: order is kept)."""
    return [
        Event(type="t", source="/s", data=i, extensions={"partitionkey": "k"}) for i in range(n)
    ]


async def receive(sub: AsyncIterable[Delivery], n: int) -> list[Delivery]:
    """The next n deliveries of an iterator."""
    out = []
    with anyio.fail_after(5):
        async for delivery in sub:
            out.append(delivery)
            if len(out) == n:
                break
    return out


def trailers(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The trailing metadata of a failed call."""
    metadata: Any = error.trailing_metadata() or ()  # grpc.aio.Metadata: (key, value) pairs
    return dict(metadata)


async def read_all(mesh: Mesh, topic: str, n: int) -> list[Event]:
    """n events of a topic, read by a fresh group of the embedded mesh from the start."""
    out = []
    async with mesh.subscribe(topic, "reader", start="earliest") as sub:
        with anyio.fail_after(5):
            async for delivery in sub:
                out.append(delivery.event)
                await delivery.ack()
                if len(out) == n:
                    break
    return out


async def test_grpc_aio_serves_on_uvloop(sidecar: tuple[Mesh, str]) -> None:
    """The test loop is uvloop, and grpc.aio serves and calls on it."""
    mesh, address = sidecar
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    async with GrpcClient(address) as client:
        await client.publish("t", Event(type="t", source="/s"))
    assert len(await read_all(mesh, "t", 1)) == 1


async def test_published_events_round_trip(sidecar: tuple[Mesh, str]) -> None:
    """One event and a batch are stored as sent and read back unchanged through gRPC."""
    mesh, address = sidecar
    one = Event(
        type="com.example.t",
        source="/s",
        subject="sub",
        dataschema="https://example.com/s",
        data={"a": [1, "x"]},
        extensions={"flag": True, "n": 3, "partitionkey": "k"},
    )
    raw = Event(type="t", source="/s", data=b"\x00raw", extensions={"partitionkey": "k"})
    batch = [*events(3), raw]
    async with GrpcClient(address) as client:
        await client.publish("t", one)
        await client.publish("t", batch)
        assert await read_all(mesh, "t", 5) == [one, *batch]
        async with client.subscribe("t", "g", start="earliest") as sub:
            got = await receive(sub, 5)
            assert [d.event for d in got] == [one, *batch]
            assert {(d.attempt, d.topic) for d in got} == {(1, "t")}
            # The same types as embedded: code written for a Mesh runs unchanged.
            assert isinstance(sub, Subscription)
            assert all(type(d) is Delivery for d in got)
            assert sub.stats.received == 5


async def test_publish_batch_answers_with_the_stored_ids(sidecar: tuple[Mesh, str]) -> None:
    """PublishBatch answers only after storing, with the count and ids in order."""
    mesh, address = sidecar
    batch = events(3)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = EventMeshStub(channel)
        reply = await stub.PublishBatch(
            pb.PublishBatchRequest(topic="t", batch=to_proto_batch(batch))
        )
        assert reply.stored == 3
        assert list(reply.ids) == [e.id for e in batch]
        assert await read_all(mesh, "t", 3) == batch


async def test_an_invalid_event_is_refused_with_its_class_and_attribute(
    sidecar: tuple[Mesh, str],
) -> None:
    """The server answers INVALID_ARGUMENT naming EventValidationError and the attribute."""
    _, address = sidecar
    msg = to_proto(Event(type="t", source="/s"))
    msg.spec_version = "0.3"
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await EventMeshStub(channel).Publish(pb.PublishRequest(topic="t", event=msg))
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "specversion" in (error.details() or "")
    metadata = trailers(error)
    assert metadata["eventmesh-error"] == "EventValidationError"
    assert metadata["eventmesh-attribute"] == "specversion"


async def test_the_client_raises_validation_errors_whichever_side_finds_them(
    sidecar: tuple[Mesh, str],
) -> None:
    """Invalid events raise EventValidationError in the client, found there or by the server."""
    _, address = sidecar
    async with GrpcClient(address) as client:
        with pytest.raises(EventValidationError) as info:
            await client.publish("t", Event(type="t", source="/s", data=object()))
        assert info.value.attribute == "data"
        with pytest.raises(EventValidationError):
            await client.publish("t", [{"type": "t"}])  # type: ignore[list-item]
        # An Event changed behind its validation: only the server can tell.
        event = Event(type="t", source="/s")
        msgspec.structs.force_setattr(event, "specversion", "0.3")
        with pytest.raises(EventValidationError) as info:
            await client.publish("t", event)
        assert info.value.attribute == "specversion"


async def test_server_errors_are_raised_as_the_same_classes(sidecar: tuple[Mesh, str]) -> None:
    """A bad topic or a bad filter spec comes back as ConfigError."""
    _, address = sidecar
    async with GrpcClient(address) as client:
        with pytest.raises(ConfigError, match="topic"):
            await client.publish("", Event(type="t", source="/s"))
        sub = client.subscribe("t", "g", filter={"no-such-dialect": 1})
        with pytest.raises(ConfigError, match="filter"):
            await sub.start()
        with pytest.raises(ConfigError, match="callable"):
            client.subscribe("t", "g", filter=lambda event: True)


async def test_a_stream_must_open_first(sidecar: tuple[Mesh, str]) -> None:
    """A Subscribe stream that does not start with open fails FAILED_PRECONDITION."""
    _, address = sidecar
    async with grpc.aio.insecure_channel(address) as channel:
        call = EventMeshStub(channel).Subscribe()
        await call.write(pb.SubscribeRequest(credit=pb.Credit(n=1)))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    metadata = trailers(info.value)
    assert metadata["eventmesh-error"] == "LifecycleError"


async def test_a_close_while_the_client_connects_wins(sidecar: tuple[Mesh, str]) -> None:
    """close() called while the client is still connecting ends its opening with
    ClosedError, and the client never serves: before, close() returned and the client
    then opened and published as if it had not been called."""
    _, address = sidecar
    client = GrpcClient(address)
    entered = []

    async def opener() -> None:
        with pytest.raises(ClosedError, match="closed while it opened"):
            async with client:
                entered.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(opener)
        await anyio.wait_all_tasks_blocked()  # the opener waits for its connection
        await client.close()
    assert entered == []
    with pytest.raises(ClosedError):
        await client.publish("t", Event(type="t", source="/s"))


async def test_an_unreachable_sidecar_is_a_connect_error_naming_the_address() -> None:
    """Entering a client for an address nobody listens on raises ConnectError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(ConnectError, match=address):
        async with GrpcClient(f"grpc://{address}", connect_timeout=0.5):
            pass


async def test_acked_deliveries_are_not_delivered_again(sidecar: tuple[Mesh, str]) -> None:
    """Deliveries acked through the stream are committed: the group moves past them."""
    _, address = sidecar
    first, later = events(3), events(1)
    async with GrpcClient(address) as client:
        await client.publish("t", first)
        async with client.subscribe("t", "g", start="earliest") as sub:
            for delivery in await receive(sub, 3):
                await delivery.ack()
        await client.publish("t", later)
        async with client.subscribe("t", "g") as sub:
            (delivery,) = await receive(sub, 1)
    assert delivery.event == later[0]
    assert delivery.attempt == 1


async def test_a_nack_is_redelivered_then_dead_lettered(sidecar: tuple[Mesh, str]) -> None:
    """A nacked delivery comes back as attempt 2, and after the last attempt goes to .dlq."""
    mesh, address = sidecar
    (event,) = events(1)
    async with GrpcClient(address) as client:
        await client.publish("t", event)
        async with client.subscribe("t", "g", start="earliest", delivery=FAST_RETRY) as sub:
            (first,) = await receive(sub, 1)
            assert first.attempt == 1
            await first.nack("first failure")
            (second,) = await receive(sub, 1)
            assert (second.event, second.attempt) == (event, 2)
            await second.nack(ValueError("still broken"))
            (dead,) = await read_all(mesh, "t.dlq", 1)
    assert dead.id == event.id
    assert dead.extensions["deadletterreason"] == "failed"
    assert dead.extensions["deadlettererror"] == "ValueError: still broken"
    assert dead.extensions["deadletterattempts"] == 2
    assert dead.extensions["deadlettergroup"] == "g"


async def test_the_server_sends_no_more_than_the_credits_granted(
    sidecar: tuple[Mesh, str],
) -> None:
    """With a window of 2, a third delivery waits until one of the two is settled."""
    _, address = sidecar
    async with GrpcClient(address, window=2) as client:
        await client.publish("t", events(3))
        async with client.subscribe("t", "g", start="earliest") as sub:
            held = await receive(sub, 2)
            with anyio.move_on_after(0.5):  # long enough for a third to arrive, were it sent
                async for extra in sub:
                    pytest.fail(f"a third delivery arrived without credit: {extra}")
            await held[0].ack()
            (third,) = await receive(sub, 1)
    assert [d.event.data for d in [*held, third]] == [0, 1, 2]


async def test_the_raw_stream_honours_credits_and_settles_by_id(
    sidecar: tuple[Mesh, str],
) -> None:
    """On the wire: subscribed first, one delivery per credit, acks by delivery id."""
    mesh, address = sidecar
    await mesh.publish("t", events(2))
    responses_in, responses = anyio.create_memory_object_stream[pb.SubscribeResponse](10)

    async def read(call: grpc.aio.StreamStreamCall[object, pb.SubscribeResponse]) -> None:
        # Reads go through a task: cancelling a pending read would cancel the whole call.
        async with responses_in:
            while isinstance(response := await call.read(), pb.SubscribeResponse):
                await responses_in.send(response)

    async with grpc.aio.insecure_channel(address) as channel, anyio.create_task_group() as tg:
        call = EventMeshStub(channel).Subscribe()
        opening = pb.Open(
            topic="t", group="g", position=pb.START_POSITION_EARLIEST, credits=1, name="raw"
        )
        await call.write(pb.SubscribeRequest(open=opening))
        tg.start_soon(read, call)
        with anyio.fail_after(5):
            assert (await responses.receive()).subscribed.name == "raw"
            one = (await responses.receive()).delivery
        assert one.attempt == 1
        with anyio.move_on_after(0.5):  # long enough for a second to arrive, were it sent
            pytest.fail(f"sent without credit: {await responses.receive()}")
        await call.write(pb.SubscribeRequest(ack=pb.Ack(delivery_ids=[one.delivery_id])))
        await call.write(pb.SubscribeRequest(credit=pb.Credit(n=1)))
        with anyio.fail_after(5):
            two = (await responses.receive()).delivery
        assert two.delivery_id != one.delivery_id
        await call.done_writing()  # the server leaves the group and ends the stream
        with anyio.fail_after(5):
            assert [r async for r in responses] == []
        assert await call.code() == grpc.StatusCode.OK
    # The acked first event is committed; the unacked second one goes back to the group.
    async with mesh.subscribe("t", "g") as sub:
        with anyio.fail_after(5):
            delivery = await anext(aiter(sub))
    assert delivery.event.data == 1


async def test_a_handler_runs_in_the_client_and_its_replies_are_published(
    sidecar: tuple[Mesh, str],
) -> None:
    """Async and plain handlers run client-side; returned events go to reply_to first."""
    mesh, address = sidecar

    async def double(event: Event) -> Event:
        return Event(type="reply", source="/h", data=event.data * 2)

    def triple(event: Event) -> list[Event]:
        return [Event(type="reply3", source="/h", data=event.data * 3)]

    async with GrpcClient(address) as client:
        async with (
            client.subscribe("t", "a", handler=double, reply_to="replies", start="earliest"),
            client.subscribe("t", "b", handler=triple, reply_to="replies", start="earliest"),
        ):
            await client.publish("t", events(2))
            replies = await read_all(mesh, "replies", 4)
        assert sorted((e.type, e.data) for e in replies) == [
            ("reply", 0),
            ("reply", 2),
            ("reply3", 0),
            ("reply3", 3),
        ]
        # Both groups acked: nothing is delivered to them again.
        await client.publish("t", Event(type="t", source="/s", data=10))
        async with client.subscribe("t", "a") as sub:
            (delivery,) = await receive(sub, 1)
        assert delivery.event.data == 10


async def test_a_failing_handler_nacks_and_ends_in_the_dead_letter_topic(
    sidecar: tuple[Mesh, str],
) -> None:
    """A handler that raises nacks with its error, so the policy retries, then dead-letters."""
    mesh, address = sidecar
    attempts = []

    async def broken(event: Event) -> None:
        attempts.append(event.id)
        raise RuntimeError("no luck")

    async with GrpcClient(address) as client:
        sub = client.subscribe("t", "g", handler=broken, delivery=FAST_RETRY, start="earliest")
        await sub
        with pytest.raises(LifecycleError):
            aiter(sub)
        (event,) = events(1)
        await client.publish("t", event)
        (dead,) = await read_all(mesh, "t.dlq", 1)
    assert attempts == [event.id, event.id]
    assert dead.extensions["deadlettererror"] == "RuntimeError: no luck"
    assert sub.closed


async def test_closing_the_client_returns_unacked_events_to_the_group(
    sidecar: tuple[Mesh, str],
) -> None:
    """Deliveries a closed client held unsettled go to the next member of the group."""
    mesh, address = sidecar
    sent = events(3)
    async with GrpcClient(address) as client:
        await client.publish("t", sent)
        sub = await client.subscribe("t", "g", start="earliest")
        held = await receive(sub, 3)
        await held[0].ack()
    assert sub.closed
    with anyio.fail_after(5):
        while mesh.subscriptions:  # the server closed its side of the stream
            await anyio.sleep(0.01)
    async with GrpcClient(address) as other, other.subscribe("t", "g") as sub:
        again = await receive(sub, 2)
    assert sorted(d.event.data for d in again) == [1, 2]
    assert {d.attempt for d in again} == {2}


async def test_a_subscription_can_start_at_a_time(sidecar: tuple[Mesh, str]) -> None:
    """start=datetime reaches the server as a Timestamp: older events are skipped."""
    mesh, address = sidecar
    await mesh.publish("t", events(1))
    await anyio.sleep(0.01)  # the store times must differ
    cut = datetime.now(UTC)
    later = Event(type="t", source="/s", data="later")
    await mesh.publish("t", later)
    async with GrpcClient(address) as client, client.subscribe("t", "g", start=cut) as sub:
        (delivery,) = await receive(sub, 1)
    assert delivery.event == later


async def test_a_broken_stream_gives_its_unacked_events_back(sidecar: tuple[Mesh, str]) -> None:
    """A client that vanishes mid-stream leaves the group; its deliveries go to the next."""
    mesh, address = sidecar
    await mesh.publish("t", events(1))
    async with grpc.aio.insecure_channel(address) as channel:
        call = EventMeshStub(channel).Subscribe()
        opening = pb.Open(topic="t", group="g", position=pb.START_POSITION_EARLIEST, credits=5)
        await call.write(pb.SubscribeRequest(open=opening))
        with anyio.fail_after(5):
            assert (await call.read()).HasField("subscribed")
            assert (await call.read()).delivery.attempt == 1
        call.cancel()
    with anyio.fail_after(5):
        while mesh.subscriptions:  # the server closed the subscription of the broken stream
            await anyio.sleep(0.01)
    async with GrpcClient(address) as client, client.subscribe("t", "g") as sub:
        (delivery,) = await receive(sub, 1)
    assert (delivery.event.data, delivery.attempt) == (0, 2)


async def test_a_stopped_sidecar_ends_iteration_with_connect_error(
    sidecar: tuple[Mesh, str],
) -> None:
    """Iterating a subscription whose sidecar went away raises ConnectError."""
    mesh, _ = sidecar
    server = grpc.aio.server()  # a second server, to stop while the fixture's runs on
    add_to_server(server, mesh)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with GrpcClient(f"127.0.0.1:{port}") as client:
        async with client.subscribe("t", "g") as sub:
            await server.stop(None)
            with anyio.fail_after(5), pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
                async for _ in sub:
                    pass
        with pytest.raises(ConnectError):
            await client.publish("t", events(1))


async def test_a_closing_mesh_ends_the_stream_with_closed_error(
    sidecar: tuple[Mesh, str],
) -> None:
    """When the sidecar's mesh closes a subscription, the client's iteration raises ClosedError."""
    mesh, address = sidecar
    async with GrpcClient(address) as client, client.subscribe("t", "g") as sub:
        with anyio.fail_after(5):
            while not mesh.subscriptions:
                await anyio.sleep(0.01)
        await mesh.subscriptions[0].close()
        with anyio.fail_after(5), pytest.raises(ClosedError, match="shutting down"):
            async for _ in sub:
                pass
