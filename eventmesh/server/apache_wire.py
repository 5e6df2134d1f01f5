"""What the Apache EventMesh adapters share: client metadata, status codes, subscriptions.

The gRPC (:mod:`eventmesh.server.apache_grpc`) and HTTP
(:mod:`eventmesh.server.apache_http`) adapters turn the SDKs' wire form into plain Mesh
calls and back: an edge adapter, not a second runtime. Here are the client metadata
taken off every event (``passwd`` is never stored, logged or forwarded), credentials
read from that metadata, Apache EventMesh's status codes, and :class:`ApacheConsumers`,
which keeps webhook subscriptions (:class:`ApacheWebhookSink`, the code-105 form push)
and gRPC streams so that ``unsubscribe`` and ``heartbeat`` find them. See
docs/sidecar.md, 'Coming from Apache EventMesh'.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import urlencode

import anyio
import msgspec

from eventmesh.auth import ANONYMOUS, CertIdentity, Guard, Principal
from eventmesh.delivery.webhook import WebhookSession, WebhookSink
from eventmesh.errors import (
    ClosedError,
    ConfigError,
    ConnectorError,
    DeliveryError,
    EventMeshError,
    EventValidationError,
    LimitExceededError,
    PermissionDeniedError,
    SubscribeError,
    UnauthenticatedError,
)
from eventmesh.event import Event, encode_json

if TYPE_CHECKING:
    from eventmesh.mesh import Mesh
    from eventmesh.subscription import Subscription

__all__ = [
    "CLIENT_METADATA",
    "MAX_ITEMS",
    "SUCCESS",
    "ApacheConsumers",
    "ApacheWebhookSink",
    "Item",
    "authenticate",
    "parse_items",
    "request_timeout",
    "status_of",
    "strip_metadata",
]

log = logging.getLogger(__name__)

# Apache EventMesh's status codes (StatusCode.java), as strings on the wire.
SUCCESS: Final = "0"
OVERLOAD: Final = "1"
BAD_HEADER: Final = "6"
BAD_BODY: Final = "7"
RUNTIME: Final = "16"
SUBSCRIBE_FAILED: Final = "17"
ACL: Final = "20"
RATE_LIMIT: Final = "21"
RESUBSCRIBE: Final = "30"
"""A heartbeat's answer for a subscription this sidecar does not hold: subscribe again."""

CLIENT_METADATA: Final = frozenset(
    {
        "env",
        "idc",
        "ip",
        "pid",
        "sys",
        "username",
        "passwd",
        "language",
        "protocoltype",
        "protocoldesc",
        "protocolversion",
        "producergroup",
        "consumergroup",
        "seqnum",
        "uniqueid",
        "ttl",
        "bizseqno",
        "randomno",
        "clienttype",
        "url",
        "submessagetype",
        "version",
        "reqc2eventmeshtimestamp",
        "reqeventmesh2mqtimestamp",
        "reqeventmesh2ctimestamp",
        "rspc2eventmeshtimestamp",
        "rspeventmesh2ctimestamp",
    }
)
"""Attributes Apache EventMesh clients add to events; none of them is stored."""

MAX_ITEMS: Final = 100
"""Topics one subscribe, unsubscribe or heartbeat may name."""
MAX_SPEC: Final = 64 * 1024
"""Characters of a subscription list (its JSON) read at most."""
_STREAM_URL: Final = "grpc_stream"

Mode = Literal["CLUSTERING", "BROADCASTING"]
_decoder = msgspec.json.Decoder()


class Item(msgspec.Struct, frozen=True):
    """One ``SubscriptionItem``: a topic and how its events are shared."""

    topic: str
    mode: Mode = "CLUSTERING"
    url: str | None = None


def status_of(exc: BaseException) -> str:
    """The Apache EventMesh status code that answers ``exc``."""
    if isinstance(exc, UnauthenticatedError | PermissionDeniedError):
        return ACL
    if isinstance(exc, LimitExceededError):
        return RATE_LIMIT
    if isinstance(exc, SubscribeError):
        return SUBSCRIBE_FAILED
    if isinstance(exc, ClosedError):
        return OVERLOAD
    if isinstance(exc, EventValidationError | ConfigError):
        return BAD_BODY
    if isinstance(exc, ConnectorError):
        # RejectedError: the backend never takes this; others: retry later
        return BAD_BODY if type(exc).__name__ == "RejectedError" else RUNTIME
    return RUNTIME


def message_of(exc: BaseException) -> str:
    """What an answer says about ``exc``: its message for our errors, nothing else."""
    if isinstance(exc, EventMeshError):
        return f"{type(exc).__name__}: {exc}"
    return "internal error"


def strip_metadata(attributes: MutableMapping[str, Any]) -> dict[str, Any]:
    """Take the client metadata off ``attributes`` (in place); what was taken, without
    ``passwd``, which is dropped at once."""
    taken = {}
    for name in [name for name in attributes if name in CLIENT_METADATA]:
        value = attributes.pop(name)
        if name != "passwd":
            taken[name] = value
    return taken


def without_metadata(event: Event) -> Event:
    """``event`` without the extensions in :data:`CLIENT_METADATA`."""
    extensions = event.extensions
    if not any(name in CLIENT_METADATA for name in extensions):
        return event
    kept = {k: v for k, v in extensions.items() if k not in CLIENT_METADATA}
    return event.replace(extensions=kept)


def authenticate(
    guard: Guard,
    *,
    authorization: str | None,
    username: str | None,
    passwd: str | None,
    cert: CertIdentity | None = None,
) -> Principal:
    """The caller (module docstring, "Credentials"); ANONYMOUS with auth off."""
    if not guard.enabled:
        return ANONYMOUS
    if authorization:
        return guard.principal(authorization, cert)
    if passwd:
        principal = guard.principal(f"Bearer {passwd}")
        if username and username != principal.name:
            raise UnauthenticatedError(
                f"username {username[:100]!r} is not the principal the password (a bearer "
                "token) proves; set the client's userName to the token's principal"
            )
        return principal
    return guard.principal(None, cert)


def request_timeout(mesh: Mesh, ttl: str | None) -> float | None:
    """The seconds a request waits: its ``ttl`` (milliseconds, as the SDKs send it), at
    most ``limits.max_request_timeout``; None (the default) without one."""
    if ttl is None or not (ttl.isascii() and ttl.isdigit()):
        return None
    return min(int(ttl[:12]) / 1000, float(mesh.config.limits.max_request_timeout))


def parse_items(text: str | bytes, *, where: str, url: str | None = None) -> list[Item]:
    """The subscription items of a request: a JSON list of ``{"topic", "mode", "type"}``
    (or of topic strings, as HTTP's unsubscribe sends), at most :data:`MAX_ITEMS`."""
    if len(text) > MAX_SPEC:
        raise ConfigError(f"{where} is more than {MAX_SPEC} characters; name fewer topics")
    try:
        raw = _decoder.decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{where} is not a JSON list of subscription items: {exc}") from exc
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where} must be a non-empty JSON list of subscription items")
    if len(raw) > MAX_ITEMS:
        raise LimitExceededError(
            f"{where} names {len(raw)} topics, more than {MAX_ITEMS}; subscribe in parts"
        )
    items = []
    for entry in raw:
        if isinstance(entry, str):
            entry = {"topic": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("topic"), str):
            raise ConfigError(f"{where}: each item needs a string 'topic', got {entry!r:.100}")
        mode = entry.get("mode") or "CLUSTERING"
        if mode != "CLUSTERING" and mode != "BROADCASTING":
            raise ConfigError(f"{where}: mode must be CLUSTERING or BROADCASTING, got {mode!r:.40}")
        item_url = entry.get("url") if isinstance(entry.get("url"), str) else url
        items.append(Item(entry["topic"], mode, item_url or None))  # type: ignore[arg-type]
    return items


# -- webhook pushes ------------------------------------------------------------------------


_DONE: Final = frozenset({0, 1, 3})
"""``retCode`` values (ClientRetCode) that end a delivery: OK, and the two that say the
consumer took it or will never take it."""


class ApacheWebhookSink(WebhookSink):
    """A webhook that receives Apache EventMesh's HTTP push: a form POST with header
    ``code: 105`` and the fields ``content`` (the event in the CloudEvents JSON
    format), ``bizseqno``, ``uniqueid``, ``randomNo``, ``topic`` and ``extFields`` (the
    event's extensions as a JSON object).

    The answer is read as Apache EventMesh's consumers give it: a 2xx whose JSON
    ``retCode`` is 0, 1 or 3 (or that has none) delivers; any other ``retCode`` (2 and
    5 ask for a retry) is a retryable ``DeliveryError``. Statuses go through
    :class:`~eventmesh.delivery.webhook.WebhookSink`'s table: 429 retries after
    ``Retry-After``, 410 and 415 stop at once.
    """

    def __init__(self, url: str, *, session: WebhookSession, topic: str, cluster: str) -> None:
        super().__init__(url, session=session, mode="structured")
        self.topic = topic
        self._headers_out = {
            "code": "105",
            "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
            "language": "PYTHON",
            "version": "1.0",
            "eventmeshcluster": cluster,
            "eventmeshenv": "eventmesh",
            "eventmeshidc": "eventmesh",
            "eventmeship": "127.0.0.1",
        }

    async def __call__(self, event: Event) -> list[Event]:
        try:
            content = encode_json(event)
        except EventMeshError as exc:
            raise DeliveryError(
                f"event {event.id} cannot be sent to {self.where}: {exc}", retryable=False
            ) from exc
        form = {
            "content": content.decode("utf-8"),
            "bizseqno": event.id,
            "uniqueid": event.id,
            "randomNo": str(secrets.randbelow(10**9)),
            "topic": self.topic,
            # Typed extensions (URI, Timestamp, ...) are str subclasses that msgspec does
            # not encode by itself: each goes as its canonical string.
            "extFields": msgspec.json.encode(event.extensions, enc_hook=str).decode("utf-8"),
        }
        body = urlencode(form).encode("ascii")
        await self._send(self._headers_out, body, (event,))
        return []

    def accepted(self, answer: Any) -> list[Event]:
        """Read a 2xx answer's ``retCode`` (class docstring)."""
        code = _ret_code(answer.body)
        if code is None or code in _DONE:
            return []
        raise DeliveryError(f"POST {self.where} answered retCode {code}; retrying")


def _ret_code(body: bytes) -> int | None:
    if not body:
        return None
    try:
        data = _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    code = data.get("retCode") if isinstance(data, dict) else None
    if isinstance(code, str) and code.isascii() and code.lstrip("-").isdigit():
        if len(code) > 20:  # no code is that long; int() refuses 4,300 digits anyway
            return None
        code = int(code)
    return code if isinstance(code, int) and not isinstance(code, bool) else None


# -- consumers -----------------------------------------------------------------------------


class Stream(Protocol):
    """A gRPC stream consumer as :class:`ApacheConsumers` knows it."""

    group: str

    def topics(self) -> Iterable[str]: ...

    async def drop(self, topic: str) -> bool: ...


@dataclass
class _Webhook:
    subscription: Subscription
    own_group: bool
    """A broadcast webhook's group of its own, deleted with it."""


class ApacheConsumers:
    """The Apache EventMesh consumers of a sidecar: webhook subscriptions it runs, and
    the gRPC streams open now (module docstring). Close it before the mesh."""

    def __init__(self, mesh: Mesh, guard: Guard) -> None:
        self.mesh = mesh
        self.guard = guard
        self._webhooks: dict[tuple[str, str, str], _Webhook] = {}
        self._streams: dict[str, set[Stream]] = {}
        self._closed = False

    # -- streams -------------------------------------------------------------------------

    def add_stream(self, stream: Stream) -> None:
        """Make ``stream`` known to unsubscribe and heartbeat."""
        self._streams.setdefault(stream.group, set()).add(stream)

    def remove_stream(self, stream: Stream) -> None:
        streams = self._streams.get(stream.group)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._streams[stream.group]

    def stream_group(self, group: str, mode: Mode) -> str:
        """The mesh group of a stream consumer of ``group``."""
        return group if mode == "CLUSTERING" else f"{group}.{uuid.uuid4().hex[:16]}"

    # -- webhooks ------------------------------------------------------------------------

    async def subscribe_webhook(
        self, principal: Principal, group: str, items: Iterable[Item], url: str
    ) -> int:
        """Run a webhook subscription per item (an existing one of the same group, topic
        and URL stays as it is); the number started. The ACL decides first."""
        if self._closed:
            raise ClosedError("the sidecar is shutting down; no new subscriptions")
        items = list(items)
        if self.guard.enabled:
            for item in items:
                self.guard.check(principal, "subscribe", topic=item.topic, group=group)
        session = await self._session(url, principal)
        started = 0
        for item in items:
            key = (group, item.topic, url)
            if key in self._webhooks:
                continue
            mesh_group = group
            if item.mode == "BROADCASTING":
                mesh_group = f"{group}.{hashlib.sha256(url.encode()).hexdigest()[:16]}"
            sink = ApacheWebhookSink(url, session=session, topic=item.topic, cluster=group)
            subscription = self.mesh.subscribe(
                item.topic, mesh_group, handler=sink, name=f"apache/{group}/{item.topic}"
            )
            self._webhooks[key] = _Webhook(subscription, mesh_group != group)
            try:
                await subscription.start()
            except BaseException:
                self._webhooks.pop(key, None)
                with anyio.CancelScope(shield=True):
                    await subscription.close()
                raise
            started += 1
            log.info("apache webhook subscription: group %s, topic %s", group, item.topic)
        return started

    async def _session(self, url: str, principal: Principal) -> WebhookSession:
        """The webhook session ``principal``'s webhooks go through, as for the sidecar's
        own API: the allow-list, then the ACL's ``webhook_networks`` with auth on."""
        session = self.mesh.webhooks
        await session.check_url(url)
        if not self.guard.enabled:
            return session
        networks = self.guard.webhook_networks(principal)
        narrowed = session.narrowed(networks if networks is not None else session.allow.networks)
        await narrowed.check_url(url)
        return narrowed

    # -- both ----------------------------------------------------------------------------

    async def unsubscribe(
        self, principal: Principal, group: str, topics: Iterable[str], url: str | None
    ) -> int:
        """End the subscriptions of ``group`` to ``topics``: the webhooks to ``url``, or
        with no URL (or ``grpc_stream``) the group's streams. The number ended."""
        ended = 0
        for topic in topics:
            if self.guard.enabled:
                self.guard.check(principal, "subscribe", topic=topic, group=group)
            if url and url != _STREAM_URL:
                hook = self._webhooks.pop((group, topic, url), None)
                if hook is not None:
                    await hook.subscription.close()
                    if hook.own_group:
                        await forget_group(self.mesh, hook.subscription)
                    ended += 1
                continue
            for stream in list(self._streams.get(group, ())):
                ended += await stream.drop(topic)
        return ended

    def alive(
        self, principal: Principal, group: str, entries: Iterable[tuple[str, str | None]]
    ) -> bool:
        """Whether the sidecar holds a subscription of ``group`` for each ``(topic, url)``
        a heartbeat names (a stream's URL is ``grpc_stream`` or none). With auth on, the
        caller needs ``subscribe`` on each topic and the group, as to subscribe:
        PermissionDeniedError otherwise (what another service's group holds is not
        everyone's to ask)."""
        streams = self._streams.get(group, set())
        for topic, url in entries:
            if self.guard.enabled:
                self.guard.check(principal, "subscribe", topic=topic, group=group)
            if url and url != _STREAM_URL:
                if (group, topic, url) not in self._webhooks:
                    return False
            elif not any(topic in stream.topics() for stream in streams):
                return False
        return True

    async def close(self) -> None:
        """Stop every webhook subscription (streams end with the gRPC server)."""
        self._closed = True
        hooks, self._webhooks = list(self._webhooks.values()), {}
        for hook in hooks:
            await hook.subscription.close()


async def forget_group(mesh: Mesh, subscription: Subscription) -> None:
    """Delete a closed subscription's group of its own (a broadcast consumer's), which
    a memory or local connector would keep events for otherwise."""
    connector = mesh.connector(subscription.topic)
    try:
        await connector.delete_group(subscription.topic, subscription.group)
    except SubscribeError:
        pass  # joined by another meanwhile: it stays


def heartbeat_entries(text: str | bytes, *, where: str) -> list[tuple[str, str | None]]:
    """The ``(topic, url)`` pairs of a heartbeat's list (at most :data:`MAX_ITEMS`)."""
    return [(item.topic, item.url) for item in parse_items(text, where=where)]
