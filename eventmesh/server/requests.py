"""The HTTP API's request-reply route: one event in, the first reply to it out.

=======  ================================  ==============================================
method   path                              does
=======  ================================  ==============================================
POST     /request/{topic}                  publish one event as a request (``timeout``,
                                           seconds, in the query) and answer 200 with the
                                           first reply, in the request's content mode
=======  ================================  ==============================================

The event comes as a publish does, in binary or structured mode (a batch is 415); the
mesh adds ``correlationid`` and ``replyto`` (:mod:`eventmesh._requests`) and stores it.
The reply is answered in the mode the request came in: binary (``ce-`` headers and the
data as the body) or structured (``application/cloudevents+json``); a reply without
``datacontenttype`` is answered structured even to a binary request, since an HTTP
answer always carries a ``Content-Type``, which binary mode would make its
``datacontenttype``. No reply within
the timeout is a 504 (``RequestTimeoutError``); a timeout outside 0 to
``limits.max_request_timeout`` a 400 naming ``timeout``; too many requests waiting a
429 (``limits.max_pending_requests``). A request whose client hangs up stops waiting
(within half a second). With auth on, a request needs ``publish`` on the
topic, as a publish does; the reply comes back on the same connection, so no grant on
the reply inbox is needed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import anyio
from aiohttp import web

from eventmesh._requests import DEFAULT_TIMEOUT
from eventmesh.auth import Guard, Principal
from eventmesh.bindings.http import content_mode, from_http_one, to_binary, to_structured
from eventmesh.errors import ConfigError
from eventmesh.event import Event
from eventmesh.mesh import Mesh
from eventmesh.observability.propagation import transport_parent

__all__ = ["RequestApi"]

_GONE_CHECK: Final = 0.5
"""Seconds between looks at whether a waiting request's client is still connected."""


async def _until_gone(request: web.Request, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` once the client of ``request`` hangs up, so a request whose
    caller left stops holding a place under limits.max_pending_requests."""
    while True:
        await anyio.sleep(_GONE_CHECK)
        transport = request.transport
        if transport is None or transport.is_closing():
            scope.cancel()
            return


class RequestApi:
    """The route, over ``mesh``. ``caller`` gives a request's principal (auth on),
    ``body`` reads a request body within the listener's limits, and ``max_event_size``
    bounds the event as a publish's is bounded."""

    def __init__(
        self,
        mesh: Mesh,
        guard: Guard,
        caller: Callable[[web.Request], Principal],
        body: Callable[[web.Request], Awaitable[bytes]],
        max_event_size: int | None,
    ) -> None:
        self.mesh = mesh
        self.guard = guard
        self.caller = caller
        self.body = body
        self.max_event_size = max_event_size

    def routes(
        self, *, expect: Callable[[web.Request], Awaitable[web.StreamResponse | None]]
    ) -> list[web.RouteDef]:
        """The route; ``expect`` answers a POST's ``Expect: 100-continue``."""
        return [web.post("/request/{topic}", self.request, expect_handler=expect)]

    def _timeout(self, request: web.Request) -> float:
        raw = request.query.get("timeout")
        if raw is None:
            return min(DEFAULT_TIMEOUT, float(self.mesh.config.limits.max_request_timeout))
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(
                f"must be a number of seconds, got {raw[:40]!r}", key="timeout"
            ) from None

    async def request(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        if self.guard.enabled:
            self.guard.check(self.caller(request), "publish", topic=topic)
        timeout = self._timeout(request)
        body = await self.body(request)
        headers = request.headers
        event = from_http_one(headers, body, max_event_size=self.max_event_size)
        reply: Event | None = None
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_until_gone, request, tg.cancel_scope)
            try:
                with transport_parent(headers.get("traceparent"), headers.get("tracestate")):
                    reply = await self.mesh.request(topic, event, timeout=timeout)
            except Exception as exc:  # raised below, not as an exception group
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if reply is None:  # the client went away: its request no longer waits
            return web.Response(status=499)
        if content_mode(headers) == "binary" and reply.datacontenttype is not None:
            out_headers, out = to_binary(reply)
        else:
            out_headers, out = to_structured(reply)
        return web.Response(body=out, status=200, headers=out_headers)
