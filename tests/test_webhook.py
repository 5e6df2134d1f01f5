"""Webhook sinks: HTTP push in three modes, Knative's retry rules, replies, the allow-list."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import TracebackType
from typing import Any

import anyio
import pytest
from aiohttp import web
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http_event,
    to_binary_event,
    to_structured_event,
)
from cloudevents.core.v1.event import CloudEvent

from eventmesh import ConfigError, Event, Mesh
from eventmesh.delivery.webhook import WebhookSession, WebhookSink, retry_after_seconds
from eventmesh.errors import ClosedError, DeliveryError
from eventmesh.testing.polling import eventually

pytestmark = pytest.mark.anyio

FAST = {"max_attempts": 3, "backoff": {"initial": "1ms", "max": "10ms"}}

Respond = Callable[[web.Request, int], Awaitable[web.StreamResponse]]
"""How a receiver answers request number n (from 1)."""


@dataclass
class Seen:
    """One request as the receiver got it."""

    headers: dict[str, str]
    body: bytes
    at: float
    port: int


async def no_content(request: web.Request, n: int) -> web.StreamResponse:
    """Accept everything with 204."""
    return web.Response(status=204)


class Receiver:
    """A real aiohttp server on 127.0.0.1 that records each request and answers it."""

    def __init__(self, respond: Respond = no_content) -> None:
        self.respond = respond
        self.requests: list[Seen] = []
        self.active = 0
        self.most_active = 0
        self.release = anyio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release.set()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        assert request.transport is not None
        peer = request.transport.get_extra_info("peername")
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(Seen(headers, body, time.monotonic(), peer[1]))
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            return await self.respond(request, len(self.requests))
        finally:
            self.active -= 1


def statuses(*codes: int, headers: dict[str, str] | None = None) -> Respond:
    """Answer request n with codes[n-1] (and a short body), then 204 for ever."""

    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        if n <= len(codes):
            return web.Response(status=codes[n - 1], text="no such customer", headers=headers)
        return web.Response(status=204)

    return respond


def configured(url: str, *, sink: Any = None, delivery: Any = None, **top: Any) -> Mesh:
    """An in-memory mesh with one configured webhook subscription on topic 'orders'."""
    sub: dict[str, Any] = {
        "name": "push",
        "topic": "orders",
        "sink": {"webhook": url, **(sink or {})},
        "delivery": {**FAST, **(delivery or {})},
    }
    if "reply_to" in top:
        sub["reply_to"] = top.pop("reply_to")
    return Mesh({"subscriptions": [sub], **top})


async def read(mesh: Mesh, topic: str, count: int = 1) -> list[Event]:
    """The first ``count`` events stored on ``topic``."""
    found: list[Event] = []
    with anyio.fail_after(10):
        async with mesh.subscribe(topic, "test-reader", start="earliest") as sub:
            async for delivery in sub:
                found.append(delivery.event)
                await delivery.ack()
                if len(found) == count:
                    break
    return found


def order(n: int = 1) -> Event:
    """A JSON event with every optional attribute and a string extension."""
    return Event(
        type="com.example.order.created",
        source="/shop",
        subject=f"order-{n}",
        datacontenttype="application/json",
        data={"id": n, "items": ["a", "b"]},
        extensions={"region": "eu"},
    )


# -- content modes ----------------------------------------------------------------------


async def test_binary_delivery_reads_back_as_the_same_event_with_the_sdk() -> None:
    """Binary mode: the SDK reads the request as the very event published, extra headers
    and all."""
    async with Receiver() as receiver:
        mesh = configured(receiver.url, sink={"headers": {"Authorization": "Bearer s3cret"}})
        async with mesh:
            event = order()
            await mesh.publish("orders", event)
            await eventually(lambda: len(receiver.requests) == 1)
    seen = receiver.requests[0]
    assert seen.headers["ce-id"] == event.id
    assert seen.headers["authorization"] == "Bearer s3cret"
    sdk = from_http_event(HTTPMessage(headers=seen.headers, body=seen.body))
    assert Event.from_cloudevent(sdk) == event


async def test_structured_mode_posts_the_json_event_format() -> None:
    """Structured mode: one application/cloudevents+json body the SDK reads back."""
    async with (
        Receiver() as receiver,
        configured(receiver.url, sink={"mode": "structured"}) as mesh,
    ):
        event = order()
        await mesh.publish("orders", event)
        await eventually(lambda: len(receiver.requests) == 1)
    seen = receiver.requests[0]
    assert seen.headers["content-type"].startswith("application/cloudevents+json")
    assert not any(name.startswith("ce-") for name in seen.headers)
    sdk = from_http_event(HTTPMessage(headers=seen.headers, body=seen.body))
    assert Event.from_cloudevent(sdk) == event


async def test_batch_mode_gathers_concurrent_events_into_one_request() -> None:
    """Batch mode: events in flight together go as one cloudevents-batch+json request."""
    sink = {"mode": "batch", "max_batch": 10, "batch_window": "5s"}
    async with (
        Receiver() as receiver,
        configured(receiver.url, sink=sink, delivery={"concurrency": 10}) as mesh,
    ):
        events = [order(n) for n in range(10)]
        await mesh.publish("orders", events)
        await eventually(lambda: mesh.subscriptions[0].stats.delivered == 10)
    assert len(receiver.requests) == 1
    seen = receiver.requests[0]
    assert seen.headers["content-type"].startswith("application/cloudevents-batch+json")
    assert sorted(e["id"] for e in json.loads(seen.body)) == sorted(e.id for e in events)


async def test_a_refused_batch_dead_letters_every_event_in_it() -> None:
    """Every caller of a batch gets its outcome: a 400 dead-letters all of them at once."""
    sink = {"mode": "batch", "max_batch": 4, "batch_window": "5s"}
    async with (
        Receiver(statuses(*[400] * 10)) as receiver,
        configured(receiver.url, sink=sink, delivery={"concurrency": 4}) as mesh,
    ):
        events = [order(n) for n in range(4)]
        await mesh.publish("orders", events)
        dead = await read(mesh, "orders.dlq", 4)
    assert len(receiver.requests) == 1
    assert sorted(e.id for e in dead) == sorted(e.id for e in events)
    assert {e.extensions["deadletterattempts"] for e in dead} == {1}


# -- retries and dead letters -----------------------------------------------------------


async def test_each_retryable_status_is_retried_until_the_event_is_delivered() -> None:
    """404, 408, 409, 429 and 5xx are retried; the 204 after them delivers the event."""
    codes = (404, 408, 409, 429, 500, 502, 503, 504)
    async with (
        Receiver(statuses(*codes)) as receiver,
        configured(receiver.url, delivery={"max_attempts": 20}) as mesh,
    ):
        await mesh.publish("orders", order())
        sub = mesh.subscriptions[0]
        await eventually(lambda: sub.stats.delivered == 1)
    assert len(receiver.requests) == len(codes) + 1
    assert sub.stats.retried == len(codes)
    assert sub.stats.dead_lettered == 0


async def test_retry_after_in_seconds_is_waited_for() -> None:
    """A 503 with Retry-After: 1 is retried no sooner than a second later."""
    respond = statuses(503, headers={"Retry-After": "1"})
    async with (
        Receiver(respond) as receiver,
        configured(receiver.url, delivery={"backoff": {"initial": "1ms"}}) as mesh,
    ):
        await mesh.publish("orders", order())
        await eventually(lambda: mesh.subscriptions[0].stats.delivered == 1)
    first, second = receiver.requests
    assert second.at - first.at >= 1.0 - 0.05


async def test_retry_after_as_an_http_date_is_read_into_seconds() -> None:
    """A 429 with an HTTP-date Retry-After raises a retryable error with those seconds."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    async with (
        Receiver(statuses(429, headers={"Retry-After": when})) as receiver,
        WebhookSession() as session,
    ):
        with pytest.raises(DeliveryError) as info:
            await WebhookSink(receiver.url, session=session)(order())
    assert info.value.retryable
    assert info.value.retry_after is not None
    assert 28 <= info.value.retry_after <= 30.5


def test_retry_after_values() -> None:
    """Seconds, HTTP-dates (a past one is 0) and unreadable values (None)."""
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now=now) == 120.0
    assert retry_after_seconds("Wed, 01 May 2024 12:00:07 GMT", now=now) == 7.0
    assert retry_after_seconds("Wed, 01 May 2024 11:00:00 GMT", now=now) == 0.0
    assert retry_after_seconds("soon", now=now) is None
    assert retry_after_seconds(None) is None
    # Hostile values a receiver may send are unreadable too, never an exception.
    assert retry_after_seconds("²", now=now) is None  # str.isdigit() takes it
    assert retry_after_seconds("Mon, 01 Jan 2020 00:00:00 +99999999999999999999", now=now) is None


@pytest.mark.parametrize("status", [400, 403, 410])
async def test_other_client_errors_dead_letter_at_once(status: int) -> None:
    """A 4xx outside the retry list dead-letters after one attempt, saying why and where."""
    async with (
        Receiver(statuses(status)) as receiver,
        configured(receiver.url, delivery={"max_attempts": 5}) as mesh,
    ):
        event = order()
        await mesh.publish("orders", event)
        (dead,) = await read(mesh, "orders.dlq")
    assert len(receiver.requests) == 1
    assert dead.id == event.id
    assert dead.extensions["deadletterreason"] == "failed"
    assert dead.extensions["deadletterattempts"] == 1
    assert dead.extensions["deadlettertopic"] == "orders"
    assert dead.extensions["deadlettergroup"] == "push"
    error = str(dead.extensions["deadlettererror"])
    assert error.startswith("DeliveryError: ")
    assert f"answered {status}" in error
    assert receiver.url in error
    assert "no such customer" in error


async def test_attempts_used_up_dead_letter_the_event() -> None:
    """A sink that keeps answering 500 gets max_attempts tries, then the dead letter."""
    async with (
        Receiver(statuses(*[500] * 10)) as receiver,
        configured(receiver.url, delivery={"max_attempts": 3}) as mesh,
    ):
        await mesh.publish("orders", order())
        (dead,) = await read(mesh, "orders.dlq")
    assert len(receiver.requests) == 3
    assert dead.extensions["deadletterattempts"] == 3
    assert "answered 500" in str(dead.extensions["deadlettererror"])


async def test_an_attempt_that_takes_too_long_times_out_and_is_retried() -> None:
    """A receiver slower than the sink's timeout fails each attempt with a timeout."""
    receiver = Receiver()

    async def stall(request: web.Request, n: int) -> web.StreamResponse:
        await receiver.release.wait()
        return web.Response(status=204)

    receiver.respond = stall
    async with receiver:
        sink = {"timeout": "1s"}
        async with configured(receiver.url, sink=sink, delivery={"max_attempts": 2}) as mesh:
            await mesh.publish("orders", order())
            (dead,) = await read(mesh, "orders.dlq")
    assert len(receiver.requests) == 2
    assert dead.extensions["deadletterattempts"] == 2
    assert "timed out after 1s" in str(dead.extensions["deadlettererror"])


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        *[(status, True) for status in (404, 408, 409, 429, 500, 599)],
        *[(status, False) for status in (301, 400, 401, 413, 422)],
    ],
)
async def test_status_table(status: int, retryable: bool) -> None:
    """Each non-2xx status raises DeliveryError, retryable exactly as Knative retries."""
    headers = {"Location": "http://127.0.0.1:1/elsewhere"} if status == 301 else None
    async with Receiver(statuses(status, headers=headers)) as receiver, WebhookSession() as session:
        with pytest.raises(DeliveryError) as info:
            await WebhookSink(receiver.url, session=session)(order())
    assert info.value.retryable is retryable
    assert len(receiver.requests) == 1  # a redirect is not followed


async def test_a_refused_connection_is_retryable() -> None:
    """Nothing listening is a connection error, retried."""
    async with Receiver() as receiver:
        url = receiver.url
    async with WebhookSession() as session:
        with pytest.raises(DeliveryError, match="failed") as info:
            await WebhookSink(url, session=session)(order())
    assert info.value.retryable


# -- replies ----------------------------------------------------------------------------


@pytest.mark.parametrize("encode", [to_binary_event, to_structured_event])
async def test_a_200_with_a_cloudevent_is_published_to_reply_to(
    encode: Callable[[CloudEvent], HTTPMessage],
) -> None:
    """A 200 answer carrying a CloudEvent (binary or structured) lands on reply_to."""
    reply = CloudEvent(
        attributes={
            "id": "r-1",
            "source": "/billing",
            "type": "com.example.order.charged",
            "specversion": "1.0",
            "datacontenttype": "application/json",
        },
        data={"charged": True},
    )
    message = encode(reply)

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=200, body=message.body, headers=message.headers)

    async with (
        Receiver(answer) as receiver,
        configured(receiver.url, reply_to="orders.charged") as mesh,
    ):
        await mesh.publish("orders", order())
        (published,) = await read(mesh, "orders.charged")
    assert published.id == "r-1"
    assert published.type == "com.example.order.charged"
    assert published.source == "/billing"
    assert published.data == {"charged": True}


@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (200, "application/json", b'{"ok": true}'),
        (200, "text/plain", b"thanks"),
        (204, None, b""),
        (
            202,
            "application/cloudevents+json",
            b'{"specversion":"1.0","id":"x","source":"/s","type":"t"}',
        ),
    ],
)
async def test_answers_that_are_not_a_cloudevent_reply_give_no_reply(
    status: int, content_type: str | None, body: bytes
) -> None:
    """A non-event body, a 204, and any event on a 202 are no reply."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        headers = {"Content-Type": content_type} if content_type else None
        return web.Response(status=status, body=body, headers=headers)

    async with Receiver(answer) as receiver, WebhookSession() as session:
        assert await WebhookSink(receiver.url, session=session)(order()) == []


# -- the allow-list ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://10.255.255.1:9/hook", "http://[::ffff:10.255.255.1]:9/hook", "http://2130706433/"],
)
async def test_a_literal_ip_outside_the_allowed_networks_is_refused_unconnected(url: str) -> None:
    """A literal IP outside the list (or in a legacy form) fails at once, not retried, with
    no connection attempt (which would wait out the 60 s timeout)."""
    async with WebhookSession() as session:
        with anyio.fail_after(5), pytest.raises(DeliveryError, match="refused") as info:
            await WebhookSink(url, session=session, timeout=60)(order())
        assert not info.value.retryable
        with pytest.raises(ConfigError, match="refused"):
            await session.check_url(url)


async def test_a_name_that_resolves_outside_the_allowed_networks_is_refused() -> None:
    """'localhost' is refused when loopback is not allowed: the check is after DNS."""
    async with Receiver() as receiver:
        url = f"http://localhost:{receiver.port}/events"
        async with WebhookSession(allowed_networks=["192.0.2.0/24"]) as session:
            with pytest.raises(DeliveryError, match=r"resolves to 127\.0\.0\.1") as info:
                await WebhookSink(url, session=session)(order())
            assert not info.value.retryable
            with pytest.raises(ConfigError, match="outside the allowed networks"):
                await session.check_url(url)
    assert receiver.requests == []


async def test_loopback_is_allowed_by_default_and_named_hosts_whatever_they_resolve_to() -> None:
    """The default list lets loopback in; allowed_hosts trusts a host by its name."""
    async with Receiver() as receiver:
        url = f"http://localhost:{receiver.port}/events"
        async with WebhookSession() as session:
            await session.check_url(url)
            assert await WebhookSink(url, session=session)(order()) == []
        trusted = WebhookSession(allowed_networks=["192.0.2.0/24"], allowed_hosts=["LOCALHOST"])
        async with trusted:
            await trusted.check_url(url)
            assert await WebhookSink(url, session=trusted)(order()) == []
    assert len(receiver.requests) == 2


async def test_check_url_refuses_what_is_not_a_reachable_http_url() -> None:
    """A non-HTTP scheme and a name that does not resolve are ConfigErrors."""
    async with WebhookSession() as session:
        with pytest.raises(ConfigError, match="http"):
            await session.check_url("ftp://127.0.0.1/x")
        with pytest.raises(ConfigError, match="cannot be resolved"):
            await session.check_url("http://no-such-host.invalid/x")


async def test_hosts_named_in_the_config_are_trusted_and_others_are_not() -> None:
    """A configured sink reaches its host outside the networks; an API URL may not."""
    webhook = {"allowed_networks": ["192.0.2.0/24"]}
    async with Receiver() as receiver:
        mesh = configured(receiver.url, server={"webhook": webhook})
        async with mesh:
            await mesh.publish("orders", order())
            await eventually(lambda: mesh.subscriptions[0].stats.delivered == 1)
            await mesh.webhooks.check_url(receiver.url)
            with pytest.raises(ConfigError, match="outside the allowed networks"):
                await mesh.webhooks.check_url(f"http://localhost:{receiver.port}/")


async def test_a_bad_network_in_the_config_is_a_config_error_naming_its_key() -> None:
    """allowed_networks entries must be CIDR networks, checked when the config loads."""
    with pytest.raises(ConfigError) as info:
        configured("http://127.0.0.1:1/", server={"webhook": {"allowed_networks": ["lan"]}})
    assert info.value.key == "server.webhook.allowed_networks[0]"


# -- connections ------------------------------------------------------------------------


async def slow(request: web.Request, n: int) -> web.StreamResponse:
    """Take a little while, so requests overlap."""
    await anyio.sleep(0.02)
    return web.Response(status=204)


async def test_deliveries_reuse_keep_alive_connections() -> None:
    """Forty deliveries over four lanes use at most four connections."""
    async with (
        Receiver(slow) as receiver,
        configured(receiver.url, delivery={"concurrency": 4}) as mesh,
    ):
        await mesh.publish("orders", [order(n) for n in range(40)])
        await eventually(lambda: mesh.subscriptions[0].stats.delivered == 40)
    assert len(receiver.requests) == 40
    assert len({seen.port for seen in receiver.requests}) <= 4


async def test_requests_in_flight_never_exceed_the_subscription_concurrency() -> None:
    """The receiver never sees more requests at once than delivery.concurrency."""
    async with (
        Receiver(slow) as receiver,
        configured(receiver.url, delivery={"concurrency": 3}) as mesh,
    ):
        await mesh.publish("orders", [order(n) for n in range(30)])
        await eventually(lambda: mesh.subscriptions[0].stats.delivered == 30)
    assert 1 < receiver.most_active <= 3


async def test_max_connections_caps_the_pool() -> None:
    """server.webhook.max_connections: 1 puts every request on one connection in turn."""
    webhook = {"max_connections": 1}
    async with Receiver(slow) as receiver:
        mesh = configured(receiver.url, delivery={"concurrency": 4}, server={"webhook": webhook})
        async with mesh:
            await mesh.publish("orders", [order(n) for n in range(12)])
            await eventually(lambda: mesh.subscriptions[0].stats.delivered == 12)
    assert receiver.most_active == 1
    assert len({seen.port for seen in receiver.requests}) == 1


async def test_a_receiver_that_hangs_cannot_starve_another_sinks_webhooks() -> None:
    """With every pooled connection held by requests to a receiver that never answers,
    a request for another sink waits for a connection without it counting against its
    own timeout, and the first connection freed goes to it (the sink holding fewer)
    rather than to the hanging sink's next request. Before, it waited in aiohttp's queue
    until its own timeout and failed as "POST <healthy receiver> timed out"."""

    async def hang(request: web.Request, n: int) -> web.StreamResponse:
        await anyio.sleep(30)
        return web.Response(status=204)

    async with (
        Receiver(hang) as hanging,
        Receiver() as healthy,
        WebhookSession(max_connections=2) as session,
    ):
        stuck = WebhookSink(hanging.url, session=session, timeout=0.5)
        fine = WebhookSink(healthy.url, session=session, timeout=0.5)
        failures: list[DeliveryError] = []

        async def keep_hanging() -> None:
            while True:  # the hanging sink's retries, as fast as it can make them
                try:
                    await stuck(order())
                except DeliveryError as exc:
                    failures.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(keep_hanging)
            await eventually(lambda: hanging.active == 2)
            with anyio.fail_after(5):
                assert await fine(order()) == []
            tg.cancel_scope.cancel()
    assert len(healthy.requests) == 1
    assert failures, "the hanging receiver's requests time out"
    assert all(hanging.url.split("//")[1] in str(exc) for exc in failures)


async def test_a_freed_slot_goes_to_the_waiting_sink_that_holds_the_fewest() -> None:
    """The pool's fairness on its own: a freed slot goes to the waiting sink holding the
    fewest, and among equals to the one that began waiting first."""
    from eventmesh.delivery.webhook import _Slots

    slots = _Slots(3)
    for owner in ("a", "a", "b"):
        await slots.acquire(owner)
    served: list[str] = []

    async def wait(owner: str) -> None:
        await slots.acquire(owner)
        served.append(owner)

    async with anyio.create_task_group() as tg:
        for owner in ("b", "a", "c"):
            tg.start_soon(wait, owner)
            await anyio.wait_all_tasks_blocked()
        assert slots.waiting == 3
        slots.release("a")  # a holds 1, b 1, c 0: to c
        await anyio.wait_all_tasks_blocked()
        slots.release("c")  # a and b wait, holding 1 each: b began waiting first
        await anyio.wait_all_tasks_blocked()
        slots.release("b")  # a waits alone
        await anyio.wait_all_tasks_blocked()
    assert served == ["c", "b", "a"]
    assert (slots.held("a"), slots.held("b"), slots.held("c"), slots.waiting) == (2, 1, 0, 0)


async def test_a_sink_whose_receiver_hangs_cannot_hold_every_connection() -> None:
    """A sink with more requests than the pool has connections, to a receiver that never
    answers and a timeout of an hour, holds at most three quarters of the pool: another
    sink's webhook is delivered at once rather than after that hour. Before, the first
    sink took every connection and the other waited for its timeout."""

    async def hang(request: web.Request, n: int) -> web.StreamResponse:
        await hanging.release.wait()  # set when the receiver closes
        return web.Response(status=204)

    async with (
        Receiver(hang) as hanging,
        Receiver() as healthy,
        WebhookSession(max_connections=4) as session,
    ):
        stuck = WebhookSink(hanging.url, session=session, timeout=3600)
        fine = WebhookSink(healthy.url, session=session, timeout=3600)
        async with anyio.create_task_group() as tg:
            for _ in range(8):  # a concurrency of 8 against a pool of 4
                tg.start_soon(stuck, order())
            await eventually(lambda: session.slots.waiting == 5)
            assert (hanging.active, session.slots.held(stuck.destination)) == (3, 3)
            with anyio.fail_after(10):  # a bound: it is answered at once
                assert await fine(order()) == []
            assert session.slots.held(stuck.destination) == 3
            tg.cancel_scope.cancel()
    assert len(healthy.requests) == 1
    assert (session.slots.held(stuck.destination), session.slots.waiting) == (0, 0)


async def test_subscriptions_to_one_hung_receiver_share_its_part_of_the_pool() -> None:
    """The cap is the receiver's, not each sink's: two sinks to one receiver that hangs
    (two subscriptions to the same endpoint) hold three quarters of the pool between
    them, and a third sink's webhook to a healthy receiver is delivered at once. Capped
    per sink, the two held 3 + 1 of 4 and the third waited for their hour."""

    async def hang(request: web.Request, n: int) -> web.StreamResponse:
        await hanging.release.wait()
        return web.Response(status=204)

    async with (
        Receiver(hang) as hanging,
        Receiver() as healthy,
        WebhookSession(max_connections=4) as session,
    ):
        first = WebhookSink(hanging.url, session=session, timeout=3600)
        second = WebhookSink(hanging.url + "?again", session=session, timeout=3600)
        fine = WebhookSink(healthy.url, session=session, timeout=3600)
        async with anyio.create_task_group() as tg:
            for sink in (first, second) * 4:
                tg.start_soon(sink, order())
            await eventually(lambda: session.slots.waiting >= 4)
            assert hanging.active == 3  # not 4: the two share one part
            with anyio.fail_after(10):  # a bound: it is answered at once
                assert await fine(order()) == []
            tg.cancel_scope.cancel()
    assert len(healthy.requests) == 1
    assert first.destination == second.destination != fine.destination


async def test_a_sink_at_its_most_waits_while_a_slot_is_free_for_others() -> None:
    """The pool's cap on its own: a sink holding three quarters of the slots waits even
    though one is free, another sink takes that one at once, and a slot the first gives
    back goes to its own waiting request."""
    from eventmesh.delivery.webhook import _Slots

    slots = _Slots(4)
    assert slots.most == 3
    for _ in range(3):
        await slots.acquire("a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(slots.acquire, "a")
        await anyio.wait_all_tasks_blocked()
        assert (slots.held("a"), slots.waiting) == (3, 1)
        with anyio.fail_after(1):
            await slots.acquire("b")  # the free slot is b's at once
        slots.release("b")  # a is still at its most: the slot stays free
        assert (slots.held("a"), slots.held("b"), slots.waiting) == (3, 0, 1)
        slots.release("a")  # a comes below its most: its waiting request takes the slot
        await anyio.wait_all_tasks_blocked()
    assert (slots.held("a"), slots.waiting) == (3, 0)
    assert [_Slots(n).most for n in (1, 2, 3, 4, 8, 100)] == [1, 2, 3, 3, 6, 75]


async def test_a_slot_handed_to_a_request_cancelled_meanwhile_is_passed_on() -> None:
    """A waiting request that is cancelled and handed a slot before it runs again gives
    the slot back: the pool does not shrink by one for each such request."""
    from eventmesh.delivery.webhook import _Slots

    slots = _Slots(1)
    await slots.acquire("a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(slots.acquire, "b")
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()  # b's wait is cancelled, and before b runs again...
        slots.release("a")  # ...the slot is handed to it
    assert (slots.held("a"), slots.held("b"), slots.waiting) == (0, 0, 0)
    with anyio.fail_after(1):
        await slots.acquire("c")  # the slot is free again


# -- lifecycle --------------------------------------------------------------------------


async def test_the_mesh_session_serves_api_subscriptions_and_closes_with_the_mesh() -> None:
    """Mesh.webhooks is made on first use when no webhook is configured, and closed with
    the mesh; a sink on it then raises ClosedError."""
    async with Receiver() as receiver:
        async with Mesh() as mesh:
            session = mesh.webhooks
            assert mesh.webhooks is session
            await session.check_url(receiver.url)
            sink = WebhookSink(receiver.url, session=session)
            async with mesh.subscribe("orders", "api", handler=sink) as sub:
                await mesh.publish("orders", order())
                await eventually(lambda: sub.stats.delivered == 1)
        assert session.closed
        with pytest.raises(ClosedError):
            _ = mesh.webhooks
        with pytest.raises(ClosedError):
            await sink(order())
    assert len(receiver.requests) == 1


async def test_a_bad_sink_setting_is_a_config_error_naming_the_subscription() -> None:
    """A webhook sink with a zero timeout is refused when the config loads, naming its key."""
    with pytest.raises(ConfigError, match=r"above 0s") as info:
        configured("http://127.0.0.1:1/", sink={"timeout": 0})
    assert info.value.key == "subscriptions[0].sink.timeout"


async def test_only_the_last_attempt_says_it_was_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Earlier attempts log when they retry; the dead letter's error and the final record
    say where the event went and after how many attempts, never "retrying"."""
    caplog.set_level(logging.DEBUG, logger="eventmesh.delivery")
    async with (
        Receiver(statuses(*[503] * 10)) as receiver,
        configured(receiver.url, delivery={"max_attempts": 2}) as mesh,
    ):
        await mesh.publish("orders", order())
        (dead,) = await read(mesh, "orders.dlq")
    error = str(dead.extensions["deadlettererror"])
    assert "answered 503" in error
    assert "retrying" not in error
    messages = [r.getMessage() for r in caplog.records if dead.id in r.getMessage()]
    retries = [m for m in messages if "retrying in" in m]
    assert len(retries) == 1
    assert "attempt 1 of event" in retries[0]
    (final,) = [m for m in messages if "dead-lettered" in m]
    assert "to orders.dlq after 2 attempts, not retrying" in final
    assert "retrying" not in final.replace("not retrying", "")


# -- what is shown ----------------------------------------------------------------------

TOKEN = "S3CRET-T0KEN-42"


async def test_a_user_name_alone_in_the_url_is_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """http://TOKEN@host/ carries a credential in the user name alone (aiohttp sends it as
    Basic auth): the dead letter's deadlettererror, the log lines, a connection error and
    the sink's repr show it as ***@host, as redact_url does. Before, only a password was
    masked and the token was shown in each of them."""
    caplog.set_level(logging.DEBUG, logger="eventmesh")
    async with Receiver(statuses(503, 503)) as receiver:
        url = receiver.url.replace("http://", f"http://{TOKEN}@") + "?key=k"
        async with configured(url, delivery={"max_attempts": 2}) as mesh:
            await mesh.publish("orders", order())
            (dead,) = await read(mesh, "orders.dlq")
        async with WebhookSession() as session:
            sink = WebhookSink(url, session=session)
            shown = repr(sink)
        closed = WebhookSink(
            f"http://{TOKEN}@127.0.0.1:{receiver.port}/gone", session=WebhookSession()
        )
    with pytest.raises(DeliveryError) as caught:
        await closed(order())  # the receiver is gone: a connection error
    await closed.session.close()
    error = str(dead.extensions["deadlettererror"])
    assert f"POST http://***@127.0.0.1:{receiver.port}/events?... answered 503" in error
    assert f"http://***@127.0.0.1:{receiver.port}/events" in shown
    assert f"POST http://***@127.0.0.1:{receiver.port}/gone failed" in str(caught.value)
    assert receiver.requests[0].headers["authorization"].startswith("Basic ")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "***@127.0.0.1" in logged
    for text in (error, shown, str(caught.value), logged):
        assert TOKEN not in text
