"""Webhook sinks: each event POSTed to a URL, with retries as Knative does them.

:class:`WebhookSession` is the one HTTP client of a mesh: a keep-alive connection pool
and the allow-list of destinations (:mod:`eventmesh.delivery._netcheck`).
:class:`WebhookSink` is a sink (:data:`eventmesh.typing.Sink`) that POSTs to one URL
through it and tells the dispatcher what the answer means: delivered, a reply, or a
``DeliveryError`` that is retryable or not. Redirects are not followed (one could lead
outside the allow-list), and messages and log lines never show a password, a query
string or a header value. See docs/delivery.md, 'Webhook sinks', and
docs/security.md, 'Outgoing webhooks prove where they come from'.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final, Literal, NamedTuple, Protocol, Self, TypeAlias

import aiohttp
import anyio
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from eventmesh._lifecycle import ClosedOnExit
from eventmesh._redact import redact_url
from eventmesh._version import __version__
from eventmesh.bindings.http import (
    HeaderEncoding,
    content_mode,
    from_http,
    to_batch,
    to_binary,
    to_structured,
)
from eventmesh.delivery._netcheck import (
    DEFAULT_NETWORKS,
    AddressRefused,
    AllowList,
    AllowListResolver,
)
from eventmesh.delivery._sinkcheck import sink_problem
from eventmesh.delivery.signing import WebhookSigner, delivery_id
from eventmesh.errors import (
    ClosedError,
    ConfigError,
    DeliveryError,
    EventMeshError,
    LifecycleError,
)
from eventmesh.event import Event
from eventmesh.observability.propagation import current_traceparent

__all__ = ["RETRYABLE_STATUSES", "Mode", "WebhookSession", "WebhookSink", "retry_after_seconds"]

log = logging.getLogger(__name__)

Mode: TypeAlias = Literal["binary", "structured", "batch"]
"""The HTTP content mode of a webhook's requests."""


class SinkSettings(Protocol):
    """A webhook sink's settings as the config's ``SinkConfig`` holds them (named here
    by shape: the delivery engine does not import the config)."""

    @property
    def mode(self) -> Mode: ...
    @property
    def header_encoding(self) -> HeaderEncoding: ...
    @property
    def timeout(self) -> float: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def batch_window(self) -> float: ...
    @property
    def signing_secret(self) -> str | None: ...


RETRYABLE_STATUSES: Final = frozenset({404, 408, 409, 429})
"""Statuses below 500 that are retried (every 5xx is, too), as Knative retries them."""

_SNIPPET: Final = 256
"""Bytes of an error answer's body quoted in the error."""


class _Answer(NamedTuple):
    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes
    truncated: bool


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks for: a number of seconds or an HTTP-date
    (a date in the past is 0). None when there is no header or it cannot be read."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not '²', which isdigit() also takes
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an absurd zone
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _display(url: URL) -> str:
    """A URL for messages, log lines and dead letters: no credential (a password, or a
    user name alone, which is the credential then: ``***@host``, as
    :func:`~eventmesh._redact.redact_url` shows it), no query string, no fragment."""
    shown = redact_url(str(url.with_query(None).with_fragment(None)))
    return shown + ("?..." if url.query_string else "")


def _scrubbed(text: str, url: URL, where: str) -> str:
    """An HTTP client's error text with ``url`` (which some, as ``InvalidURL``, quote
    whole, credentials and all) shown as ``where``."""
    for form in {str(url), url.human_repr()}:
        text = text.replace(form, where)
    return text


_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Narrowed(AllowList):
    """An allow-list inside another: an address must lie in both ``outer``'s networks
    and ``networks``, and no host is trusted by name (a principal's
    ``webhook_networks``)."""

    def __init__(self, outer: AllowList, networks: Iterable[_Network]) -> None:
        super().__init__((), ())
        self.networks = tuple(networks)
        self.outer = outer

    def allows_address(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return super().allows_address(address) and self.outer.allows_address(address)

    def describe(self) -> str:
        return f"{super().describe()}, within {self.outer.describe()}"


class _Slots:
    """The requests a session may have in flight at once, shared fairly by its sinks.

    A "sink" here is an owner: the sinks pass their receiver's origin
    (``WebhookSink.destination``), so all the subscriptions of one receiver share one
    owner's part. A request holds a slot from before it connects until its answer is
    read. One sink never holds more than :attr:`most` slots, three quarters of them (all of a pool
    under four): the rest is kept for the other sinks, so a sink whose receiver hangs,
    with a concurrency and a timeout as large as a client may choose, cannot take every
    slot and keep the others waiting for as long as its timeout runs. When no slot is
    free (or the sink holds its most), a request waits, and a freed slot goes to the
    waiting sink that holds the fewest among those below their most (the one that
    began waiting first among equals): a sink that hangs gets no more than its share
    while others wait. The time a request waits for a slot is not counted against its
    sink's timeout (the receiver that request goes to is not the one that was slow).

    Invariant: while a slot is free, no waiting sink is below its most.
    """

    __slots__ = ("_free", "_held", "_waiting", "_warned", "most", "size")

    WARN_EVERY: Final = 60.0
    """Seconds between two warnings that requests wait for a slot."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.most = size - size // 4
        """Slots one sink may hold at once: the rest is kept for the others."""
        self._free = size
        self._held: dict[Hashable, int] = {}
        self._waiting: dict[Hashable, deque[anyio.Event]] = {}
        self._warned = float("-inf")

    def held(self, owner: Hashable) -> int:
        """Slots ``owner`` holds now."""
        return self._held.get(owner, 0)

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return sum(len(queue) for queue in self._waiting.values())

    async def acquire(self, owner: Hashable) -> None:
        """Take a slot for ``owner``, waiting for one if none is free or it holds its
        most."""
        if self._free and self._held.get(owner, 0) < self.most:
            self._free -= 1  # no other waiter can take it (the invariant)
            self._held[owner] = self._held.get(owner, 0) + 1
            return
        self._warn(owner)
        handed = anyio.Event()
        queue = self._waiting.setdefault(owner, deque())
        queue.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():
                self.release(owner)  # handed a slot as it was cancelled: pass it on
            else:
                queue.remove(handed)
                if not queue and self._waiting.get(owner) is queue:
                    del self._waiting[owner]
            raise

    def release(self, owner: Hashable) -> None:
        """Give back a slot ``owner`` held: to the waiting owner below its most that
        holds the fewest, else it is free."""
        left = self._held[owner] - 1
        if left:
            self._held[owner] = left
        else:
            del self._held[owner]
        held, most, waiting = self._held, self.most, self._waiting
        chosen = min(
            (waiter for waiter in waiting if held.get(waiter, 0) < most),
            key=lambda waiter: held.get(waiter, 0),
            default=None,
        )
        if chosen is None:
            self._free += 1
            return
        queue = waiting[chosen]
        handed = queue.popleft()
        if not queue:
            del waiting[chosen]
        held[chosen] = held.get(chosen, 0) + 1
        handed.set()

    def _warn(self, owner: Hashable) -> None:
        now = time.monotonic()
        if now - self._warned < self.WARN_EVERY:
            return
        self._warned = now
        if self._free:  # a slot is free, but not for this owner
            log.warning(
                "requests for %s wait for a webhook connection: it holds %d, the most one "
                "receiver may (three quarters of server.webhook.max_connections, %d), the "
                "rest being kept for other receivers; lower its subscriptions' concurrency "
                "or timeout, or raise the limit",
                owner,
                self._held.get(owner, 0),
                self.most,
            )
            return
        busiest = max(self._held, key=self._held.__getitem__, default=None)
        log.warning(
            "all %d webhook connections are in use (server.webhook.max_connections); "
            "requests for %s wait for one, the most held by %s (%d): raise the limit if "
            "the receivers are healthy, or look at the one holding them",
            self.size,
            owner,
            busiest,
            self._held.get(busiest, 0) if busiest is not None else 0,
        )


class WebhookSession(ClosedOnExit):
    """The HTTP client every webhook of a mesh POSTs through.

    One keep-alive pool of at most ``max_connections`` connections, shared by every
    sink: one receiver (an origin, whatever the sinks sending to it) holds at most three
    quarters of them (all of a pool under four); when all are in use, a request waits for
    one, and a freed connection goes to the waiting receiver that holds the fewest
    (:class:`_Slots`), so one receiver that hangs
    cannot starve the others' webhooks. Connections go only to addresses inside
    ``allowed_networks`` (CIDR strings; loopback by default), checked after DNS
    resolution at every new connection, or to the ``allowed_hosts``, trusted by name
    whatever they resolve to. A bad setting raises ConfigError naming its key, after
    ``config_prefix`` (``"server.webhook."``).

    Use it as ``async with WebhookSession(...) as session``; it may also be used
    without, then :meth:`close` it. The HTTP client is created at the first request.
    Entering it twice raises ``LifecycleError``, using it after close ``ClosedError``.
    """

    def __init__(
        self,
        *,
        allowed_networks: Iterable[str] = DEFAULT_NETWORKS,
        allowed_hosts: Iterable[str] = (),
        max_connections: int = 100,
        config_prefix: str = "",
    ) -> None:
        if max_connections < 1:
            raise ConfigError(
                f"must be at least 1, got {max_connections}", key=f"{config_prefix}max_connections"
            )
        self.allow = AllowList(
            allowed_networks, allowed_hosts, key=f"{config_prefix}allowed_networks"
        )
        self.max_connections = max_connections
        self.slots = _Slots(max_connections)
        self._client: aiohttp.ClientSession | None = None
        self._resolver: AllowListResolver | None = None
        self._narrowed: dict[frozenset[_Network], WebhookSession] = {}
        self._state = "new"

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise LifecycleError("a WebhookSession can be entered once; create a new one")
        self._state = "open"
        return self

    async def close(self) -> None:
        """Close every pooled connection, the narrowed sessions' too. Idempotent."""
        self._state = "closed"
        narrowed, self._narrowed = list(self._narrowed.values()), {}
        for session in narrowed:
            await session.close()
        client, self._client = self._client, None
        resolver, self._resolver = self._resolver, None
        if client is not None:
            await client.close()
        if resolver is not None:
            await resolver.close()  # aiohttp closes only a resolver it made itself

    @property
    def closed(self) -> bool:
        """True once the session was closed."""
        return self._state == "closed"

    def narrowed(self, networks: Iterable[_Network]) -> WebhookSession:
        """A session that connects only to addresses inside both this session's networks
        and ``networks`` (checked after DNS at every connection, as here), trusting no
        host by name: for webhooks of a principal whose ACL rules narrow where its
        webhooks may go. One per set of networks, closed with this session."""
        if self._state == "closed":
            raise ClosedError(
                "the webhook session is closed: webhooks are not sent after their mesh closes"
            )
        key = frozenset(networks)
        session = self._narrowed.get(key)
        if session is None:
            session = WebhookSession(max_connections=self.max_connections)
            session.allow = _Narrowed(self.allow, sorted(key, key=str))
            session._state = "open"
            self._narrowed[key] = session
        return session

    def _http(self) -> aiohttp.ClientSession:
        if self._state == "closed":
            raise ClosedError(
                "the webhook session is closed: webhooks are not sent after their mesh closes"
            )
        if self._client is None:
            self._resolver = AllowListResolver(self.allow, aiohttp.ThreadedResolver())
            connector = aiohttp.TCPConnector(limit=self.max_connections, resolver=self._resolver)
            self._client = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": f"eventmesh/{__version__}"},
                trust_env=False,  # no proxy from the environment: it would skip the allow-list
            )
        return self._client

    async def check_url(self, url: str) -> None:
        """Raise ConfigError unless ``url`` is an http(s) URL this session may reach: a
        host trusted by name, a literal IP inside the allowed networks, or a name that
        resolves to at least one address inside them (only those are ever connected to).

        Call it when a webhook is given at run time (an API subscription).
        """
        parsed = _parse_url(url)
        assert parsed.raw_host is not None
        assert parsed.port is not None
        await self.allow.check(parsed.raw_host, parsed.port)

    async def _post(
        self,
        url: URL,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float,
        limit: int,
        owner: Hashable = None,
    ) -> _Answer:
        """POST once, for ``owner`` (the receiver's origin, which shares the pool fairly
        with the others: :class:`_Slots`); the answer with up to ``limit`` bytes of a 2xx body (a
        few of any other). ``timeout`` runs from when a connection is free for it. Every
        failure to get an answer is a ``DeliveryError``."""
        where = _display(url)
        refused = self.allow.refuse_literal(url.raw_host or "")
        if refused is not None:
            raise DeliveryError(f"POST {where} refused: {refused}", retryable=False)
        http = self._http()
        slots = self.slots
        await slots.acquire(owner)
        try:
            return await self._answer(http, url, where, body, headers, timeout, limit)
        finally:
            slots.release(owner)

    @staticmethod
    async def _answer(
        http: aiohttp.ClientSession,
        url: URL,
        where: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
        limit: int,
    ) -> _Answer:
        try:
            async with http.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
                skip_auto_headers=("Content-Type",),
            ) as response:
                cap = limit if 200 <= response.status < 300 else _SNIPPET
                data, truncated = await _read(response, cap)
                return _Answer(
                    response.status, response.reason or "", response.headers, data, truncated
                )
        except TimeoutError as exc:
            raise DeliveryError(
                f"POST {where} timed out after {timeout:g}s (the sink's timeout)"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                raise DeliveryError(
                    f"POST {where} refused: {exc.os_error}", retryable=False
                ) from exc
            raise DeliveryError(f"POST {where} failed: {_scrubbed(str(exc), url, where)}") from exc
        except aiohttp.InvalidURL as exc:
            raise DeliveryError(
                f"POST {where} failed: invalid URL ({_scrubbed(str(exc), url, where)})",
                retryable=False,
            ) from exc
        except aiohttp.ClientError as exc:
            raise DeliveryError(
                f"POST {where} failed: {type(exc).__name__}: {_scrubbed(str(exc), url, where)}"
            ) from exc


async def _read(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body, and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await response.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    return data[:limit], size > limit


def _parse_url(url: str) -> URL:
    try:
        parsed = URL(url)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"webhook {redact_url(url)!r} is not a URL ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ConfigError(
            f"webhook {redact_url(url)!r} must be an http:// or https:// URL with a host"
        )
    return parsed


class _Batch:
    """Events gathered for one batch request, and its outcome for every caller."""

    __slots__ = ("done", "events", "full", "outcome")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.full = anyio.Event()
        self.done = anyio.Event()
        self.outcome: list[Event] | DeliveryError = DeliveryError(
            "the batch request was cancelled before it was answered"
        )


class WebhookSink:
    """A sink that POSTs events to ``url`` through ``session`` and returns the replies.

    ``mode`` is the HTTP content mode: ``binary`` (attributes as ``ce-`` headers),
    ``structured`` (``application/cloudevents+json``) or ``batch``: calls made while a
    batch is open (up to ``max_batch`` events, for at most ``batch_window`` seconds
    after the first) go as one ``application/cloudevents-batch+json`` request, and every
    caller gets its outcome; a dispatcher hands over each lane's queued events as one
    group and sends the batch as soon as no lane can add to it
    (:mod:`eventmesh.delivery.grouped`), so a batch is not capped by the concurrency.
    ``header_encoding`` says how binary mode writes ``ce-``
    header values (``spec``: percent-encoded; ``raw``: UTF-8 as it is where legal, see
    :data:`~eventmesh.bindings.http.HeaderEncoding`). ``timeout`` bounds one attempt,
    ``headers`` are added to every request (the binding's own headers win), and a reply
    body above ``max_reply_size`` bytes is logged and dropped. With ``signing_secret`` every
    request is signed (module docstring). The settings are checked as the config's
    ``SinkConfig`` checks them (ranges, headers, credentials given once, the secret):
    ``ConfigError`` otherwise.

    Calling it returns the events the receiver answered with (a 200 or 201 whose body
    is a CloudEvent, or a batch of them), else an empty list; in batch mode the reply
    goes to the first event of the batch only, so it is published once. It raises
    ``DeliveryError`` as the table in the module docstring says.
    """

    def __init__(
        self,
        url: str,
        *,
        session: WebhookSession,
        mode: Mode = "binary",
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        max_batch: int = 100,
        batch_window: float = 0.01,
        max_reply_size: int = 1024 * 1024,
        signing_secret: str | None = None,
        header_encoding: HeaderEncoding = "spec",
    ) -> None:
        self.url = _parse_url(url)
        self.destination = (
            f"{self.url.scheme}://{(self.url.raw_host or '').lower()}:{self.url.port}"
        )
        """The receiver's origin, which the connection pool shares fairly: sinks of one
        receiver (subscriptions to one endpoint) count as one there, so two to a receiver
        that hangs hold no more than one would."""
        if mode not in ("binary", "structured", "batch"):
            raise ConfigError(f"mode must be binary, structured or batch, got {mode!r}")
        if header_encoding not in ("spec", "raw"):
            raise ConfigError(
                f"header_encoding must be spec or raw, got {header_encoding!r}",
                key="header_encoding",
            )
        self.header_encoding: HeaderEncoding = header_encoding
        problem = sink_problem(
            url,
            timeout=timeout,
            max_batch=max_batch,
            batch_window=batch_window,
            headers=headers or {},
            signing_secret=signing_secret,
        )
        if problem is not None:
            raise ConfigError(problem[1], key=problem[0])
        self._signer = WebhookSigner(signing_secret) if signing_secret is not None else None
        self.session = session
        self.mode: Mode = mode
        self.timeout = float(timeout)
        self.max_batch = max_batch
        self.batch_window = float(batch_window)
        self.max_reply_size = max_reply_size
        self.where = _display(self.url)
        self._headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self._open: _Batch | None = None

    @classmethod
    def from_config(
        cls, url: str, settings: SinkSettings, *, session: WebhookSession
    ) -> WebhookSink:
        """The sink a subscription's ``sink`` settings (a ``SinkConfig``) describe, POSTing
        to ``url`` through ``session``; ConfigError as the constructor raises it."""
        return cls(
            url,
            session=session,
            mode=settings.mode,
            timeout=settings.timeout,
            headers=settings.headers,
            max_batch=settings.max_batch,
            batch_window=settings.batch_window,
            signing_secret=settings.signing_secret,
            header_encoding=settings.header_encoding,
        )

    def __repr__(self) -> str:
        return f"<WebhookSink {self.mode} {self.where}>"

    async def __call__(self, event: Event) -> list[Event]:
        """Deliver ``event``; the replies, or an empty list."""
        if self.mode == "batch":
            return await self._batched(event)
        try:
            if self.mode == "binary":
                headers, body = to_binary(event, header_encoding=self.header_encoding)
            else:
                headers, body = to_structured(event)
        except EventMeshError as exc:
            raise DeliveryError(
                f"event {event.id} cannot be sent to {self.where}: {exc}", retryable=False
            ) from exc
        return await self._send(headers, body, (event,))

    # -- one request ---------------------------------------------------------------------

    async def _send(
        self, headers: Mapping[str, str], body: bytes, events: Sequence[Event]
    ) -> list[Event]:
        merged = CIMultiDict(self._headers)
        merged.update(headers)
        traceparent = current_traceparent()
        if traceparent is not None:  # the delivery span, for a traced receiver (W3C)
            merged["traceparent"] = traceparent
        if self._signer is not None:  # on the bytes sent; the same id on every retry
            merged.update(self._signer.headers(delivery_id(events), body))
        answer = await self.session._post(
            self.url,
            body,
            merged,
            timeout=self.timeout,
            limit=self.max_reply_size,
            owner=self.destination,
        )
        status = answer.status
        if 200 <= status < 300:
            return self.accepted(answer)
        text = f"POST {self.where} answered {status} {answer.reason}".rstrip()
        if answer.body:
            snippet = answer.body.decode("utf-8", "replace")
            text += f": {snippet!r}{'...' if answer.truncated else ''}"
        if status >= 500 or status in RETRYABLE_STATUSES:
            retry_after = retry_after_seconds(answer.headers.get("Retry-After"))
            raise DeliveryError(text, retry_after=retry_after)
        raise DeliveryError(
            f"{text}; not retried: the receiver refuses the event (only connection errors, "
            "timeouts, 404, 408, 409, 429 and 5xx are retried)",
            retryable=False,
        )

    def accepted(self, answer: _Answer) -> list[Event]:
        """What a 2xx answer means: the replies it carries (a 200 or 201 whose body is a
        CloudEvent), else none. A push format of another protocol overrides it to read
        its own answers, raising ``DeliveryError`` for one that asks for a retry."""
        return self._replies(answer) if answer.status in (200, 201) else []

    def _replies(self, answer: _Answer) -> list[Event]:
        if content_mode(answer.headers) is None:
            return []  # an answer that is not a CloudEvent is no reply
        if answer.truncated:
            log.warning(
                "webhook %s replied with more than %d bytes; the reply is dropped",
                self.where,
                self.max_reply_size,
            )
            return []
        try:
            return from_http(answer.headers, answer.body)
        except EventMeshError as exc:
            log.warning(
                "webhook %s replied with a CloudEvent that cannot be read (%s); the reply "
                "is dropped",
                self.where,
                exc,
            )
            return []

    # -- batch mode ----------------------------------------------------------------------

    @property
    def group_limit(self) -> int:
        """In batch mode, the most events a dispatcher's lane may hand over at once
        (``max_batch``); 0 in the other modes, which take one event per request."""
        return self.max_batch if self.mode == "batch" else 0

    async def deliver_group(self, events: Sequence[Event], *, last: bool = False) -> None:
        """Batch mode: send ``events`` (at most ``max_batch``, in order) in the open batch,
        or in a new one when they do not fit, and return once that batch got a 2xx;
        ``DeliveryError`` otherwise. With ``last`` the batch is sent at once (nothing more
        can join it). A batch's replies are not read here."""
        await self._join(events, last=last)

    def flush(self) -> None:
        """Send the open batch now, without waiting out ``batch_window``: the caller knows
        that nothing more can join it (a dispatcher whose every lane has joined or waits)."""
        batch = self._open
        if batch is not None:
            self._open = None
            batch.full.set()

    async def _batched(self, event: Event) -> list[Event]:
        return await self._join((event,))

    async def _join(self, events: Sequence[Event], *, last: bool = False) -> list[Event]:
        batch = self._open
        if batch is not None and len(batch.events) + len(events) > self.max_batch:
            self.flush()  # a group is never split: it goes whole into the next batch
            batch = None
        leader = batch is None
        if batch is None:
            batch = self._open = _Batch()
        batch.events.extend(events)
        if (last or len(batch.events) >= self.max_batch) and self._open is batch:
            self.flush()
        if not leader:
            await batch.done.wait()
            outcome = batch.outcome
            if isinstance(outcome, DeliveryError):
                # A fresh error per caller: one exception object raised in many tasks
                # would collect all their tracebacks.
                raise DeliveryError(
                    str(outcome), retryable=outcome.retryable, retry_after=outcome.retry_after
                )
            return []  # a reply to the batch goes to its first event, the leader's
        try:
            with anyio.move_on_after(self.batch_window):
                await batch.full.wait()
            if self._open is batch:
                self._open = None
            batch.outcome = await self._send_batch(batch.events)
        except DeliveryError as exc:
            batch.outcome = exc
            raise
        except Exception as exc:
            batch.outcome = DeliveryError(f"POST {self.where} failed: {exc!r}")
            raise
        finally:
            batch.done.set()
        return batch.outcome

    async def _send_batch(self, events: Sequence[Event]) -> list[Event]:
        try:
            headers, body = to_batch(events)
        except EventMeshError as exc:
            raise DeliveryError(
                f"a batch of {len(events)} events cannot be sent to {self.where}: {exc}",
                retryable=False,
            ) from exc
        return await self._send(headers, body, events)
