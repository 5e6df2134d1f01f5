"""Every event arrives as it was sent, end to end through the sidecar (issue 16): HTTP in,
webhook out byte for byte; bad JSON answered 400 and INVALID_ARGUMENT; nanosecond times
and typed extensions over gRPC both ways; header_encoding; reflection."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import grpc
import pytest
from fidelity_helpers import BODY, NANO_TIME, PUBLISH_HEADERS, SUBJECT, receiver, sidecar_config
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import eventmesh
from eventmesh import Event, EventValidationError, Mesh
from eventmesh.event import URI, Binary, JSONData, NanoTime, Timestamp, URIRef, parse_time
from eventmesh.server import _reflection
from eventmesh.server.grpc import SERVICE_NAME, add_to_server
from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio


async def post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, headers=headers, data=body) as answer,
    ):
        return answer.status, await answer.text()


async def test_http_in_webhook_out_byte_for_byte() -> None:
    """A binary JSON body reaches a binary webhook as the very bytes published, and a
    structured one inside the JSON format; the time keeps its nanoseconds."""
    async with receiver() as binary, receiver() as structured:
        sinks = {
            "bin": {"webhook": binary.url},
            "st": {"webhook": structured.url, "mode": "structured"},
        }
        async with Sidecar(sidecar_config("fid", sinks)) as sidecar:
            status, text = await post(
                f"{sidecar.http_url}/topics/fid/events", PUBLISH_HEADERS, BODY
            )
            assert status == 202, text
            await binary.wait_for(1)
            await structured.wait_for(1)
    _, headers, body = binary.requests[0]
    assert body == BODY
    assert headers["ce-time"] == NANO_TIME
    assert headers["Content-Type"] == "application/json"
    _, _, envelope = structured.requests[0]
    assert b'"data":' + BODY + b"}" in envelope
    assert f'"time":"{NANO_TIME}"'.encode() in envelope


async def test_body_that_is_not_json_is_refused_over_http_and_grpc() -> None:
    """A body that is not JSON under a JSON content type is 400 over HTTP, naming data,
    and INVALID_ARGUMENT over gRPC; nothing is stored."""
    async with receiver() as sink:
        config = sidecar_config("bad", {"s": {"webhook": sink.url}})
        async with Sidecar(config) as sidecar:
            status, text = await post(
                f"{sidecar.http_url}/topics/bad/events", PUBLISH_HEADERS, b"hello, not json"
            )
            assert status == 400
            assert "not JSON" in text
            assert "data" in text
            async with eventmesh.connect(f"grpc://{sidecar.grpc_target}") as client:
                bad = Event(
                    type="t",
                    source="/s",
                    datacontenttype="application/json",
                    data=JSONData(b"hello, not json"),
                )
                with pytest.raises(EventValidationError, match="not JSON"):
                    await client.publish("bad", bad)
                await client.publish("bad", Event(type="t", source="/s", id="good", data=1))
            await sink.wait_for(1)
    assert [headers["ce-id"] for _, headers, _ in sink.requests] == ["good"]


async def test_header_encoding_raw_and_spec() -> None:
    """header_encoding raw sends the subject as UTF-8 text; spec percent-encodes it."""
    async with receiver() as raw, receiver() as spec:
        sinks = {
            "raw": {"webhook": raw.url, "header_encoding": "raw"},
            "spec": {"webhook": spec.url},
        }
        async with Sidecar(sidecar_config("enc", sinks)) as sidecar:
            status, text = await post(
                f"{sidecar.http_url}/topics/enc/events", PUBLISH_HEADERS, BODY
            )
            assert status == 202, text
            await raw.wait_for(1)
            await spec.wait_for(1)
    assert raw.header(0, "ce-subject") == SUBJECT.encode("utf-8")
    assert spec.header(0, "ce-subject") == b"orders/42%20%C3%BCn%C3%AF"
    assert raw.header(0, "ce-source") == spec.header(0, "ce-source") == b"/fidelity"


TYPED: dict[str, Any] = {
    "link": URI("https://example.com/a"),
    "ref": URIRef("../b"),
    "seen": Timestamp("2024-05-01T12:00:00.000000007Z"),
    "blob": Binary.of(b"\x00\xff"),
    "plain": "text",
}


async def test_grpc_keeps_typed_extensions_and_nanoseconds_both_ways() -> None:
    """Published over gRPC with typed extensions and a nanosecond time, an event comes
    back on a gRPC subscription with the same kinds and the same nanoseconds; one
    published over HTTP comes out over gRPC with its nanoseconds and data bytes."""
    event = Event(
        type="t",
        source="/s",
        id="typed",
        time=parse_time(NANO_TIME),
        extensions=TYPED,
        data={"a": 1},
    )
    got: list[Event] = []
    async with (
        Sidecar(sidecar_config("typed", {})) as sidecar,
        eventmesh.connect(f"grpc://{sidecar.grpc_target}") as client,
    ):
        await client.publish("typed", event)
        status, text = await post(f"{sidecar.http_url}/topics/typed/events", PUBLISH_HEADERS, BODY)
        assert status == 202, text
        with anyio.fail_after(30):
            async with client.subscribe("typed", "reader", start="earliest") as sub:
                async for delivery in sub:
                    got.append(delivery.event)
                    await delivery.ack()
                    if len(got) == 2:
                        break
    by_id = {e.id: e for e in got}
    typed = by_id["typed"]
    assert {name: type(value) for name, value in typed.extensions.items()} == {
        "link": URI,
        "ref": URIRef,
        "seen": Timestamp,
        "blob": Binary,
        "plain": str,
    }
    assert typed.extensions == TYPED
    assert isinstance(typed.time, NanoTime)
    assert typed.time.nanosecond == 123456789
    from_http = by_id["fid-1"]
    assert isinstance(from_http.time, NanoTime)
    assert from_http.time.nanosecond == 123456789
    assert from_http.subject == SUBJECT
    assert eventmesh.bindings.http.to_binary(from_http)[1] == BODY


async def test_reflection_lists_every_registered_service() -> None:
    """grpcurl-style reflection lists the sidecar's services (and itself), and each one
    it lists can be described from the server alone."""
    async with Sidecar(sidecar_config("r", {})) as sidecar:
        async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
            await channel.channel_ready()
        with grpc.insecure_channel(sidecar.grpc_target) as sync_channel:
            database = ProtoReflectionDescriptorDatabase(sync_channel)
            services = await anyio.to_thread.run_sync(database.get_services)
            assert SERVICE_NAME in services
            assert "grpc.reflection.v1alpha.ServerReflection" in services
            for name in services:
                found = await anyio.to_thread.run_sync(database.FindFileContainingSymbol, name)
                assert found.name.endswith(".proto")


async def test_reflection_follows_what_is_registered() -> None:
    """A service registered after recording began is reflected with no list to update;
    one whose descriptor is not loaded is left out."""
    server = grpc.aio.server()
    names = _reflection.recording(server)
    handler = grpc.method_handlers_generic_handler("not.loaded.Service", {})
    server.add_generic_rpc_handlers((handler,))
    async with Mesh() as mesh:
        add_to_server(server, mesh)
    assert names == ["not.loaded.Service", SERVICE_NAME]
    served = _reflection.enable(server, names)
    assert served == [SERVICE_NAME, "grpc.reflection.v1alpha.ServerReflection"]
