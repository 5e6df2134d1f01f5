"""The sidecar's HTTP API: routes that translate between the wire and Mesh calls.

Publishing (``/topics/{topic}/events`` and Apache EventMesh's ``/eventmesh/publish``),
subscriptions with pull, ack, nack and Server-Sent Events, request-reply, browsing and
dead-letter replay, and Apache EventMesh's clients on ``POST /``
(:mod:`eventmesh.server.apache_http`). Every JSON body goes through msgspec; errors are
problem bodies from :mod:`eventmesh._status`. Bodies are bounded, and decompressed here
a piece at a time rather than by aiohttp, so a gzip bomb stops at
``max_request_size``. See docs/sidecar.md, 'Publishing over HTTP' and 'Subscriptions',
and docs/security.md, 'The HTTP API and the admin port'.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Final, Protocol, TypeVar

import msgspec
from aiohttp import web

from eventmesh._status import PROBLEM_CONTENT_TYPE
from eventmesh.auth import ANONYMOUS, Guard, Principal
from eventmesh.bindings.http import from_http
from eventmesh.config import HttpListener
from eventmesh.errors import (
    ClosedError,
    ConfigError,
    ConnectorError,
    ContentTypeError,
    DeliveryError,
    EventMeshError,
    EventTooLargeError,
    EventValidationError,
    LifecycleError,
    UnauthenticatedError,
)
from eventmesh.event import encode_json
from eventmesh.mesh import Mesh
from eventmesh.observability.propagation import transport_parent
from eventmesh.server._authn import caller, check_reply_inboxes
from eventmesh.server._authn import problem_response as _problem
from eventmesh.server._ratelimit import LogLimit
from eventmesh.server.deadletters import DeadLetterApi
from eventmesh.server.pull import Handout, PullQueue
from eventmesh.server.requests import RequestApi
from eventmesh.server.subscriptions import Record, Registry, convert_body

__all__ = ["KEEPALIVE_INTERVAL", "MAX_PULL", "MAX_WAIT", "create_app"]

log = logging.getLogger(__name__)

MAX_PULL: Final = 1000
"""The most deliveries one ``GET /subscriptions/{id}/events`` returns."""
STREAM_BATCH: Final = 100
"""Deliveries one write of an event stream carries at most."""
MAX_ANSWER_SIZE: Final = 16 * 1024 * 1024
"""The most bytes of deliveries one long-poll answer or one stream write carries (as
Kafka's ``fetch.max.bytes``): at least one delivery always goes; the rest wait for the
next poll or write, their attempt not counted. Without it an answer of 1,000 events of
``max_event_size`` each took a gigabyte to build."""
MAX_WAIT: Final = 30.0
"""The longest a long poll waits, in seconds."""
KEEPALIVE_INTERVAL: Final = 15.0
"""Seconds between ``: keepalive`` comments on an idle event stream."""

_JSON: Final = "application/json"
_CHUNK: Final = 64 * 1024
_LIMIT: Final = web.AppKey("max_request_size", int)
_LOGS: Final = web.AppKey("logs", LogLimit)
"""The app's rate limit on warning lines about bad requests."""
_GUARD: Final = web.AppKey("guard", Guard)
_PRINCIPAL: Final = web.RequestKey("principal", Principal)
"""The caller, set by :func:`_authenticate` (absent with auth off: anonymous)."""
_WBITS: Final = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 0}
"""zlib's window bits per Content-Encoding; ``deflate`` is settled by its first byte."""
_T = TypeVar("_T")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApacheRoute(Protocol):
    """What serves ``POST /`` for Apache EventMesh's clients (``ApacheHttp``)."""

    async def handle(self, request: web.Request) -> web.Response: ...

    async def expect(self, request: web.Request) -> web.Response | None: ...


MAX_SETTLE: Final = 10_000
"""The most delivery ids one ack or nack names (as over gRPC): 459,000 in one body held
the loop 100 ms and were echoed back as unknown."""
_DeliveryIds = Annotated[
    list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=MAX_SETTLE)
]


class _Settle(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of an ack."""

    delivery_ids: _DeliveryIds


class _Nack(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of a nack."""

    delivery_ids: _DeliveryIds
    error: str | None = None
    give_up: bool = False
    """Dead-letter now: a retry cannot help (a ``DeliveryError(retryable=False)``)."""
    retry_after: float | None = None
    """Wait at least this many seconds before the retry."""


def create_app(
    mesh: Mesh,
    registry: Registry,
    settings: HttpListener,
    *,
    keepalive: float = KEEPALIVE_INTERVAL,
    guard: Guard | None = None,
    apache: ApacheRoute | None = None,
) -> web.Application:
    """The HTTP API over a running ``mesh`` and its subscription ``registry``.

    ``apache`` serves ``POST /`` (Apache EventMesh's clients,
    :mod:`eventmesh.server.apache_http`), which authenticates its callers itself.

    ``settings`` gives the size limits; ``keepalive`` the seconds between comments on an
    idle event stream. Long polls and streams end when the registry closes, so close it
    before the app's runner.
    """
    guard = guard or Guard()
    api = _Api(mesh, registry, settings, keepalive, guard)
    # With auth off no middleware is added: every request is served as before.
    middlewares = [_problems, _authenticate] if guard.enabled else [_problems]
    app = web.Application(
        middlewares=middlewares,
        client_max_size=settings.max_request_size,
        # Compressed bodies are inflated by _read_body, bounded by max_request_size.
        handler_args={"auto_decompress": False},
    )
    app[_LIMIT] = settings.max_request_size
    app[_LOGS] = LogLimit(log)
    app[_GUARD] = guard
    app.add_routes(
        [
            web.post("/topics/{topic}/events", api.publish, expect_handler=_expect),
            web.post("/eventmesh/publish/{topic}", api.publish, expect_handler=_expect),
            web.post("/subscriptions", api.create, expect_handler=_expect),
            web.get("/subscriptions", api.list, allow_head=False),
            web.get("/subscriptions/{id}", api.get, allow_head=False),
            web.delete("/subscriptions/{id}", api.delete),
            web.get("/subscriptions/{id}/events", api.pull, allow_head=False),
            web.post("/subscriptions/{id}/ack", api.ack, expect_handler=_expect),
            web.post("/subscriptions/{id}/nack", api.nack, expect_handler=_expect),
            web.get("/subscriptions/{id}/stream", api.stream, allow_head=False),
            *RequestApi(mesh, guard, _principal, api._body, settings.max_event_size).routes(
                expect=_expect
            ),
            *DeadLetterApi(mesh, guard, _principal, api._body).routes(expect=_expect),
        ]
    )
    if apache is not None:
        app.router.add_post("/", apache.handle, expect_handler=apache.expect)
    return app


# -- answers ---------------------------------------------------------------------------------


def _json(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encoder.encode(body), status=status, content_type=_JSON, headers=headers
    )


class _BodyTimeout(Exception):
    """The client did not send its body within ``body_timeout``: 408, then close."""


async def _closing(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response`` and close the connection at once: the client is too slow to
    wait for (aiohttp would linger reading the body for up to 10 s more)."""
    response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass
    request.protocol.force_close()  # what was written is still sent
    return response


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every EventMeshError as its problem body; anything else as a 500 that says nothing."""
    try:
        return await handler(request)
    except EventMeshError as exc:
        response = _problem(exc)
        if isinstance(exc, EventTooLargeError) and not request.content.is_eof():
            # Not kept alive: aiohttp reads what is on its way for at most 10 s (so the
            # client gets this answer, not a reset), then closes.
            response.force_close()
        return response
    except _BodyTimeout as exc:
        response = web.Response(
            body=_encoder.encode(
                {
                    "type": "EventMeshError",
                    "title": "Request Timeout",
                    "status": 408,
                    "detail": str(exc),
                }
            ),
            status=408,
            content_type=PROBLEM_CONTENT_TYPE,
        )
        return await _closing(request, response)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # The router's own 404 and 405 answer in the same problem format as ours.
        kind = "NotFoundError" if exc.status == 404 else "EventMeshError"
        body = {
            "type": kind,
            "title": exc.reason,
            "status": exc.status,
            "detail": f"{request.method} {request.path}: {exc.reason}",
        }
        headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
        return web.Response(
            body=_encoder.encode(body),
            status=exc.status,
            headers=headers,
            content_type=PROBLEM_CONTENT_TYPE,
        )
    except ConnectionError:
        # The client went away mid-request: nothing to answer, nothing worth an error log
        # (any client could flood the log this way).
        log.debug("%s %s: the client disconnected", request.method, request.path)
        return web.Response(status=400)
    except Exception as exc:
        request.app[_LOGS].log(
            logging.ERROR, "unexpected", "%s %s failed", request.method, request.path, exc_info=exc
        )
        return _problem(exc)


def _principal(request: web.Request) -> Principal:
    """The caller of ``request``, from its Authorization header or its verified client
    certificate (UnauthenticatedError when neither is accepted); kept on the request."""
    principal = request.get(_PRINCIPAL)
    if principal is None:
        principal = caller(request, request.app[_GUARD])
        request[_PRINCIPAL] = principal
    return principal


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a request without acceptable credentials, before its body is read (only
    installed with auth on). ``POST /`` (Apache EventMesh's clients) carries its
    credentials in its own headers and is authenticated by its handler; any other
    method on ``/`` is refused here like any other path."""
    if request.path != "/" or request.method != "POST":
        _principal(request)
    return await handler(request)


async def _expect(request: web.Request) -> web.Response | None:
    """Answer ``Expect: 100-continue`` with 401 or 413 at once when the caller has no
    acceptable credentials or the declared body is above the limit, rather than invite
    the client to send it first."""
    if request.app[_GUARD].enabled:
        try:
            _principal(request)
        except UnauthenticatedError as exc:
            response = _problem(exc)
            response.force_close()
            return response
    limit = request.app[_LIMIT]
    length = request.content_length
    if length is not None and length > limit:
        response = _problem(_too_large(f"{length} bytes", limit))
        response.force_close()
        return response
    if request.headers.get("Expect", "").lower() != "100-continue":
        return _problem(ConfigError(f"unknown Expect: {request.headers.get('Expect')!r}"))
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None


def _delivery(handout: Handout) -> dict[str, Any]:
    return {
        "delivery_id": handout.delivery_id,
        "attempt": handout.attempt,
        "event": msgspec.Raw(encode_json(handout.event)),
    }


# -- reading requests ------------------------------------------------------------------------


async def _read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The body, decompressed as its ``Content-Encoding`` says: EventTooLargeError as soon
    as it is known to be above ``limit`` bytes (as sent or decompressed), _BodyTimeout
    when it is not all in within ``timeout`` seconds (module docstring)."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(f"{length} bytes", limit)
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    logs = request.app[_LOGS]
    if coding not in _WBITS and coding not in ("identity", ""):
        logs.warning("coding", "http: a request body in Content-Encoding %.40r refused", coding)
        raise ContentTypeError(
            f"Content-Encoding {coding[:40]!r} is not one the sidecar reads; send the body "
            "uncompressed, or as gzip or deflate"
        )
    if request.content.is_eof():  # all in already, the usual case: no clock to set
        return await _body(request, coding, limit, logs)
    try:
        async with asyncio.timeout(timeout):
            return await _body(request, coding, limit, logs)
    except TimeoutError:
        logs.warning("body", "http: a request body took more than %gs; answered 408", timeout)
        raise _BodyTimeout(
            f"the request body did not arrive within {timeout:g}s "
            "(server.http.body_timeout); send it at once, or in smaller requests"
        ) from None


async def _body(request: web.Request, coding: str, limit: int, logs: LogLimit) -> bytes:
    if coding in _WBITS:
        return await _inflate(request, coding, limit, logs)
    return b"".join([chunk async for chunk in _chunks(request, limit)])


async def _chunks(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The body's bytes as sent, refused once they pass ``limit``."""
    size = 0
    while chunk := await request.content.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise _too_large(f"more than {limit} bytes", limit)
        yield chunk


async def _inflate(request: web.Request, coding: str, limit: int, logs: LogLimit) -> bytes:
    """A gzip or deflate body inflated a piece at a time, never more than ``limit + 1``
    bytes of output (gzip members one after another, as RFC 1952 allows)."""
    wbits = _WBITS[coding]
    inflater: Any = None
    out: list[bytes] = []
    size = 0
    chunks = _chunks(request, limit)
    try:
        async for chunk in chunks:
            data = chunk
            while data:
                if inflater is None or inflater.eof:
                    if inflater is not None and coding == "deflate":
                        raise zlib.error("data after the end of the deflate stream")
                    if not wbits:  # deflate: zlib-wrapped as RFC 9110 says, or raw
                        wbits = zlib.MAX_WBITS if data[0] & 0x0F == 8 else -zlib.MAX_WBITS
                    inflater = zlib.decompressobj(wbits)
                piece = inflater.decompress(data, limit - size + 1)
                size += len(piece)
                if size > limit:
                    await _drain(chunks)
                    raise _too_large(f"more than {limit} bytes when decompressed", limit)
                out.append(piece)
                data = inflater.unconsumed_tail or (inflater.unused_data if inflater.eof else b"")
        if inflater is not None and not inflater.eof:
            raise zlib.error("the compressed data ends early")
    except zlib.error as exc:
        await _drain(chunks)
        logs.warning("encoding", "http: a request body is not valid %s (%s)", coding, exc)
        raise EventValidationError(
            f"the request body is not valid {coding} data ({exc}), as its Content-Encoding "
            "says; send it compressed as that header says, or without the header"
        ) from exc
    return b"".join(out)


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read the rest of a refused body as sent, without inflating it, so the answer can
    be read by a client still sending; refused for size past ``limit`` as sent."""
    async for _ in chunks:
        pass


def _too_large(size: str, limit: int) -> EventTooLargeError:
    return EventTooLargeError(
        f"the request body is {size}, above the limit of {limit} bytes "
        "(server.http.max_request_size); send fewer events per request"
    )


def _decode(body: bytes, kind: type[_T]) -> _T:
    """A JSON body checked against ``kind``; ConfigError naming the key otherwise."""
    try:
        data = _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"the request body is not valid JSON: {exc!r}") from exc
    if not isinstance(data, dict):
        raise ConfigError("the request body must be a JSON object")
    return convert_body(data, kind)


def _number(request: web.Request, name: str, default: float, high: float, *, whole: bool) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    low = 1 if whole else 0
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        kind = "an integer" if whole else "a number of seconds"
        raise ConfigError(f"must be {kind} from {low} to {high:g}, got {raw!r}", key=name)
    return value


def _queue(record: Record) -> PullQueue:
    if record.pull is None:
        raise LifecycleError(
            f"subscription {record.id!r} pushes to its sink (protocol "
            f"{record.fields.get('protocol')}); only pull subscriptions are read here"
        )
    return record.pull


# -- the routes ------------------------------------------------------------------------------


class _Api:
    def __init__(
        self,
        mesh: Mesh,
        registry: Registry,
        settings: HttpListener,
        keepalive: float,
        guard: Guard,
    ) -> None:
        self.mesh = mesh
        self.registry = registry
        self.settings = settings
        self.keepalive = keepalive
        self.guard = guard

    def _caller(self, request: web.Request) -> Principal | None:
        """The authenticated caller; None with auth off (the registry checks nothing)."""
        return request.get(_PRINCIPAL) if self.guard.enabled else None

    def _record(self, request: web.Request) -> Record:
        """The subscription the path names, if the caller may use it."""
        return self.registry.get(request.match_info["id"], principal=self._caller(request))

    async def _body(self, request: web.Request) -> bytes:
        settings = self.settings
        return await _read_body(request, settings.max_request_size, settings.body_timeout)

    async def publish(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        if self.guard.enabled:
            self.guard.check(request.get(_PRINCIPAL, ANONYMOUS), "publish", topic=topic)
        body = await self._body(request)
        try:
            events = from_http(request.headers, body, max_event_size=self.settings.max_event_size)
        except EventValidationError as exc:
            index = getattr(exc, "index", None)
            return _problem(exc, **({} if index is None else {"index": index}))
        check_reply_inboxes(self.guard, request.get(_PRINCIPAL, ANONYMOUS), events)
        ids = [event.id for event in events]
        headers = request.headers
        try:
            # An instrumented client's W3C headers: the publish continues its trace
            # when the events carry none of their own.
            with transport_parent(headers.get("traceparent"), headers.get("tracestate")):
                await self.mesh.publish(topic, events)
        except (ConnectorError, ClosedError) as exc:
            log.debug("publish of %d events to %s failed: %s", len(ids), topic, exc)
            return _problem(exc, not_stored=ids)
        return _json({"stored": len(ids), "ids": ids}, status=202)

    async def create(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            spec = _decoder.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ConfigError(f"the request body is not valid JSON: {exc!r}") from exc
        record = await self.registry.create(spec, owner=self._caller(request))
        return _json(
            self.registry.resource(record),
            status=201,
            headers={"Location": f"/subscriptions/{record.id}"},
        )

    async def list(self, request: web.Request) -> web.Response:
        registry = self.registry
        records = registry.list(principal=self._caller(request))
        return _json({"subscriptions": [registry.resource(r) for r in records]})

    async def get(self, request: web.Request) -> web.Response:
        return _json(self.registry.resource(self._record(request)))

    async def delete(self, request: web.Request) -> web.Response:
        await self.registry.delete(request.match_info["id"], principal=self._caller(request))
        return web.Response(status=204)

    async def pull(self, request: web.Request) -> web.Response:
        queue = _queue(self._record(request))
        max_events = int(_number(request, "max", 1, MAX_PULL, whole=True))
        wait = _number(request, "wait", 0.0, MAX_WAIT, whole=False)
        handouts = await queue.take(max_events, wait, alive=_connected(request))
        parts = await _encoded(queue, handouts, _delivery_json, 1)
        return web.Response(
            body=b'{"deliveries":[%s]}' % b",".join(parts), status=200, content_type=_JSON
        )

    async def ack(self, request: web.Request) -> web.Response:
        queue = _queue(self._record(request))
        body = _decode(await self._body(request), _Settle)
        acked, unknown = await queue.ack(body.delivery_ids)
        return _json({"acked": acked, "unknown": unknown})

    async def nack(self, request: web.Request) -> web.Response:
        queue = _queue(self._record(request))
        body = _decode(await self._body(request), _Nack)
        error: str | DeliveryError | None = body.error
        if body.give_up or body.retry_after is not None:
            error = DeliveryError(
                body.error or "nacked by the client",
                retryable=not body.give_up,
                retry_after=body.retry_after,
            )
        nacked, unknown = await queue.nack(body.delivery_ids, error)
        return _json({"nacked": nacked, "unknown": unknown})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        queue = _queue(self._record(request))
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # proxies must not hold events back
            }
        )
        await response.prepare(request)
        alive = _connected(request)
        batch = min(queue.max_in_flight, STREAM_BATCH)
        # A write waits until the client has read what came before. One that does not
        # read for an ack deadline could not ack what it was sent anyway: it is cut off,
        # so it holds the server's buffer no longer (nor a deleted subscription's stream).
        timeout = queue.ack_deadline
        try:
            while not queue.closed and alive():
                handouts = await queue.take(batch, self.keepalive, alive=alive)
                if handouts:
                    frames = await _encoded(queue, handouts, _frame, 0)
                    if frames:
                        await _write(request, response, b"".join(frames), timeout)
                elif not queue.closed:
                    await _write(request, response, b": keepalive\n\n", timeout)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; what it was handed comes back after its deadline
        return response


async def _write(
    request: web.Request, response: web.StreamResponse, data: bytes, timeout: float
) -> None:
    """Write ``data`` to a stream; ConnectionError, with the connection cut, when the
    client has not taken it within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            await response.write(data)
    except TimeoutError:
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise ConnectionResetError(f"the client read nothing for {timeout:g}s") from None


def _connected(request: web.Request) -> Callable[[], bool]:
    """Whether the client of ``request`` is still connected (it may leave a long poll)."""

    def connected() -> bool:
        transport = request.transport
        return transport is not None and not transport.is_closing()

    return connected


async def _encoded(
    queue: PullQueue,
    handouts: list[Handout],
    encode: Callable[[Handout], bytes],
    separator: int,
) -> list[bytes]:
    """Each of ``handouts`` encoded, up to :data:`MAX_ANSWER_SIZE` bytes in all (each part
    counted with ``separator`` bytes more); the first always, those past the bound given
    back to ``queue`` for the next poll or write. An event that cannot be written as
    JSON (data no JSON can hold, put on a memory topic by code in the process) is
    dead-lettered, not sent: it would fail every answer it is part of."""
    parts: list[bytes] = []
    size = 0
    unwritable: list[tuple[Handout, Exception]] = []
    for index, handout in enumerate(handouts):
        try:
            part = encode(handout)
        except Exception as exc:  # whatever it is, this event cannot go
            unwritable.append((handout, exc))
            continue
        size += len(part) + separator
        if parts and size > MAX_ANSWER_SIZE:
            queue.give_back(handouts[index:])
            break
        parts.append(part)
    for handout, why in unwritable:
        event = handout.event
        error = DeliveryError(
            f"event {event.id!r} from {event.source!r} cannot be written in the JSON format: {why}",
            retryable=False,
        )
        try:
            await queue.nack([handout.delivery_id], error)
        except Exception as failed:  # its ack deadline nacks it later
            log.warning("could not dead-letter an unwritable event: %s", failed)
    return parts


def _delivery_json(handout: Handout) -> bytes:
    return _encoder.encode(_delivery(handout))


def _frame(handout: Handout) -> bytes:
    data = _delivery_json(handout)
    return b"event: delivery\nid: %s\ndata: %s\n\n" % (handout.delivery_id.encode(), data)
