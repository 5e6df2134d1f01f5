"""``HttpClient.dead_letters(topic)``: the dead-letter calls over the sidecar's HTTP API
(``GET /topics/{topic}/events``, ``.../events/{id}``, ``POST
/deadletters/{topic}/replay``), answering what the embedded mesh answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import msgspec

from eventmesh.connectors.base import StoredEvent
from eventmesh.deadletters import (
    DeadLetters,
    Page,
    ReplayResult,
    StoredEvents,
    format_cursor,
    selection,
)
from eventmesh.event import decode_json

__all__ = ["RemoteDeadLetters"]

Request = Callable[..., Awaitable[bytes]]
"""``HttpClient._request``: (method, path, json=...) -> the answer's body."""


class _Stored(msgspec.Struct, frozen=True):
    partition: int
    offset: int
    timestamp: datetime | None
    event: msgspec.Raw


class _Page(msgspec.Struct, frozen=True):
    events: list[_Stored]
    next: str | None = None


_decode_page = msgspec.json.Decoder(_Page).decode
_decode_result = msgspec.json.Decoder(ReplayResult).decode


def _stored(item: _Stored) -> StoredEvent:
    stamp = None if item.timestamp is None else item.timestamp.timestamp()
    return StoredEvent(decode_json(item.event), item.partition, item.offset, stamp)


class RemoteDeadLetters(DeadLetters):
    """:class:`~eventmesh.deadletters.DeadLetters` through a sidecar; ``request`` sends
    one request and raises the error its problem body names."""

    def __init__(self, request: Request, topic: str) -> None:
        self._request = request
        self.topic = topic
        self._path = quote(topic, safe="")

    def __repr__(self) -> str:
        return f"<RemoteDeadLetters {self.topic!r}>"

    async def list(
        self,
        *,
        since: datetime | None = None,
        after: str | Mapping[int, int] | None = None,
        limit: int = 100,
    ) -> Page:
        query: dict[str, str] = {"limit": str(limit)}
        if since is not None:
            query["since"] = since.isoformat()
        if after:
            query["after"] = after if isinstance(after, str) else format_cursor(after)
        body = await self._request("GET", f"/topics/{self._path}/events?{urlencode(query)}")
        page = _decode_page(body)
        return Page([_stored(item) for item in page.events], page.next)

    async def show(self, id: str) -> StoredEvents:
        body = await self._request("GET", f"/topics/{self._path}/events/{quote(id, safe='')}")
        return [_stored(item) for item in _decode_page(body).events]

    async def replay(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        reason: str | None = None,
        subscription: str | None = None,
        limit: int = 1000,
        dry_run: bool = False,
    ) -> ReplayResult:
        chosen = selection(
            since=since,
            until=until,
            reason=reason,
            subscription=subscription,
            limit=limit,
            dry_run=dry_run,
        )
        fields: dict[str, Any] = {
            k: v for k, v in msgspec.structs.asdict(chosen).items() if v is not None
        }
        body = await self._request(
            "POST", f"/deadletters/{self._path}/replay", json=msgspec.to_builtins(fields)
        )
        return _decode_result(body)
