"""The first hour with the SDK: publish returns the ids of the events it stored, and a
sidecar that is not there fails a gRPC connect as soon as it fails an HTTP one."""

from __future__ import annotations

import socket

import anyio
import pytest

import eventmesh
from eventmesh import ConnectError, Event
from eventmesh._client import Client


def _order(n: int, **attributes: str) -> Event:
    return Event(type="order", source="/shop", data=n, **attributes)


@pytest.mark.anyio
async def test_publish_returns_the_ids_of_the_events_stored_in_order(client: Client) -> None:
    """One event gives a list of its id; a list gives their ids in the order sent, the
    same ids a reader of the topic sees."""
    one = _order(0, id="first")
    assert await client.publish("orders", one) == ["first"]
    batch = [_order(n) for n in range(1, 4)]
    ids = await client.publish("orders", batch)
    assert ids == [event.id for event in batch]
    assert await client.publish("orders", ()) == []
    seen: list[str] = []
    with anyio.fail_after(10):
        async with client.subscribe("orders", "reader", start="earliest") as sub:
            async for delivery in sub:
                seen.append(delivery.event.id)
                await delivery.ack()
                if len(seen) == 4:
                    break
    assert seen == ["first", *ids]


def test_the_blocking_publish_returns_the_ids_too() -> None:
    with eventmesh.connect_blocking() as mesh:
        events = [_order(1, id="a"), _order(2, id="b")]
        assert mesh.publish("orders", events) == ["a", "b"]
        assert mesh.publish("orders", _order(3, id="c")) == ["c"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["http", "grpc"])
async def test_a_refused_connect_fails_at_once_over_both_transports(scheme: str) -> None:
    """Nothing listening: the connect and first publish raise ConnectError naming the
    address as soon as the connection is refused, well before gRPC's 10 s connect_timeout
    (the bound is generous; before, gRPC retried until the timeout)."""
    address = f"127.0.0.1:{_closed_port()}"
    with anyio.fail_after(5), pytest.raises(ConnectError, match=address) as info:
        async with eventmesh.connect(f"{scheme}://{address}") as client:
            await client.publish("orders", _order(1))
    assert "within" not in str(info.value)
