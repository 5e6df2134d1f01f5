"""gRPC requests that do not decode: INVALID_ARGUMENT, and thousands of them cost the
log a few lines, not a traceback each."""

from __future__ import annotations

import anyio
import grpc
import pytest
from adversary import Sidecar

from eventmesh._generated.eventmesh.v1 import eventmesh_pb2
from eventmesh._generated.io.cloudevents.v1 import cloudevents_pb2

pytestmark = pytest.mark.anyio

PUBLISH = "/eventmesh.v1.EventMesh/Publish"
PUBLISH_BATCH = "/eventmesh.v1.EventMesh/PublishBatch"
GARBAGE = b"\xff\xfe\x00garbage, not a protocol buffer\x07\x08"
BAD_CALLS = 2_000
LOG_GROWTH_BOUND = 8 * 1024
"""Bytes of log the bad calls may add: a few rate-limited warning lines."""


def _raw(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    """A call that sends bytes as they are and returns the answer's bytes."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


async def _code(call: grpc.aio.UnaryUnaryMultiCallable, body: bytes) -> grpc.StatusCode:
    try:
        await call(body, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", [PUBLISH, PUBLISH_BATCH])
async def test_undecodable_publish_is_invalid_argument(sidecar: Sidecar, method: str) -> None:
    """Bytes that are no PublishRequest get INVALID_ARGUMENT, not UNKNOWN or INTERNAL."""
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        assert await _code(_raw(channel, method), GARBAGE) == grpc.StatusCode.INVALID_ARGUMENT
    await sidecar.assert_serves()


async def test_empty_topic_over_grpc_is_invalid_argument(sidecar: Sidecar) -> None:
    """A publish to the empty topic name is refused as invalid (do not retry), not
    UNAVAILABLE."""
    event = cloudevents_pb2.CloudEvent(id="1", source="/a", spec_version="1.0", type="t")
    request = eventmesh_pb2.PublishRequest(topic="", event=event)
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        code = await _code(_raw(channel, PUBLISH), request.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    await sidecar.assert_serves()


async def test_thousands_of_bad_calls_write_a_few_log_lines(sidecar: Sidecar) -> None:
    """2,000 undecodable calls: each is INVALID_ARGUMENT, /healthz stays fast, and the
    sidecar's log grows by a few KB at most, with no traceback."""
    before = sidecar.log_size()
    codes: dict[grpc.StatusCode, int] = {}

    async def bad_calls(call: grpc.aio.UnaryUnaryMultiCallable, count: int) -> None:
        for _ in range(count):
            code = await _code(call, GARBAGE)
            codes[code] = codes.get(code, 0) + 1

    with sidecar.watch() as watch:
        async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
            call = _raw(channel, PUBLISH)
            async with anyio.create_task_group() as tasks:
                for _ in range(20):
                    tasks.start_soon(bad_calls, call, BAD_CALLS // 20)
    watch.check()
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT: BAD_CALLS}, codes
    added = sidecar.log_since(before)
    assert "Traceback" not in added, added[:2000]
    assert len(added.encode()) <= LOG_GROWTH_BOUND, (
        f"{BAD_CALLS} bad calls wrote {len(added.encode())} bytes of log: {added[:1000]}"
    )
    await sidecar.assert_serves()
