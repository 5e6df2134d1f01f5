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

import logging
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit

import aiohttp
import anyio
import anyio.abc
import msgspec

from eventmesh._client import Client
from eventmesh._requests import check_wait
from eventmesh._status import error_from_problem
from eventmesh.bindings._common import encode_attribute
from eventmesh.bindings.http import to_batch, to_structured
from eventmesh.client._pull import PullConsumer
from eventmesh.client._remote import (
    bearer,
    check_tls_files,
    remote_services,
    ssl_context,
    warn_clear_text,
)
from eventmesh.config import convert
from eventmesh.connectors.base import StartPosition
from eventmesh.deadletters import DeadLetters
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.delivery.services import Services
from eventmesh.delivery.settle import HandBack
from eventmesh.errors import (
    ConfigError,
    ConnectError,
    EventMeshError,
    EventValidationError,
    LifecycleError,
    PublishError,
)
from eventmesh.event import Event, decode_json
from eventmesh.subscription import Subscription
from eventmesh.typing import Handler

__all__ = ["HttpClient", "HttpSubscription"]

log = logging.getLogger(__name__)


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
        self._subscriptions: dict[int, Subscription] = {}
        self._services: Services[Subscription] | None = None
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
            self._hold(stack.pop_all())
        # Replies through _publish, which still works while the client closes.
        self._services = remote_services(self._publish, self._tg, self._subscriptions)
        await self._opened()
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
        name = name or f"{topic}/{group}"
        consumer = PullConsumer(
            self,
            topic=topic,
            group=group,
            name=name,
            body=body,
            window=min(policy.prefetch or 2 * policy.concurrency, 1000),
        )
        assert self._services is not None  # made on entering, and _check_open passed
        return HttpSubscription(
            self._services,
            name=name,
            topic=topic,
            group=group,
            consumer=consumer,
            policy=policy,
            handler=handler,
            filter=None,  # the sidecar runs the filter, transform and policy
            transform=None,
            reply_to=reply_to,
            settle=HandBack(consumer.reject),
        )


def _check_topic(topic: Any) -> None:
    if not isinstance(topic, str) or not topic:
        raise ConfigError(f"a topic name must be a non-empty string, got {topic!r}")


class HttpSubscription(Subscription):
    """A pull subscription on the sidecar, used as an embedded :class:`Subscription` is:
    ``async with``, ``await`` and ``close()``, ``async for`` with ack/nack, or a handler.
    It is one: the same class over a :class:`~eventmesh.client._pull.PullConsumer`."""

    _consumer: PullConsumer

    @property
    def id(self) -> str | None:
        """The subscription's id on the sidecar, once started."""
        return self._consumer.id

    def __repr__(self) -> str:
        return f"<HttpSubscription {self.name} id={self.id} {self._state}>"
