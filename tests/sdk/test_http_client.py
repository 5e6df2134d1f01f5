"""What only the HTTP client does: its address, its errors, and the sidecar's side of a
subscription (test_scenarios.py has the behaviour all transports share)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import anyio
import pytest

import eventmesh
from eventmesh import ConfigError, ConnectError, Event, EventTooLargeError, LifecycleError
from eventmesh.client.http import HttpClient, HttpSubscription
from eventmesh.config import HttpListener

pytestmark = pytest.mark.anyio

Sidecar = Callable[..., AbstractAsyncContextManager[HttpClient]]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that nothing listens on while the test runs: bound and held,
    never listening, so a connection to it is refused (a port bound and released could
    be taken by another process before the test connects)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


def test_connect_with_an_http_address_gives_an_http_client() -> None:
    """eventmesh.connect('http://...') returns an HttpClient on that address."""
    client = eventmesh.connect("http://127.0.0.1:10105/")
    assert isinstance(client, HttpClient)
    assert client.base_url == "http://127.0.0.1:10105"


def test_a_bad_address_is_a_config_error() -> None:
    """An address that is not http(s):// is refused when the client is made."""
    with pytest.raises(ConfigError, match="http://host:port"):
        HttpClient("127.0.0.1:10105")


async def test_no_sidecar_is_a_connect_error_that_says_what_to_do(closed_port: int) -> None:
    """With nothing listening, publish raises ConnectError naming the URL and 'eventmesh run'."""
    url = f"http://127.0.0.1:{closed_port}"
    async with HttpClient(url) as client:
        with pytest.raises(ConnectError, match="eventmesh run") as caught:
            await client.publish("orders", Event(type="t", source="/s"))
    assert url in str(caught.value)


async def test_use_before_entering_is_a_lifecycle_error() -> None:
    """A client not yet entered refuses publish and subscribe."""
    client = HttpClient("http://127.0.0.1:10105")
    with pytest.raises(LifecycleError, match="not open"):
        await client.publish("orders", Event(type="t", source="/s"))
    with pytest.raises(LifecycleError, match="not open"):
        client.subscribe("orders", "g")


async def test_problem_bodies_become_the_same_errors(http_sidecar: Sidecar) -> None:
    """The sidecar's 413 for a too large event is raised as EventTooLargeError."""
    async with http_sidecar(HttpListener(max_event_size=200)) as client:
        with pytest.raises(EventTooLargeError):
            await client.publish("orders", Event(type="t", source="/s", data="x" * 1000))


async def test_callable_filters_cannot_travel(http_sidecar: Sidecar) -> None:
    """A Python callable as filter or transform is refused with ConfigError at subscribe."""

    def keep(event: Event) -> bool:
        return True

    async with http_sidecar() as client:
        with pytest.raises(ConfigError, match="callable"):
            client.subscribe("orders", "g", filter=keep)
        with pytest.raises(ConfigError, match="callable"):
            client.subscribe("orders", "g", transform=lambda e: e)


async def test_a_subscription_lives_on_the_sidecar_until_closed(http_sidecar: Sidecar) -> None:
    """Starting creates a pull subscription with the given group and policy; closing
    deletes it."""
    async with http_sidecar() as client, aiohttp.ClientSession() as http:
        sub = await client.subscribe("orders", "billing", delivery={"max_attempts": 3})
        assert isinstance(sub, HttpSubscription)
        async with http.get(f"{client.base_url}/subscriptions/{sub.id}") as response:
            resource: dict[str, Any] = await response.json()
        assert (resource["topic"], resource["group"]) == ("orders", "billing")
        assert resource["protocol"] == "pull"
        assert resource["delivery"]["max_attempts"] == 3
        await sub.close()
        async with http.get(f"{client.base_url}/subscriptions/{sub.id}") as response:
            assert response.status == 404


async def test_a_subscription_deleted_on_the_sidecar_is_made_again(
    http_sidecar: Sidecar,
) -> None:
    """When the sidecar forgets a subscription, the client creates it again and goes on."""
    async with http_sidecar() as client, aiohttp.ClientSession() as http:
        async with client.subscribe("orders", "g", start="earliest") as sub:
            first_id = sub.id
            async with http.delete(f"{client.base_url}/subscriptions/{first_id}") as response:
                assert response.status == 204
            event = Event(type="t", source="/s")
            await client.publish("orders", event)
            with anyio.fail_after(10):
                async for delivery in sub:
                    await delivery.ack()
                    break
        assert delivery.event.id == event.id
        assert sub.id != first_id


async def test_break_and_iterate_again_loses_nothing(http_sidecar: Sidecar) -> None:
    """Deliveries fetched but not yet yielded wait for the next loop over the subscription."""
    events = [Event(type="t", source="/s") for _ in range(3)]
    async with http_sidecar() as client:
        await client.publish("orders", events)
        async with client.subscribe("orders", "g", start="earliest") as sub:
            seen = []
            with anyio.fail_after(10):
                for _ in range(3):
                    async for delivery in sub:
                        seen.append(delivery.event.id)
                        await delivery.ack()
                        break
    assert seen == [e.id for e in events]
