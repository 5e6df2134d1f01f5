"""Apache EventMesh's gRPC API (``org.apache.eventmesh.cloudevents.v1``) on the sidecar's
gRPC server, next to its own ``eventmesh.v1.EventMesh`` service.

Its Publisher, Consumer and Heartbeat services take CloudEvents in the protobuf format
and each call becomes a Mesh call (the shared rules: :mod:`eventmesh.server.apache_wire`).
A failure is a ``statuscode`` attribute in the answer, never a gRPC error, since the
Apache SDK reads only those attributes and any gRPC error ends its stream consumption
for good. Streams are at-most-once: the SDK sends no acks, so an event is acked once its
write succeeded. See docs/sidecar.md, 'Coming from Apache EventMesh'.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import grpc
import grpc.aio
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError
from grpc.aio import EOF as _EOF  # type: ignore[attr-defined]  # grpc-stubs lacks it

from eventmesh._generated.apache.v1 import eventmesh_service_pb2 as apache_pb
from eventmesh._requests import CORRELATION_ID, reply_address, send_replies
from eventmesh._status import grpc_code
from eventmesh.auth import CertIdentity, Guard, Principal
from eventmesh.bindings.protobuf import CloudEvent, CloudEventBatch, from_proto, to_proto
from eventmesh.errors import (
    ConfigError,
    DeliveryError,
    EventMeshError,
    EventTooLargeError,
    EventValidationError,
    LimitExceededError,
)
from eventmesh.event import Event
from eventmesh.server._authn import check_reply_inboxes
from eventmesh.server._ratelimit import LogLimit
from eventmesh.server.apache_wire import (
    BAD_BODY,
    RESUBSCRIBE,
    SUCCESS,
    ApacheConsumers,
    Item,
    authenticate,
    forget_group,
    heartbeat_entries,
    message_of,
    parse_items,
    request_timeout,
    status_of,
    strip_metadata,
)

if TYPE_CHECKING:
    from eventmesh.mesh import Mesh
    from eventmesh.subscription import Delivery, Subscription

__all__ = ["MAX_ATTRIBUTES", "MAX_BATCH", "add_apache_services"]

log = logging.getLogger(__name__)

_SERVICES: Final = apache_pb.DESCRIPTOR.services_by_name
PUBLISHER: Final = _SERVICES["PublisherService"].full_name
CONSUMER: Final = _SERVICES["ConsumerService"].full_name
HEARTBEAT: Final = _SERVICES["HeartbeatService"].full_name

MAX_ATTRIBUTES: Final = 256
"""Attributes one CloudEvent of a request may carry, client metadata included."""
MAX_BATCH: Final = 1000
"""Events one batchPublish may carry."""
_REPLY: Final = "subscription_reply"
MAX_ASKED: Final = 10_000
"""Requests pushed on one stream whose reply it may still send; past this, the oldest
are forgotten (a reply to one of them is then dropped, and its requester times out)."""
_Context = grpc.aio.ServicerContext[Any, Any]


def _decoder(cls: Any) -> Callable[[bytes], Any]:
    """``cls.FromString`` that returns None for bytes that are not its message."""
    parse = cls.FromString

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, RecursionError, ValueError):
            return None

    return decode


def _answer(
    request: CloudEvent | None, code: str, message: str, *, echo: bool = False
) -> CloudEvent:
    """The CloudEvent that answers ``request``: its id, source and type (the whole request
    but its ``passwd`` with ``echo``), and the status attributes."""
    if echo and request is not None:
        msg = CloudEvent()
        msg.CopyFrom(request)
        msg.attributes.pop("passwd", None)
    else:
        msg = CloudEvent(
            id=request.id if request is not None and request.id else uuid.uuid4().hex,
            source=request.source if request is not None and request.source else "/",
            spec_version="1.0",
            type=request.type if request is not None and request.type else "org.apache.eventmesh",
        )
    if not msg.id:
        msg.id = uuid.uuid4().hex
    if not msg.source:
        msg.source = "/"
    if not msg.spec_version:
        msg.spec_version = "1.0"
    if not msg.type:
        msg.type = "org.apache.eventmesh"
    attributes = msg.attributes
    attributes["statuscode"].ce_string = code
    attributes["responsemessage"].ce_string = message[:1000]
    attributes["time"].ce_timestamp.GetCurrentTime()
    return msg


def _stream_answer(request: CloudEvent | None, code: str, message: str) -> CloudEvent:
    """An answer on a stream: the SDK reads a message without ``seqnum`` as the reply to a
    subscription and parses its data as a JSON list, so it always carries one."""
    msg = _answer(request, code, message, echo=True)
    for name in ("seqnum", "uniqueid"):
        msg.attributes.pop(name, None)
    if msg.WhichOneof("data") != "text_data" or not msg.text_data.lstrip().startswith("["):
        msg.text_data = "[]"
    msg.attributes["datacontenttype"].ce_string = "application/json"
    return msg


def _text(attributes: Any, name: str) -> str | None:
    value = attributes.get(name)
    if value is None or value.WhichOneof("attr") != "ce_string":
        return None
    text: str = value.ce_string
    return text or None


class ApacheServicer:
    """The three Apache EventMesh services over ``mesh`` (module docstring)."""

    def __init__(
        self, mesh: Mesh, consumers: ApacheConsumers, guard: Guard, max_event_size: int | None
    ) -> None:
        self.mesh = mesh
        self.consumers = consumers
        self.guard = guard
        self.max_event_size = max_event_size
        self.logs = LogLimit(log)

    # -- shared --------------------------------------------------------------------------

    def _principal(self, context: _Context, request: CloudEvent) -> Principal:
        guard = self.guard
        if not guard.enabled:
            return authenticate(guard, authorization=None, username=None, passwd=None)
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                authorization = value
                break
        cert = None
        if guard.auth.client_certs is not None:
            cert = CertIdentity.from_grpc(context.auth_context())
        attributes = request.attributes
        return authenticate(
            guard,
            authorization=authorization,
            username=_text(attributes, "username"),
            passwd=_text(attributes, "passwd"),
            cert=cert,
        )

    def _event(self, msg: CloudEvent, where: str) -> tuple[str, Event]:
        """The topic (``subject``) and the event of a published CloudEvent, without its
        client metadata."""
        if len(msg.attributes) > MAX_ATTRIBUTES:
            raise LimitExceededError(
                f"{where} has {len(msg.attributes)} attributes, more than {MAX_ATTRIBUTES}"
            )
        strip_metadata(msg.attributes)
        limit = self.max_event_size
        if limit is not None and (size := msg.ByteSize()) > limit:
            raise EventTooLargeError(
                f"{where} is {size} bytes, above the limit of {limit} "
                "(server.grpc.max_event_size); send smaller events, or data by reference"
            )
        topic = _text(msg.attributes, "subject")
        if topic is None:
            raise EventValidationError(
                f"{where} has no subject: Apache EventMesh clients name the topic in the "
                "CloudEvent's subject; build the event withSubject(topic)",
                attribute="subject",
            )
        return topic, from_proto(msg)

    def _failure(self, request: CloudEvent | None, exc: BaseException) -> CloudEvent:
        if not isinstance(exc, EventMeshError):
            self.logs.log(
                logging.ERROR, "unexpected", "Apache EventMesh gRPC call failed", exc_info=exc
            )
        else:
            log.debug("Apache EventMesh gRPC call answered %s: %s", status_of(exc), exc)
        return _answer(request, status_of(exc), message_of(exc))

    # -- publishing ----------------------------------------------------------------------

    async def _publish(self, request: CloudEvent | None, context: _Context) -> None:
        if request is None:
            raise EventValidationError("the request is not a protobuf CloudEvent")
        principal = self._principal(context, request)
        topic, event = self._event(request, "the event")
        if self.guard.enabled:
            self.guard.check(principal, "publish", topic=topic)
            check_reply_inboxes(self.guard, principal, (event,))
        await self.mesh.publish(topic, event)

    async def _publish_batch(self, request: CloudEventBatch | None, context: _Context) -> int:
        if request is None:
            raise EventValidationError("the request is not a protobuf CloudEventBatch")
        if len(request.events) > MAX_BATCH:
            raise LimitExceededError(
                f"the batch has {len(request.events)} events, more than {MAX_BATCH}; "
                "send it in parts"
            )
        if not request.events:
            return 0
        principal = self._principal(context, request.events[0])
        by_topic: dict[str, list[Event]] = {}
        for index, msg in enumerate(request.events):
            try:
                topic, event = self._event(msg, f"event {index} of the batch")
            except EventValidationError as exc:
                raise exc.in_batch(index) from exc
            by_topic.setdefault(topic, []).append(event)
        if self.guard.enabled:
            for topic, events in by_topic.items():
                self.guard.check(principal, "publish", topic=topic)
                check_reply_inboxes(self.guard, principal, events)
        for topic, events in by_topic.items():
            await self.mesh.publish(topic, events)
        return len(request.events)

    async def publish(self, request: CloudEvent | None, context: _Context) -> CloudEvent:
        try:
            await self._publish(request, context)
        except Exception as exc:
            return self._failure(request, exc)
        return _answer(request, SUCCESS, "success")

    async def batch_publish(self, request: CloudEventBatch | None, context: _Context) -> CloudEvent:
        head = request.events[0] if request is not None and request.events else None
        try:
            count = await self._publish_batch(request, context)
        except Exception as exc:
            return self._failure(head, exc)
        return _answer(head, SUCCESS, f"success: {count} events")

    async def publish_one_way(self, request: CloudEvent | None, context: _Context) -> Empty:
        try:
            await self._publish(request, context)
        except Exception as exc:
            await self._abort(context, exc)
        return Empty()

    async def batch_publish_one_way(
        self, request: CloudEventBatch | None, context: _Context
    ) -> Empty:
        try:
            await self._publish_batch(request, context)
        except Exception as exc:
            await self._abort(context, exc)
        return Empty()

    async def _abort(self, context: _Context, exc: BaseException) -> None:
        if not isinstance(exc, EventMeshError):
            self.logs.log(
                logging.ERROR, "unexpected", "Apache EventMesh gRPC call failed", exc_info=exc
            )
        await context.abort(grpc_code(exc), message_of(exc))

    async def request_reply(self, request: CloudEvent | None, context: _Context) -> CloudEvent:
        try:
            if request is None:
                raise EventValidationError("the request is not a protobuf CloudEvent")
            ttl = _text(request.attributes, "ttl")
            seqnum = _text(request.attributes, "seqnum") or "0"
            principal = self._principal(context, request)
            topic, event = self._event(request, "the request")
            if self.guard.enabled:
                self.guard.check(principal, "publish", topic=topic)
            timeout = request_timeout(self.mesh, ttl)
            reply = await self.mesh.request(topic, event, timeout=timeout)
            msg = to_proto(reply)
        except Exception as exc:
            return self._failure(request, exc)
        attributes = msg.attributes
        # With seqnum and uniqueid the SDK reads the answer as an event, not as the
        # answer to a subscription.
        attributes["seqnum"].ce_string = seqnum
        attributes["uniqueid"].ce_string = reply.id
        attributes["statuscode"].ce_string = SUCCESS
        attributes["responsemessage"].ce_string = "success"
        if "time" not in attributes:
            attributes["time"].ce_timestamp.GetCurrentTime()
        return msg

    # -- consuming -----------------------------------------------------------------------

    def _group(self, request: CloudEvent) -> str:
        group = _text(request.attributes, "consumergroup")
        if group is None:
            raise ConfigError(
                "the request has no consumergroup attribute; configure the client's consumerGroup"
            )
        return group

    def _items(self, request: CloudEvent, url: str | None = None) -> list[Item]:
        if request.WhichOneof("data") != "text_data":
            raise ConfigError("the subscription list (the request's text_data) is missing")
        return parse_items(request.text_data, where="the subscription list", url=url)

    async def subscribe(self, request: CloudEvent | None, context: _Context) -> CloudEvent:
        try:
            if request is None:
                raise EventValidationError("the request is not a protobuf CloudEvent")
            principal = self._principal(context, request)
            group = self._group(request)
            url = _text(request.attributes, "url")
            if url is None or url == "grpc_stream":
                raise ConfigError(
                    "a webhook subscription needs the url attribute (the webhook); use "
                    "subscribeStream for a stream"
                )
            items = self._items(request)
            await self.consumers.subscribe_webhook(principal, group, items, url)
        except Exception as exc:
            return self._failure(request, exc)
        return _answer(request, SUCCESS, "success", echo=True)

    async def unsubscribe(self, request: CloudEvent | None, context: _Context) -> CloudEvent:
        try:
            if request is None:
                raise EventValidationError("the request is not a protobuf CloudEvent")
            principal = self._principal(context, request)
            group = self._group(request)
            url = _text(request.attributes, "url")
            topics = [item.topic for item in self._items(request)]
            ended = await self.consumers.unsubscribe(principal, group, topics, url)
        except Exception as exc:
            return self._failure(request, exc)
        return _answer(request, SUCCESS, f"success: {ended} ended", echo=True)

    async def heartbeat(self, request: CloudEvent | None, context: _Context) -> CloudEvent:
        try:
            if request is None:
                raise EventValidationError("the request is not a protobuf CloudEvent")
            principal = self._principal(context, request)
            group = self._group(request)
            entries: list[tuple[str, str | None]] = []
            if request.WhichOneof("data") == "text_data" and request.text_data.strip():
                entries = heartbeat_entries(request.text_data, where="the heartbeat list")
            alive = self.consumers.alive(principal, group, entries)
        except Exception as exc:
            return self._failure(request, exc)
        if alive:
            return _answer(request, SUCCESS, "success")
        return _answer(request, RESUBSCRIBE, "not subscribed here: subscribe again")

    async def subscribe_stream(self, _requests: Any, context: _Context) -> None:
        stream = _Stream(self, context)
        try:
            await stream.run()
        finally:
            with anyio.CancelScope(shield=True):
                await stream.close()


class _Stream:
    """One ``subscribeStream`` call: one consumer group's subscriptions, pushed out."""

    def __init__(self, servicer: ApacheServicer, context: _Context) -> None:
        self.servicer = servicer
        self.context = context
        self.group = ""
        self.principal: Principal | None = None
        self._subs: dict[str, tuple[Subscription, anyio.CancelScope, bool]] = {}
        self._asked: dict[tuple[str, str], None] = {}
        """(reply inbox, correlation id) of each request pushed on this stream and not
        answered yet, oldest first: the only replies the stream may send."""
        self._seq = itertools.count(1)
        self._lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None

    def topics(self) -> Iterable[str]:
        return self._subs.keys()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                while True:
                    request = await self.context.read()
                    if request is _EOF:
                        break
                    await self._receive(request)
            finally:
                tg.cancel_scope.cancel()

    async def _write(self, msg: CloudEvent) -> None:
        async with self._lock:
            await self.context.write(msg)

    async def _receive(self, request: CloudEvent | None) -> None:
        if request is None:
            await self._write(_stream_answer(None, BAD_BODY, "the message is not a CloudEvent"))
            return
        if _text(request.attributes, "submessagetype") == _REPLY:
            await self._reply(request)
            return
        try:
            await self._subscribe(request)
        except Exception as exc:
            self.servicer._failure(request, exc)  # logs it
            await self._write(_stream_answer(request, status_of(exc), message_of(exc)))
            return
        await self._write(_stream_answer(request, SUCCESS, "success"))

    async def _reply(self, request: CloudEvent) -> None:
        """A consumer's answer to an event it was pushed: the SDK sends it with the
        pushed event's attributes, so a request's ``replyto`` inbox and
        ``correlationid`` come back with it and the reply goes to the waiting
        ``mesh.request``. Only a request pushed on this stream, and only once, may be
        answered: anything else (a reply to no request, or to one this stream was never
        sent, as a stream that never logged in could forge from what a subscriber of
        the request topic sees) is dropped."""
        try:
            strip_metadata(request.attributes)
            event = from_proto(request)
            key = _asked_key(event)
            if key is None or key not in self._asked:
                log.debug("Apache EventMesh stream: a reply to no request it was sent dropped")
                return
            del self._asked[key]
            await send_replies(self.servicer.mesh.publish, event, event, None)
        except Exception as exc:
            self.servicer._failure(request, exc)  # logs it; the SDK reads no answer here

    async def _subscribe(self, request: CloudEvent) -> None:
        servicer = self.servicer
        group = servicer._group(request)
        if self.principal is None:
            self.principal = servicer._principal(self.context, request)
            self.group = group
            servicer.consumers.add_stream(self)
        elif group != self.group:
            raise ConfigError(
                f"this stream serves consumer group {self.group!r}, not {group!r}; open a "
                "stream per consumer group",
            )
        items = servicer._items(request)
        guard = servicer.guard
        if guard.enabled:
            for item in items:
                guard.check(self.principal, "subscribe", topic=item.topic, group=group)
        assert self._tg is not None
        for item in items:
            if item.topic in self._subs:
                continue
            mesh_group = servicer.consumers.stream_group(group, item.mode)
            subscription = servicer.mesh.subscribe(
                item.topic, mesh_group, name=f"apache/{group}/{item.topic}"
            )
            try:
                await subscription.start()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await subscription.close()
                raise
            scope = anyio.CancelScope()
            self._subs[item.topic] = (subscription, scope, mesh_group != group)
            self._tg.start_soon(self._pump, item.topic, subscription, scope)

    async def _pump(self, topic: str, subscription: Subscription, scope: anyio.CancelScope) -> None:
        with scope:
            iterator = aiter(subscription)
            try:
                while (delivery := await anext(iterator, None)) is not None:
                    await self._push(topic, delivery)
            except Exception as exc:  # the stream broke: end it, the subscriptions close
                log.debug("Apache EventMesh stream of group %s ended: %s", self.group, exc)
                if self._tg is not None:
                    self._tg.cancel_scope.cancel()
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()

    async def _push(self, topic: str, delivery: Delivery) -> None:
        event = delivery.event
        try:
            msg = to_proto(event)
        except EventValidationError as exc:
            await delivery.nack(
                DeliveryError(f"the event cannot be sent over gRPC: {exc}", retryable=False)
            )
            return
        attributes = msg.attributes
        if event.subject is None:
            attributes["subject"].ce_string = topic
        attributes["seqnum"].ce_string = str(next(self._seq))
        attributes["uniqueid"].ce_string = event.id
        key = _asked_key(event)
        if key is not None:  # a request: this stream may now answer it
            asked = self._asked
            asked[key] = None
            if len(asked) > MAX_ASKED:
                del asked[next(iter(asked))]
        await self._write(msg)
        await delivery.ack()  # written: the SDK sends no ack (at-most-once)

    async def drop(self, topic: str) -> bool:
        """End the subscription to ``topic`` (an unsubscribe); whether there was one."""
        entry = self._subs.pop(topic, None)
        if entry is None:
            return False
        subscription, scope, own_group = entry
        scope.cancel()
        await subscription.close()
        if own_group:
            await forget_group(self.servicer.mesh, subscription)
        return True

    async def close(self) -> None:
        self.servicer.consumers.remove_stream(self)
        for topic in list(self._subs):
            await self.drop(topic)


def _asked_key(event: Event) -> tuple[str, str] | None:
    """(reply inbox, correlation id) of a request event, as a reply to it names them;
    None for an event that asks for no reply."""
    inbox = reply_address(event)
    if inbox is None:
        return None
    correlation = event.extensions.get(CORRELATION_ID)
    return inbox, correlation if type(correlation) is str else event.id


def add_apache_services(
    server: grpc.aio.Server,
    mesh: Mesh,
    consumers: ApacheConsumers,
    *,
    guard: Guard,
    max_event_size: int | None = None,
) -> None:
    """Serve Apache EventMesh's PublisherService, ConsumerService and HeartbeatService
    over ``mesh`` on ``server`` (module docstring)."""
    servicer = ApacheServicer(mesh, consumers, guard, max_event_size)
    event = _decoder(CloudEvent)
    batch = _decoder(CloudEventBatch)
    out = CloudEvent.SerializeToString
    empty = Empty.SerializeToString
    unary = grpc.unary_unary_rpc_method_handler
    handlers: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {
        PUBLISHER: {
            "publish": unary(servicer.publish, event, out),
            "batchPublish": unary(servicer.batch_publish, batch, out),
            "publishOneWay": unary(servicer.publish_one_way, event, empty),
            "batchPublishOneWay": unary(servicer.batch_publish_one_way, batch, empty),
            "requestReply": unary(servicer.request_reply, event, out),
        },
        CONSUMER: {
            "subscribe": unary(servicer.subscribe, event, out),
            "unsubscribe": unary(servicer.unsubscribe, event, out),
            "subscribeStream": grpc.stream_stream_rpc_method_handler(
                servicer.subscribe_stream, event, out
            ),
        },
        HEARTBEAT: {"heartbeat": unary(servicer.heartbeat, event, out)},
    }
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, methods)
            for name, methods in handlers.items()
        )
    )
