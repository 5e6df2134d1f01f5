"""The HTTP API's routes for browsing topics and replaying dead letters.

=======  ================================  ==============================================
method   path                              does
=======  ================================  ==============================================
GET      /topics/{topic}/events            browse without consuming: ``since`` (or
                                           ``from``; RFC 3339), ``after`` (a cursor),
                                           ``limit``
GET      /topics/{topic}/events/{id}       the retained events with this id (404: none)
POST     /deadletters/{topic}/replay       republish dead letters to their topics
=======  ================================  ==============================================

Browsing answers ``{"events": [{"partition", "offset", "timestamp", "event"}], "next"}``
(``event`` in the JSON event format, ``next`` the cursor for the next page); a topic
whose connector cannot browse is a 400 that says so. Replay takes a JSON body shaped
like :class:`eventmesh.deadletters.ReplaySelection` and answers a
:class:`~eventmesh.deadletters.ReplayResult`.

With auth on, browsing and showing need ``subscribe`` on the topic (any group: reading
without a group is what a subscriber of the topic may do anyway); a replay needs
``subscribe`` on the dead-letter topic and ``publish`` on every topic it would
republish to, checked before anything is published (a dry run is checked too).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
from aiohttp import web

from eventmesh.auth import Action, Guard, Principal
from eventmesh.deadletters import (
    MAX_PAGE,
    ReplaySelection,
    browse,
    direct_publish,
    find,
    parse_time,
    replay,
    stored_json,
)
from eventmesh.errors import ConfigError
from eventmesh.mesh import Mesh
from eventmesh.server.subscriptions import convert_body

__all__ = ["DeadLetterApi"]

_JSON: Final = "application/json"
_encoder = msgspec.json.Encoder()


def _json(body: object) -> web.Response:
    return web.Response(body=_encoder.encode(body), content_type=_JSON)


class DeadLetterApi:
    """The three routes, over ``mesh``. ``caller`` gives a request's principal (auth
    on) and ``body`` reads a request body within the listener's limits."""

    def __init__(
        self,
        mesh: Mesh,
        guard: Guard,
        caller: Callable[[web.Request], Principal],
        body: Callable[[web.Request], Awaitable[bytes]],
    ) -> None:
        self.mesh = mesh
        self.guard = guard
        self.caller = caller
        self.body = body

    def routes(
        self, *, expect: Callable[[web.Request], Awaitable[web.StreamResponse | None]]
    ) -> list[web.RouteDef]:
        """The routes; ``expect`` answers a POST's ``Expect: 100-continue``."""
        return [
            web.get("/topics/{topic}/events", self.browse, allow_head=False),
            web.get("/topics/{topic}/events/{id:.+}", self.show, allow_head=False),
            web.post("/deadletters/{topic}/replay", self.replay, expect_handler=expect),
        ]

    def _check(self, request: web.Request, action: Action, topic: str) -> None:
        if self.guard.enabled:
            self.guard.check(self.caller(request), action, topic=topic)

    async def browse(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        self._check(request, "subscribe", topic)
        query = request.query
        key = "since" if "since" in query else "from"  # 'from' is taken as 'since'
        since = query.get(key)
        raw_limit = query.get("limit", "100")
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise ConfigError(
                f"must be an integer from 1 to {MAX_PAGE}, got {raw_limit!r}", key="limit"
            )
        page = await browse(
            self.mesh.connector(topic, admit=False),
            topic,
            since=None if since is None else parse_time(since, key=key),
            after=query.get("after"),
            limit=limit,
        )
        return _json({"events": [stored_json(s) for s in page.events], "next": page.next})

    async def show(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        self._check(request, "subscribe", topic)
        found = await find(self.mesh.connector(topic, admit=False), topic, request.match_info["id"])
        return _json({"events": [stored_json(s) for s in found]})

    async def replay(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        self._check(request, "subscribe", topic)
        raw = await self.body(request)
        try:
            data = msgspec.json.decode(raw) if raw.strip() else {}
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ConfigError(f"the request body is not valid JSON: {exc!r}") from exc
        if not isinstance(data, dict):
            raise ConfigError("the request body must be a JSON object")
        chosen = convert_body(data, ReplaySelection)

        def authorize(origin: str) -> None:
            self._check(request, "publish", origin)
            self.mesh.connector(origin)  # a topic the mesh refuses fails before any publish

        result = await replay(
            self.mesh.connector(topic, admit=False),
            topic,
            chosen,
            publish=direct_publish(self.mesh),
            authorize=authorize,
        )
        return _json(result)
