"""Review: a subscription made over the network may not name Python code.

A ``call`` transform step imports a module and calls one of its functions with each
event. From the operator's config file that is the point; from ``POST /subscriptions``
or a gRPC ``open`` it let any caller (with auth on, any principal granted ``subscribe``)
import any module on the sidecar's path and call any function in it with an event:
``sys:exit`` stopped the sidecar at the first event, ``faulthandler:_sigsegv`` would
crash the process. The API refuses such a step with 400 / INVALID_ARGUMENT naming it,
before anything is imported.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import grpc
import grpc.aio
import pytest

from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._generated.eventmesh.v1.eventmesh_pb2_grpc import EventMeshStub
from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio

FREE = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}
EVENT = {"specversion": "1.0", "id": "1", "type": "t", "source": "/s"}
UNLOADED = "colorsys"  # a standard module nothing here imports: proof that none was
EXIT = "sys:exit"


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    with anyio.fail_after(30):
        async with Sidecar({"server": FREE}) as running:
            yield running


@pytest.mark.parametrize(
    ("transform", "key"),
    [
        ([{"call": EXIT}], "transform[0].call"),
        ([{"set": {"subject": "x"}}, {"call": f"{UNLOADED}:rgb_to_hls"}], "transform[1].call"),
    ],
)
async def test_the_http_api_refuses_a_call_step(sidecar: Sidecar, transform: Any, key: str) -> None:
    """400 naming the step; nothing imported; an event published after it is served as
    ever and the sidecar keeps running."""
    loaded = UNLOADED in sys.modules
    spec = {"id": "s1", "topic": "orders", "transform": transform}
    async with aiohttp.ClientSession() as session:
        async with session.post(sidecar.http_url + "/subscriptions", json=spec) as response:
            body = await response.json(content_type=None)
            assert response.status == 400, body
            assert body["key"] == key
            assert "config file" in body["detail"]
        assert (UNLOADED in sys.modules) == loaded
        headers = {"Content-Type": "application/cloudevents+json"}
        async with session.post(
            sidecar.http_url + "/topics/orders/events", data=json.dumps(EVENT), headers=headers
        ) as response:
            assert response.status == 202
        async with session.get(sidecar.http_url + "/subscriptions/s1") as response:
            assert response.status == 404
        async with session.get(sidecar.admin_url + "/healthz") as response:
            assert response.status == 200


@pytest.mark.parametrize("transform", [[{"call": EXIT}], {"call": EXIT}])
async def test_a_grpc_open_refuses_a_call_step(sidecar: Sidecar, transform: Any) -> None:
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        call = EventMeshStub(channel).Subscribe()
        await call.write(
            pb.SubscribeRequest(
                open=pb.Open(
                    topic="orders",
                    group="g",
                    credits=10,
                    transform_json=json.dumps(transform),
                )
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "transform[0].call" in (caught.value.details() or "")
    assert not sidecar.stopping


async def test_the_config_file_may_still_name_a_call_step() -> None:
    """The operator's own subscriptions keep their Python steps."""
    config = {
        "server": FREE,
        "subscriptions": [
            {
                "name": "s",
                "topic": "orders",
                "transform": [{"call": "tests.server.test_review_code:same"}],
                "sink": {"handler": "tests.server.test_review_code:same"},
            }
        ],
    }
    with anyio.fail_after(30):
        async with Sidecar(config) as running:
            assert not running.stopping


def same(event: Any) -> Any:
    return event
