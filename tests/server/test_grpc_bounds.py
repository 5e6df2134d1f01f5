"""What one gRPC client can hold or cost the sidecar: every stream and call is bounded in
what it keeps, how long it may stay silent and how long it holds the event loop, and a
bad field or an unsendable event gets a clear status, never UNKNOWN or INTERNAL.

A real ``grpc.aio`` server with the EventMesh service over an in-memory Mesh, on
127.0.0.1, talked to with the generated stub (the wire itself) or :class:`GrpcClient`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from eventmesh import Event, Mesh, PublishError, SubscribeError
from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._generated.eventmesh.v1.eventmesh_pb2_grpc import EventMeshStub
from eventmesh.bindings.protobuf import to_proto
from eventmesh.client.grpc import GrpcClient
from eventmesh.server.grpc import MAX_BATCH, MAX_DELIVERY_SIZE, MAX_SETTLE, add_to_server

pytestmark = pytest.mark.anyio

OPEN_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def anyio_backend() -> Any:
    """asyncio with uvloop, one loop for the module (grpc.aio keeps to its loop)."""
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture(scope="module", autouse=True)
async def one_loop() -> AsyncIterator[None]:
    """Runs every test of the module on one event loop."""
    yield  # noqa: PT022  # anyio keeps its runner, so the loop, until this fixture ends


@pytest.fixture
async def sidecar() -> AsyncIterator[tuple[Mesh, str]]:
    """An in-memory mesh served over gRPC on a free port: (mesh, "127.0.0.1:port")."""
    async with Mesh() as mesh:
        server = grpc.aio.server()
        add_to_server(server, mesh, open_timeout=OPEN_TIMEOUT)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield mesh, f"127.0.0.1:{port}"
        finally:
            await server.stop(None)


def error_class(error: grpc.aio.AioRpcError) -> str | None:
    metadata: Any = error.trailing_metadata() or ()
    return dict(metadata).get("eventmesh-error")


class RawStream:
    """A Subscribe call on the wire, its responses read by a task into a queue (cancelling
    a pending read would cancel the call)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = EventMeshStub(channel).Subscribe()
        self._in, self.responses = anyio.create_memory_object_stream[pb.SubscribeResponse](100_000)

    async def read(self) -> None:
        async with self._in:
            try:
                while isinstance(response := await self.call.read(), pb.SubscribeResponse):
                    await self._in.send(response)
            except grpc.aio.AioRpcError:
                return  # the test reads the status from the call

    async def deliveries(self, wait: float) -> list[pb.Delivery]:
        """What arrives until nothing more comes for ``wait`` seconds."""
        out = []
        while True:
            with anyio.move_on_after(wait):
                response = await self.responses.receive()
                out.append(response.delivery)
                continue
            return out


async def test_credits_beyond_max_in_flight_hold_no_more_deliveries_at_once(
    sidecar: tuple[Mesh, str],
) -> None:
    """A client that grants billions of credits and settles nothing holds no more than
    the policy's max_in_flight deliveries (prefetch 5 here); each one it settles lets
    one more out, its credits still counting. Before, the server sent and kept every
    event the topic held."""
    mesh, address = sidecar
    await mesh.publish("t", [Event(type="t", source="/s", data=n) for n in range(40)])
    async with grpc.aio.insecure_channel(address) as channel, anyio.create_task_group() as tg:
        raw = RawStream(channel)
        opening = pb.Open(
            topic="t",
            group="g",
            position=pb.START_POSITION_EARLIEST,
            credits=4_000_000_000,
            delivery_json='{"prefetch": 5}',
        )
        await raw.call.write(pb.SubscribeRequest(open=opening))
        tg.start_soon(raw.read)
        with anyio.fail_after(5):
            assert (await raw.responses.receive()).subscribed.name
        held = await raw.deliveries(0.5)
        assert len(held) == 5
        more = pb.Credit(n=4_000_000_000)
        await raw.call.write(pb.SubscribeRequest(credit=more))
        assert await raw.deliveries(0.5) == []
        await raw.call.write(pb.SubscribeRequest(ack=pb.Ack(delivery_ids=[held[0].delivery_id])))
        assert len(await raw.deliveries(0.5)) == 1
        raw.call.cancel()


async def test_a_delivery_too_large_for_a_grpc_client_is_dead_lettered(
    sidecar: tuple[Mesh, str],
) -> None:
    """An event above what a gRPC client receives (stored by an embedded publisher, with
    no size limit of its own) goes to the dead-letter topic, and the events behind it
    are delivered. Before, it ended the client's stream every time it came back, and
    nothing behind it in its partition was ever delivered."""
    mesh, address = sidecar
    big = Event(type="t", source="/s", id="big", data="x" * (MAX_DELIVERY_SIZE + 1))
    small = Event(type="t", source="/s", id="small", data="fine")
    key = {"partitionkey": "k"}
    await mesh.publish("t", [big.replace(extensions=key), small.replace(extensions=key)])
    async with (
        GrpcClient(address) as client,
        client.subscribe("t", "g", start="earliest") as sub,
    ):
        with anyio.fail_after(10):
            delivery = await anext(aiter(sub))
            await delivery.ack()
    assert delivery.event.id == "small"
    async with mesh.subscribe("t.dlq", "check", start="earliest") as dead:
        with anyio.fail_after(10):
            letter = await anext(aiter(dead))
    assert letter.event.id == "big"


async def test_a_stream_that_never_opens_is_ended(sidecar: tuple[Mesh, str]) -> None:
    """A Subscribe stream that sends nothing after it is let in is ended once the open
    timeout passes (FAILED_PRECONDITION): before, it held an RPC slot for ever, and
    max_concurrent_rpcs of them shut out every other call."""
    _, address = sidecar
    async with grpc.aio.insecure_channel(address) as channel:
        call = EventMeshStub(channel).Subscribe()
        with anyio.fail_after(OPEN_TIMEOUT + 10):
            code = await call.code()
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "open" in (await call.details() or "")


async def test_a_publish_batch_above_the_cap_is_refused_before_decoding(
    sidecar: tuple[Mesh, str],
) -> None:
    """A PublishBatch of more than MAX_BATCH events is RESOURCE_EXHAUSTED and stores
    nothing (each event is decoded on the event loop: a million would hold every other
    call for seconds)."""
    mesh, address = sidecar
    one = to_proto(Event(type="t", source="/s", id="e"))
    batch = pb.PublishBatchRequest(topic="t")
    batch.batch.events.extend([one] * (MAX_BATCH + 1))
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await EventMeshStub(channel).PublishBatch(batch)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_class(refused.value) == "LimitExceededError"
    await mesh.publish("t", Event(type="t", source="/s", id="after"))
    async with mesh.subscribe("t", "check", start="earliest") as sub:
        with anyio.fail_after(5):
            first = await anext(aiter(sub))
    assert first.event.id == "after"  # nothing of the batch was stored


async def test_an_ack_naming_too_many_deliveries_ends_the_stream(
    sidecar: tuple[Mesh, str],
) -> None:
    """An ack naming more than MAX_SETTLE delivery ids ends the stream with
    RESOURCE_EXHAUSTED, before looking any up."""
    _, address = sidecar
    async with grpc.aio.insecure_channel(address) as channel, anyio.create_task_group() as tg:
        raw = RawStream(channel)
        await raw.call.write(pb.SubscribeRequest(open=pb.Open(topic="t", group="g", credits=1)))
        tg.start_soon(raw.read)
        ids = list(range(1, MAX_SETTLE + 2))
        await raw.call.write(pb.SubscribeRequest(ack=pb.Ack(delivery_ids=ids)))
        with anyio.fail_after(10):
            code = await raw.call.code()
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "settle them in parts" in (await raw.call.details() or "")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("time", Timestamp(seconds=10**12)),  # past year 9999
        ("delivery_json", "[" * 5_000 + "]" * 5_000),
        ("filter_json", "[" * 5_000 + "]" * 5_000),
    ],
)
async def test_a_bad_open_field_is_invalid_argument(
    sidecar: tuple[Mesh, str], field: str, value: Any
) -> None:
    """A start time out of range or a setting nested too deep is INVALID_ARGUMENT with a
    ConfigError (they were INTERNAL, with an error traceback in the log)."""
    _, address = sidecar
    async with grpc.aio.insecure_channel(address) as channel:
        call = EventMeshStub(channel).Subscribe()
        await call.write(pb.SubscribeRequest(open=pb.Open(topic="t", group="g", **{field: value})))
        with anyio.fail_after(10):
            code = await call.code()
        metadata: Any = await call.trailing_metadata()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(metadata or ())["eventmesh-error"] == "ConfigError"


async def test_a_long_error_message_is_cut_so_the_client_still_gets_its_class(
    sidecar: tuple[Mesh, str],
) -> None:
    """An error that quotes a client's 200,000-character string is cut short in the
    status, so the client still reads its class (the whole text overflowed the client's
    metadata limit: RESOURCE_EXHAUSTED with no class at all)."""
    _, address = sidecar
    event = to_proto(Event(type="t", source="/s"))
    event.attributes["X" * 200_000].ce_string = "v"
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await EventMeshStub(channel).Publish(pb.PublishRequest(topic="t", event=event))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_class(refused.value) == "EventValidationError"
    assert len(refused.value.details() or "") < 3_000


async def test_a_reply_that_cannot_be_sent_over_grpc_is_a_clear_error(
    sidecar: tuple[Mesh, str],
) -> None:
    """A Request whose reply cannot be written in the protobuf format (data that is not
    JSON, from a handler in the sidecar's process) fails as a DeliveryError naming the
    reply (it was UNKNOWN, with a traceback in the log)."""
    mesh, address = sidecar

    async def answer(event: Event) -> Event:
        return Event(type="reply", source="/r", id="r-1", data=object())

    async with (
        mesh.subscribe("q", "responders", handler=answer),
        grpc.aio.insecure_channel(address) as channel,
    ):
        ask = pb.EventRequest(topic="q", event=to_proto(Event(type="ask", source="/a")), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await EventMeshStub(channel).Request(ask)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_class(refused.value) == "DeliveryError"
    assert "r-1" in (refused.value.details() or "")


async def test_a_publish_the_sidecar_does_not_answer_in_time_is_a_publish_error() -> None:
    """GrpcClient's timeout bounds a publish as HttpClient's does: into a topic that is
    full under when_full: wait, it raises PublishError once the timeout passes (it waited
    for as long as the topic stayed full)."""
    memory = {"type": "memory", "max_events": 1, "when_full": "wait"}
    async with Mesh({"connectors": {"default": memory}}) as mesh:
        server = grpc.aio.server()
        add_to_server(server, mesh)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with mesh.subscribe("full", "idle"):  # a group that reads nothing
                await mesh.publish("full", Event(type="t", source="/s"))  # now it is full
                async with GrpcClient(f"127.0.0.1:{port}", timeout=0.5) as client:
                    with anyio.fail_after(10), pytest.raises(PublishError, match=r"within 0\.5s"):
                        await client.publish("full", Event(type="t", source="/s"))
        finally:
            await server.stop(None)


async def test_a_subscribe_the_sidecar_never_confirms_is_a_subscribe_error() -> None:
    """A server that lets a Subscribe stream in and then says nothing (a stalled sidecar)
    makes the client's subscribe raise SubscribeError once its timeout passes; it waited
    for ever."""
    stalled = anyio.Event()

    async def silent(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.send_initial_metadata(())
        await stalled.wait()

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        silent,
        request_deserializer=pb.SubscribeRequest.FromString,
        response_serializer=pb.SubscribeResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("eventmesh.v1.EventMesh", {"Subscribe": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with GrpcClient(f"127.0.0.1:{port}", timeout=0.5) as client:
            with anyio.fail_after(10), pytest.raises(SubscribeError, match="did not confirm"):
                async with client.subscribe("t", "g"):
                    pass
    finally:
        stalled.set()
        await server.stop(None)
