"""The remote client: the embedded mesh's API over the sidecar's HTTP API.

``HttpClient`` is what ``eventmesh.connect("http://127.0.0.1:10105")`` returns. A
subscription is a ``pull`` subscription on the sidecar, where its filter, transform and
delivery policy run; this client long-polls for deliveries, acks or nacks them by id,
and DELETEs the subscription when it closes. Handlers run here, in a task group the
client owns. See docs/sdk.md, 'Remote clients'.

Design: that pull subscription is a :class:`~eventmesh.connectors.base.Consumer`
(:mod:`eventmesh.client._pull`) under the same :class:`~eventmesh.subscription.Subscription`
and dispatcher an embedded mesh uses.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit

import aiohttp
import anyio
import anyio.abc
import anyio.to_thread
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from eventmesh._requests import check_wait, send_replies
from eventmesh._status import NotFoundError, error_from_problem
from eventmesh.bindings._common import encode_attribute
from eventmesh.bindings.http import to_batch, to_structured
from eventmesh.client._remote import bearer, check_tls_files, ssl_context, warn_clear_text
from eventmesh.client.base import Client
from eventmesh.config import convert
from eventmesh.connectors.base import Delivery as ConnectorDelivery
from eventmesh.connectors.base import StartPosition
from eventmesh.deadletters import DeadLetters
from eventmesh.delivery.deadletter import describe_error
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.delivery.stats import DeliveryStats
from eventmesh.errors import (
    ClosedError,
    ConfigError,
    ConnectError,
    DeliveryError,
    EventMeshError,
    EventValidationError,
    LifecycleError,
    PublishError,
    SubscribeError,
)
from eventmesh.event import Event, decode_json
from eventmesh.subscription import Delivery, Handler, Subscription
from eventmesh.typing import Sink

__all__ = ["HttpClient", "HttpSubscription"]

log = logging.getLogger(__name__)

_WAIT = 5
"""Seconds one long poll waits on the sidecar; closing the subscription cuts it short."""


class _Pulled(msgspec.Struct, frozen=True):
    delivery_id: str
    attempt: int
    event: msgspec.Raw


class _Pull(msgspec.Struct, frozen=True):
    deliveries: list[_Pulled]


class _Created(msgspec.Struct):
    id: str


_decode_pull = msgspec.json.Decoder(_Pull).decode


class HttpClient(Client):
    """Publish and subscribe through an ``eventmesh run`` sidecar's HTTP API.

    ``base_url`` is the sidecar's address (``http://127.0.0.1:10105``, or ``https://``
    for a listener with TLS); ``timeout`` is how many seconds one request may take (a
    long poll gets its wait on top). ``token`` is sent as ``Authorization: Bearer
    <token>`` on every request. Over ``https://``, ``ca_file`` is the CA that signed the
    sidecar's certificate (the system's CAs when None), and ``cert_file`` and
    ``key_file`` are this client's certificate and key when the sidecar asks for one
    (mTLS). Raises ``ConfigError`` for a bad address, token or TLS file.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"the sidecar address must be http://host:port, got {base_url!r}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        parts = urlsplit(base_url)
        if parts.username is not None or parts.password is not None:
            # Not echoed: the address holds a credential.
            raise ConfigError(
                "the sidecar address carries a user or password; pass the token as token= "
                "and the address without it"
            )
        tls = parts.scheme == "https"
        check_tls_files(
            f"{parts.scheme}://{parts.netloc}",
            tls=tls,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self._ssl = ssl_context(ca_file, cert_file, key_file) if tls else None
        # The token lives only in the session's default headers.
        self._headers = {} if token is None else {"Authorization": bearer(token)}
        if token is not None:
            warn_clear_text(self.base_url)
        self._session: aiohttp.ClientSession | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._subscriptions: dict[int, HttpSubscription] = {}
        self._state = "new"

    def __repr__(self) -> str:
        return f"<HttpClient {self.base_url} {self._state}>"

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise LifecycleError("an HttpClient can be entered once; create a new one")
        async with AsyncExitStack() as stack:
            self._session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                    headers=self._headers,
                    connector=None if self._ssl is None else aiohttp.TCPConnector(ssl=self._ssl),
                )
            )
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._stack = stack.pop_all()
        self._state = "open"
        return self

    def _describe(self) -> str:
        return f"the client of the sidecar at {self.base_url}"

    def _usage(self) -> str:
        return "eventmesh.connect(url) as client"

    # -- the wire ------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        wait: float = 0.0,
        failure: type[EventMeshError] = ConnectError,
    ) -> bytes:
        """Send one request; the body of its answer, or raise the error its problem body
        names. A connection refused raises ``ConnectError``, any other transport failure
        ``failure``. Works while the client closes, so subscriptions can settle and
        leave."""
        session = self._session
        if session is None or self._state == "closed":
            self._check_open()
        assert session is not None
        if json is not None:
            data, headers = msgspec.json.encode(json), {"Content-Type": "application/json"}
        # Binary mode has no Content-Type for an event without datacontenttype; aiohttp
        # would add application/octet-stream, which makes the data bytes.
        options: dict[str, Any] = {"skip_auto_headers": ("Content-Type",)}
        if wait:
            options["timeout"] = aiohttp.ClientTimeout(total=self.timeout + wait)
        url = self.base_url + path
        try:
            async with session.request(method, url, data=data, headers=headers, **options) as r:
                body, status = await r.read(), r.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ConnectError(
                f"the sidecar at {self.base_url} presented a certificate this client does "
                f"not trust ({exc.certificate_error}); pass ca_file=, the CA that signed it"
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise ConnectError(
                f"TLS with the sidecar at {self.base_url} failed ({exc.os_error}); check "
                "ca_file, and cert_file and key_file if it asks for a client certificate"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(
                f"cannot reach the eventmesh sidecar at {self.base_url} ({exc.os_error}); "
                "start it with 'eventmesh run', or check the address"
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            hint = "check that the sidecar is running, then retry"
            if self._ssl is not None and isinstance(exc, aiohttp.ServerDisconnectedError):
                # Under TLS 1.3 a refused client certificate shows only as a hang-up.
                hint += " (a sidecar that requires a client certificate hangs up on a "
                hint += "client without one: pass cert_file= and key_file=)"
            raise failure(
                f"{method} {url} failed ({type(exc).__name__}: {exc or 'timed out'}); {hint}"
            ) from exc
        if status >= 300:
            try:
                problem = msgspec.json.decode(body)
            except msgspec.DecodeError:
                problem = None
            raise error_from_problem(problem, status)
        return body

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, topic: str, events: Event | Sequence[Event]) -> list[str]:
        """Store one event or a list of events on ``topic`` through the sidecar.

        Returns the ids of the events, in order, once the sidecar says every one is
        stored (it stores a request all or nothing); raises ``PublishError`` when
        not (none may be assumed stored), ``ConnectError`` when the sidecar cannot be
        reached, and ``EventValidationError`` before sending for what is not an Event.
        """
        self._check_open()
        return await self._publish(topic, events)

    async def _publish(self, topic: str, events: Event | Sequence[Event]) -> list[str]:
        """:meth:`publish`, also while the client closes (for the handlers' replies)."""
        _check_topic(topic)
        if isinstance(events, Event):
            # Structured, not binary: the JSON format keeps extension types (an int stays
            # an int), so a remote publish stores what an embedded one would.
            headers, body = to_structured(events)
            ids = [events.id]
        elif isinstance(events, list | tuple):
            for i, event in enumerate(events):
                if type(event) is not Event:
                    raise EventValidationError(
                        f"item {i} of the events is a {type(event).__name__}, not an "
                        "eventmesh.Event (convert SDK events with Event.from_cloudevent)"
                    )
            if not events:
                return []
            headers, body = to_batch(events)
            ids = [event.id for event in events]
        else:
            raise EventValidationError(
                f"publish takes an eventmesh.Event or a list of them, got {type(events).__name__}"
            )
        path = f"/topics/{quote(topic, safe='')}/events"
        await self._request("POST", path, data=body, headers=headers, failure=PublishError)
        # The sidecar answers these same ids: they are the ids of the events it parsed.
        return ids

    def dead_letters(self, topic: str) -> DeadLetters:
        """Browse and replay dead-letter topic ``topic`` through the sidecar (its
        ``subscribe`` and ``publish`` grants apply; docs/delivery.md)."""
        from eventmesh.client._deadletters import RemoteDeadLetters

        return RemoteDeadLetters(self._request, topic)

    async def request(self, topic: str, event: Event, *, timeout: float | None = None) -> Event:
        """Publish ``event`` on ``topic`` as a request and return the first reply
        (``POST /request/{topic}``; docs/sdk.md, Request-reply). Raises what the sidecar
        raised: ``RequestTimeoutError`` (504) when no reply came within ``timeout``
        seconds (default 30), ``LimitExceededError`` (429), ``PermissionDeniedError``..."""
        self._check_open()
        _check_topic(topic)
        wait = check_wait(timeout)
        if type(event) is not Event:
            raise EventValidationError(f"request takes one eventmesh.Event, got {event!r:.60}")
        headers, body = to_structured(event)  # so the reply comes structured too
        path = f"/request/{quote(topic, safe='')}"
        if timeout is not None:
            path += f"?timeout={wait!r}"
        answer = await self._request(
            "POST", path, data=body, headers=headers, wait=wait, failure=PublishError
        )
        return decode_json(answer)

    # -- subscribing ---------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        group: str,
        *,
        handler: Handler | None = None,
        filter: Any = None,
        transform: Any = None,
        delivery: DeliveryPolicy | Mapping[str, Any] | None = None,
        start: StartPosition = "latest",
        name: str | None = None,
        reply_to: str | None = None,
    ) -> HttpSubscription:
        """Subscribe to ``topic`` as a member of consumer ``group``, as
        :meth:`eventmesh.Mesh.subscribe` does; the sidecar checks ``filter`` and
        ``transform`` (specs, not callables) when the subscription starts."""
        self._check_open()
        _check_topic(topic)
        if not isinstance(group, str) or not group:
            raise ConfigError(f"group must be a non-empty string, got {group!r}")
        where = f"subscribe({topic!r}, group={group!r})"
        if isinstance(delivery, DeliveryPolicy):
            policy = delivery
        else:
            policy = convert(delivery or {}, DeliveryPolicy, key=f"{where}.delivery")
        spec: dict[str, Any] = {
            "topic": topic,
            "group": group,
            "protocol": "pull",
            "persist": False,  # this client deletes it, and makes it again after a restart
            "delivery": msgspec.to_builtins(policy, enc_hook=float),  # Durations as seconds
            "start": encode_attribute(start) if isinstance(start, datetime) else start,
        }
        if filter is not None:
            spec["filter"] = filter
        if transform is not None:
            spec["transform"] = [transform] if isinstance(transform, Mapping) else transform
        for key in ("filter", "transform"):
            if callable(spec.get(key)):
                raise ConfigError(
                    f"{where}.{key}: a Python callable cannot be sent to the sidecar; pass a "
                    "spec (docs/filters.md), or do the work in the handler"
                )
        try:
            body = msgspec.json.encode(spec)
        except TypeError as exc:
            raise ConfigError(
                f"{where}: the filter or transform is not a JSON spec: {exc}"
            ) from exc
        return HttpSubscription(
            self, name or f"{topic}/{group}", topic, group, policy, body, handler, reply_to
        )


def _check_topic(topic: Any) -> None:
    if not isinstance(topic, str) or not topic:
        raise ConfigError(f"a topic name must be a non-empty string, got {topic!r}")


def _as_sink(handler: Handler) -> Sink:
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004  # an object with an async __call__
    ):
        return handler

    async def in_thread(event: Event) -> Any:
        return await anyio.to_thread.run_sync(partial(handler, event))

    return in_thread


class _PulledDelivery(ConnectorDelivery):
    """A delivery the sidecar handed out, settled by its id."""

    __slots__ = ("delivery_id", "subscription")

    def __init__(self, subscription: HttpSubscription, pulled: _Pulled, event: Event) -> None:
        # The sidecar keeps partitions and offsets to itself: -1 says "not known here".
        super().__init__(
            event,
            topic=subscription.topic,
            partition=-1,
            offset=-1,
            key=event.partitionkey,
            attempt=pulled.attempt,
        )
        self.subscription = subscription
        self.delivery_id = pulled.delivery_id

    async def ack(self) -> None:
        await self.subscription._settle("ack", self.delivery_id, None)

    async def nack(self, delay: float = 0.0) -> None:
        # The sidecar's policy chooses the delay; ``delay`` cannot be passed on.
        await self.subscription._settle("nack", self.delivery_id, None)


class HttpSubscription(Subscription):
    """A pull subscription on the sidecar, used as an embedded :class:`Subscription` is:
    ``async with``, ``await`` and ``close()``, ``async for`` with ack/nack, or a handler."""

    def __init__(
        self,
        client: HttpClient,
        name: str,
        topic: str,
        group: str,
        policy: DeliveryPolicy,
        body: bytes,
        handler: Handler | None,
        reply_to: str | None,
    ) -> None:
        # Subscription.__init__ is not called on purpose: it builds the consumer, gate
        # and dispatcher that the sidecar runs here. Whatever uses them is overridden.
        self._client = client
        self.name, self.topic, self.group = name, topic, group
        self.policy = policy
        self.reply_to = reply_to
        self.stats = DeliveryStats()
        self.id: str | None = None
        """The subscription's id on the sidecar, once started."""
        self._path = ""
        self._body = body
        self._sink = None if handler is None else _as_sink(handler)
        self._window = min(policy.prefetch or 2 * policy.concurrency, 1000)
        self._buffer: deque[Delivery] = deque()
        self._fetch_scope: anyio.CancelScope | None = None
        self._run_scope = anyio.CancelScope()
        self._done: anyio.Event | None = None
        self._in_flight = 0
        self._room: anyio.Event | None = None
        self._state = "new"

    def __repr__(self) -> str:
        return f"<HttpSubscription {self.name} id={self.id} {self._state}>"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> Self:
        """Create the subscription on the sidecar (and, with a handler, start delivering).
        Raises ``ConfigError`` for a filter, transform or policy the sidecar refuses."""
        if self._state != "new":
            raise LifecycleError(f"subscription {self.name!r} was already started")
        self._client._check_open()
        self._state = "open"
        try:
            await self._create()
        except BaseException:
            self._state = "closed"
            raise
        self._client._subscriptions[id(self)] = self
        if self._sink is not None:
            self._done = anyio.Event()
            assert self._client._tg is not None
            await self._client._tg.start(self._run)
        return self

    async def _create(self) -> None:
        headers = {"Content-Type": "application/json"}
        answer = await self._client._request(
            "POST", "/subscriptions", data=self._body, headers=headers
        )
        self.id = msgspec.json.decode(answer, type=_Created).id
        self._path = f"/subscriptions/{quote(self.id, safe='')}"

    async def close(self, timeout: float | None = None) -> None:
        """Stop: finish the events in hand (up to ``timeout`` seconds, 30 by default),
        cancel the handlers still running, and delete the subscription on the sidecar,
        which hands what was not acked to the group again. Idempotent."""
        if self._state == "closed":
            return
        started, self._state = self._state == "open", "closed"
        self._buffer.clear()
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
        if self._room is not None:
            self._room.set()
        try:
            if self._done is not None:
                with anyio.move_on_after(timeout if timeout is not None else 30.0):
                    await self._done.wait()
                self._run_scope.cancel()  # handlers still running are cut short: not acked
                await self._done.wait()
        finally:
            self._client._subscriptions.pop(id(self), None)
            if started and self._client._state != "closed":
                with anyio.CancelScope(shield=True):
                    try:
                        await self._client._request("DELETE", self._path)
                    except NotFoundError:
                        pass
                    except EventMeshError as exc:
                        log.warning("subscription %s: could not delete it: %s", self.name, exc)

    # -- the wire ------------------------------------------------------------------------

    async def _fetch(self, max_events: int) -> list[Delivery]:
        """One long poll: up to ``max_events`` deliveries; ``[]`` when none came or the
        subscription closed meanwhile; ``ClosedError`` once the client is closed."""
        path = f"{self._path}/events?max={max_events}&wait={_WAIT}"
        answer = b""
        self._fetch_scope = scope = anyio.CancelScope()
        try:
            with scope:
                if self._state == "open":
                    answer = await self._client._request("GET", path, wait=_WAIT)
        except NotFoundError:
            if self._state != "open":
                return []
            # The sidecar restarted, or someone deleted the subscription: join again.
            log.warning("subscription %s is gone from the sidecar; creating it again", self.name)
            await self._create()
            return []
        finally:
            self._fetch_scope = None
        if not answer or self._state != "open":
            return []
        try:
            pulled = _decode_pull(answer)
        except msgspec.DecodeError as exc:
            raise SubscribeError(
                f"subscription {self.name!r}: unreadable deliveries: {exc}"
            ) from exc
        out = []
        for item in pulled.deliveries:
            event = decode_json(item.event)
            out.append(Delivery(self, _PulledDelivery(self, item, event), event))
        self.stats.received += len(out)
        return out

    async def _settle(self, verb: str, delivery_id: str, error: BaseException | str | None) -> None:
        """Ack or nack one delivery. Failures are logged, not raised: the sidecar delivers
        what it did not see settled again (at-least-once). A ``DeliveryError``'s
        ``retryable`` and ``retry_after`` travel with the nack."""
        body: dict[str, Any] = {"delivery_ids": [delivery_id]}
        if error is not None:
            body["error"] = describe_error(error)
        if isinstance(error, DeliveryError):
            body["give_up"] = not error.retryable
            if error.retry_after is not None:
                body["retry_after"] = error.retry_after
        try:
            answer = msgspec.json.decode(
                await self._client._request("POST", f"{self._path}/{verb}", json=body)
            )
        except EventMeshError as exc:
            log.warning(
                "subscription %s: the %s of delivery %s failed (%s); it comes again",
                *(self.name, verb, delivery_id, exc),
            )
            return
        if isinstance(answer, dict) and answer.get("unknown"):
            log.info(
                "subscription %s: delivery %s was no longer outstanding at its %s (settled "
                "already, or handed out again after its ack deadline)",
                *(self.name, delivery_id, verb),
            )

    async def _nack(
        self, delivery: ConnectorDelivery, event: Event, error: BaseException | str | None
    ) -> None:
        self.stats.failed += 1
        assert isinstance(delivery, _PulledDelivery)
        await self._settle("nack", delivery.delivery_id, error)

    # -- iterator form -------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Delivery]:
        if self._sink is not None:
            raise LifecycleError(
                f"subscription {self.name!r} has a handler; iterate only a subscription "
                "made without one"
            )
        if self._state != "open":
            raise LifecycleError(
                "enter the subscription first: 'async with client.subscribe(...) as sub'"
            )
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        # Fetched deliveries wait on the subscription, not in this generator: a loop
        # left with 'break' and started again goes on where it stopped.
        buffer = self._buffer
        while self._state == "open":
            if buffer:
                yield buffer.popleft()
                continue
            try:
                buffer.extend(await self._fetch(self._window))
            except ClosedError:
                if self._state != "open" or self._client._state != "open":
                    return  # closed here, not by the sidecar
                raise

    # -- handler form --------------------------------------------------------------------

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self._done is not None
        try:
            with self._run_scope:
                async with anyio.create_task_group() as tg:
                    lanes: list[MemoryObjectSendStream[Delivery]] = []
                    for _ in range(self.policy.concurrency):
                        send, receive = anyio.create_memory_object_stream[Delivery](math.inf)
                        lanes.append(send)
                        tg.start_soon(self._work, receive)
                    task_status.started()
                    try:
                        await self._route(lanes)
                    finally:
                        for send in lanes:
                            send.close()  # each lane finishes what it holds, then ends
        except Exception:
            log.exception("subscription %s stopped on an unexpected error", self.name)
        finally:
            self._done.set()

    async def _route(self, lanes: list[MemoryObjectSendStream[Delivery]]) -> None:
        """Fetch while there is room and hand each delivery to a lane: by its
        partitionkey under ``ordering: partitionkey``, else round robin."""
        ordered = self.policy.ordering == "partitionkey"
        round_robin = itertools.cycle(lanes)
        failures = 0
        while self._state == "open":
            room = self._window - self._in_flight
            if room <= 0:
                self._room = wake = anyio.Event()
                await wake.wait()
                continue
            try:
                batch = await self._fetch(room)
            except EventMeshError as exc:
                if self._state != "open" or self._client._state != "open":
                    return
                # The sidecar may come back (a restart, a network blip): keep trying.
                failures += 1
                delay = self.policy.backoff.delay(min(failures, 10))
                log.warning(
                    "subscription %s could not fetch (%s); retrying in %.1fs",
                    *(self.name, exc, delay),
                )
                await anyio.sleep(delay)
                continue
            failures = 0
            self._in_flight += len(batch)
            for delivery in batch:
                key = delivery.event.partitionkey
                lane = lanes[hash(key) % len(lanes)] if ordered and key else next(round_robin)
                lane.send_nowait(delivery)

    async def _work(self, receive: MemoryObjectReceiveStream[Delivery]) -> None:
        async with receive:
            async for delivery in receive:
                try:
                    await self._handle(delivery)
                finally:
                    self._in_flight -= 1
                    room, self._room = self._room, None
                    if room is not None:
                        room.set()

    async def _handle(self, delivery: Delivery) -> None:
        """Returning acks; raising nacks (the sidecar retries or dead-letters); with
        ``reply_to``, what the handler returns is published before the ack."""
        assert self._sink is not None
        try:
            result = await self._sink(delivery.event)
            if result is not None:  # to reply_to, and a request's reply inbox
                await send_replies(self._client._publish, delivery.event, result, self.reply_to)
        except Exception as exc:
            log.debug("subscription %s: the handler failed on %r: %r", self.name, delivery, exc)
            await delivery.nack(exc)
            return
        await delivery.ack()
