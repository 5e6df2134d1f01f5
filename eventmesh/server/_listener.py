"""The sidecar's HTTP sockets: a cap on open connections and a deadline on request headers.

aiohttp bounds the size of a request line and its headers, and closes a connection idle
for ``keepalive_timeout``, but it does not bound how long a client may take to send its
headers: 20,000 clients each sending one byte a minute held 20,000 file descriptors, and
``/healthz`` stopped answering. :class:`GuardedSite` serves an aiohttp runner as
``web.TCPSite`` does, with each connection's protocol wrapped in a :class:`_Connection`:

* a listener holds at most ``max_connections`` connections; one more is answered with
  ``refusal`` (a canned 503) and closed at once, before aiohttp sees it;
* a request must complete its headers within ``header_timeout`` seconds of its first
  byte (of the connection's start, for the first request); a slower connection is
  aborted. aiohttp's request factory, called once a request's headers are parsed, stops
  the clock; the request handler returning starts watching for the next request.

Each listener has its own cap, so the admin port keeps answering probes while the public
ports are full. Nothing here runs per event: a few attribute checks per read and per
request.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from eventmesh.server._ratelimit import LogLimit

__all__ = ["GuardedSite", "refusal"]

log = logging.getLogger(__name__)


def refusal(body: bytes, content_type: str) -> bytes:
    """A complete ``503 Service Unavailable`` answer that closes the connection."""
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Guard:
    """What one listener knows of its connections."""

    def __init__(
        self, name: str, max_connections: int, header_timeout: float, refusal: bytes
    ) -> None:
        self.name = name
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.refusal = refusal
        self.open: dict[asyncio.BaseProtocol, _Connection] = {}
        """aiohttp's protocol of each admitted connection -> its wrapper."""
        self.logs = LogLimit(log)


class _Connection(asyncio.Protocol):
    """One accepted connection: admitted under the cap, its headers on a clock, every
    protocol call passed on to aiohttp's own protocol (``inner``)."""

    __slots__ = ("_admitted", "_guard", "_idle", "_inner", "_timer", "_transport")

    def __init__(self, guard: _Guard, inner: RequestHandler) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._admitted = False
        self._idle = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        guard = self._guard
        if len(guard.open) >= guard.max_connections:
            guard.logs.warning(
                "cap:" + guard.name,
                "%s: %d connections open, the limit (server.%s.max_connections); "
                "closing new ones until some close",
                guard.name,
                len(guard.open),
                guard.name,
            )
            transport.write(guard.refusal)
            transport.close()
            return
        self._admitted = True
        self._transport = transport
        guard.open[self._inner] = self
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._idle:  # the first byte of the next request on a kept-alive connection
            self._idle = False
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> None:
        self._inner.eof_received()  # returns None: the transport closes after a half-close

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._disarm()
        self._guard.open.pop(self._inner, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- the header clock ----------------------------------------------------------------

    def headers_in(self) -> None:
        """A request's headers are parsed: stop the clock. Its body's bytes start no
        header clock: they may come after the previous request was answered (pipelined
        requests), and server.http.body_timeout bounds them."""
        self._idle = False
        self._disarm()

    def request_done(self) -> None:
        """The handler answered: the next byte starts the next request's clock."""
        self._idle = True

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        guard = self._guard
        guard.logs.warning(
            "headers:" + guard.name,
            "%s: a client did not send a request's headers within %gs "
            "(server.%s.header_timeout); disconnected it",
            guard.name,
            guard.header_timeout,
            guard.name,
        )
        if self._transport is not None:
            self._transport.abort()


class GuardedSite(web.BaseSite):
    """``web.TCPSite`` with a connection cap and a header deadline (module docstring).

    One per runner: it wraps the runner's request factory and handler to see when a
    request's headers are in and when it is answered.
    """

    __slots__ = ("_guard", "_host", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        name: str,
        max_connections: int,
        header_timeout: float,
        refusal: bytes,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        """SO_REUSEPORT: processes bound to the same port share its connections
        (``eventmesh run --workers``)."""
        self._guard = _Guard(name, max_connections, header_timeout, refusal)

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (the configured one until started)."""
        server = self._server
        sockets = getattr(server, "sockets", None) if server is not None else None
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        guard = self._guard
        open_ = guard.open
        make_request = server.request_factory
        handle = server.request_handler

        def request_factory(
            message: Any, payload: Any, protocol: Any, writer: Any, task: Any
        ) -> web.BaseRequest:
            connection = open_.get(protocol)
            if connection is not None:
                connection.headers_in()
            return make_request(message, payload, protocol, writer, task)

        async def request_handler(request: web.BaseRequest) -> web.StreamResponse:
            try:
                return await handle(request)
            finally:
                connection = open_.get(request.protocol)
                if connection is not None:
                    connection.request_done()

        server.request_factory = request_factory
        server.request_handler = request_handler

        def protocol() -> asyncio.Protocol:
            return _Connection(guard, server())

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            ssl=self._ssl_context,
            reuse_port=self._reuse_port or None,
            # A TLS handshake is held to the same deadline as the headers that follow it.
            ssl_handshake_timeout=guard.header_timeout if self._ssl_context else None,
        )
