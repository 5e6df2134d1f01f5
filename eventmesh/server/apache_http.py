"""Apache EventMesh's HTTP API: ``POST /`` on the sidecar's HTTP port, routed by the
``code`` header, form-encoded in, JSON ``{"retCode", "retMsg", "resTime"}`` out.

Codes 104 (publish), 206/207 (webhook subscribe/unsubscribe), 203 (heartbeat) and 101
(request-reply); failures are Apache EventMesh's ``retCode`` values answered with HTTP
200, as Apache EventMesh does. Every form field is bounded. See docs/sidecar.md,
'Coming from Apache EventMesh'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final

import msgspec
from aiohttp import web

from eventmesh.auth import CertIdentity, Guard, Principal
from eventmesh.config import HttpListener
from eventmesh.errors import (
    ConfigError,
    ContentTypeError,
    EventMeshError,
    EventTooLargeError,
    EventValidationError,
)
from eventmesh.event import Event, decode_json
from eventmesh.server._authn import check_reply_inboxes
from eventmesh.server._ratelimit import LogLimit
from eventmesh.server.apache_wire import (
    BAD_HEADER,
    RESUBSCRIBE,
    SUCCESS,
    ApacheConsumers,
    authenticate,
    heartbeat_entries,
    message_of,
    parse_items,
    request_timeout,
    status_of,
    without_metadata,
)

if TYPE_CHECKING:
    from eventmesh.mesh import Mesh

__all__ = ["ApacheHttp"]

log = logging.getLogger(__name__)

_FORM: Final = ("application/x-www-form-urlencoded", "multipart/form-data")
_encoder = msgspec.json.Encoder()
_MAX_ID: Final = 1024
"""Characters of an EventMeshMessage's ``uniqueid`` (the event's id)."""


def _reply(code: str | int, message: str, **extra: Any) -> web.Response:
    body = {"retCode": int(code), "retMsg": message, "resTime": int(time.time() * 1000)}
    body.update(extra)
    return web.Response(body=_encoder.encode(body), content_type="application/json")


class ApacheHttp:
    """Serves ``POST /`` with :meth:`handle` (module docstring)."""

    def __init__(
        self, mesh: Mesh, consumers: ApacheConsumers, guard: Guard, settings: HttpListener
    ) -> None:
        self.mesh = mesh
        self.consumers = consumers
        self.guard = guard
        self.settings = settings
        self.logs = LogLimit(log)
        self._routes = {
            "104": self._publish,
            "101": self._request,
            "206": self._subscribe,
            "207": self._unsubscribe,
            "203": self._heartbeat,
        }

    async def handle(self, request: web.Request) -> web.Response:
        code = request.headers.get("code", "")
        try:
            # Before anything is said of the request (an unknown code included) and
            # before its body is read: with auth on, nothing here answers a stranger.
            principal = self._principal(request)
            route = self._routes.get(code.strip())
            if route is None:
                return _reply(
                    BAD_HEADER,
                    f"request code {code[:20]!r} is not one this sidecar serves on / (104 "
                    "publish, 101 request-reply, 206 subscribe, 207 unsubscribe, 203 "
                    "heartbeat)",
                )
            form = await self._form(request)
            return await route(request, form, principal)
        except Exception as exc:
            if not isinstance(exc, EventMeshError):
                self.logs.log(
                    logging.ERROR, "unexpected", "Apache EventMesh request failed", exc_info=exc
                )
            else:
                log.debug("Apache EventMesh request %s answered %s: %s", code, status_of(exc), exc)
            return _reply(status_of(exc), message_of(exc)[:1000])

    async def expect(self, request: web.Request) -> web.Response | None:
        """``Expect: 100-continue`` on ``POST /``: a caller without acceptable credentials
        is answered (retCode 20) and disconnected before it is invited to send its body."""
        try:
            self._principal(request)
        except EventMeshError as exc:
            response = _reply(status_of(exc), message_of(exc)[:1000])
            response.force_close()
            return response
        if request.headers.get("Expect", "").lower() != "100-continue":
            response = _reply(BAD_HEADER, "the only Expect this sidecar answers is 100-continue")
            response.force_close()
            return response
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None

    async def _form(self, request: web.Request) -> Any:
        if request.content_type not in _FORM:
            raise ContentTypeError(
                f"Apache EventMesh requests are form-encoded; got {request.content_type!r:.60}"
            )
        try:
            async with asyncio.timeout(float(self.settings.body_timeout)):
                return await request.post()
        except TimeoutError:
            raise EventValidationError(
                f"the request body did not arrive within {float(self.settings.body_timeout):g}s "
                "(server.http.body_timeout)"
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise EventTooLargeError(
                f"the request body is above the limit of {self.settings.max_request_size} "
                "bytes (server.http.max_request_size)"
            ) from None

    def _principal(self, request: web.Request) -> Principal:
        guard = self.guard
        cert = None
        if guard.enabled and request.transport is not None:
            cert = CertIdentity.from_peercert(request.transport.get_extra_info("peercert"))
        headers = request.headers
        return authenticate(
            guard,
            authorization=headers.get("Authorization"),
            username=headers.get("username"),
            passwd=headers.get("passwd"),
            cert=cert,
        )

    @staticmethod
    def _optional(form: Any, name: str) -> str | None:
        value = form.get(name)
        return value if isinstance(value, str) and value else None

    def _field(self, form: Any, name: str) -> str:
        value = self._optional(form, name)
        if value is None:
            raise ConfigError(f"the form has no {name!r} field (or it is empty)")
        return value

    def _event(self, request: web.Request, form: Any) -> tuple[str, Event]:
        content = self._field(form, "content")
        limit = self.settings.max_event_size
        if len(content) > limit:
            raise EventTooLargeError(
                f"the content is {len(content)} characters, above the limit of {limit} "
                "(server.http.max_event_size)"
            )
        topic = self._optional(form, "topic")
        kind = request.headers.get("protocoltype", "")
        if topic is not None and kind != "cloudevents":  # an EventMeshMessage
            unique = self._optional(form, "uniqueid")
            if unique is not None and len(unique) > _MAX_ID:
                raise EventValidationError(
                    f"the uniqueid is {len(unique)} characters, more than {_MAX_ID}",
                    attribute="id",
                )
            event = Event(
                type="eventmeshmessage",
                source="/",
                subject=topic,
                datacontenttype="text/plain",
                data=content,
            )
            return topic, event.replace(id=unique) if unique else event
        event = without_metadata(decode_json(content))
        if event.subject is None:
            raise EventValidationError(
                "the CloudEvent has no subject: Apache EventMesh clients name the topic in "
                "the subject; build the event withSubject(topic)",
                attribute="subject",
            )
        return event.subject, event

    async def _publish(self, request: web.Request, form: Any, principal: Principal) -> web.Response:
        topic, event = self._event(request, form)
        if self.guard.enabled:
            self.guard.check(principal, "publish", topic=topic)
            check_reply_inboxes(self.guard, principal, (event,))
        await self.mesh.publish(topic, event)
        return _reply(SUCCESS, "success")

    async def _request(self, request: web.Request, form: Any, principal: Principal) -> web.Response:
        topic, event = self._event(request, form)
        if self.guard.enabled:
            self.guard.check(principal, "publish", topic=topic)
        ttl = self._optional(form, "ttl")
        timeout = request_timeout(self.mesh, ttl)
        reply = await self.mesh.request(topic, event, timeout=timeout)
        data = reply.data
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data).decode("utf-8", "replace")
        elif isinstance(data, str):
            body = data
        else:
            body = "" if data is None else _encoder.encode(data).decode("utf-8")
        properties = {name: str(value) for name, value in reply.extensions.items()}
        properties.update(id=reply.id, source=reply.source, type=reply.type)
        message = {"topic": reply.subject or topic, "body": body, "properties": properties}
        return _reply(SUCCESS, _encoder.encode(message).decode("utf-8"))

    async def _subscribe(
        self, request: web.Request, form: Any, principal: Principal
    ) -> web.Response:
        group = self._field(form, "consumerGroup")
        url = self._field(form, "url")
        topics = self._field(form, "topic")
        items = parse_items(topics, where="the topic field")
        await self.consumers.subscribe_webhook(principal, group, items, url)
        return _reply(SUCCESS, "success")

    async def _unsubscribe(
        self, request: web.Request, form: Any, principal: Principal
    ) -> web.Response:
        group = self._field(form, "consumerGroup")
        url = self._field(form, "url")
        topics = self._field(form, "topic")
        names = [item.topic for item in parse_items(topics, where="the topic field")]
        ended = await self.consumers.unsubscribe(principal, group, names, url)
        return _reply(SUCCESS, f"success: {ended} ended")

    async def _heartbeat(
        self, request: web.Request, form: Any, principal: Principal
    ) -> web.Response:
        group = self._field(form, "consumerGroup")
        text = self._optional(form, "heartbeatEntities")
        entries = heartbeat_entries(text, where="heartbeatEntities") if text else []
        if self.consumers.alive(principal, group, entries):
            return _reply(SUCCESS, "success")
        return _reply(RESUBSCRIBE, "not subscribed here: subscribe again")
