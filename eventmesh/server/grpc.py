"""The sidecar's gRPC API: the ``eventmesh.v1.EventMesh`` service in front of a Mesh.

The service only translates: events arrive and leave in the CloudEvents protobuf format
(:mod:`eventmesh.bindings.protobuf`) and every call (``Publish``, ``PublishBatch``,
``Request``, the bidirectional ``Subscribe`` stream) becomes a call on the running
:class:`~eventmesh.Mesh`. Each call is authenticated once and asked of the ACL once;
errors carry the code of :mod:`eventmesh._status` and the class in ``eventmesh-error``.
:func:`grpc_options` turns ``server.grpc`` into the channel options. See
docs/sidecar.md, 'gRPC', and docs/security.md, 'The gRPC API'.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeAlias, TypeVar

import anyio
import grpc
import grpc.aio
import msgspec
from google.protobuf.message import DecodeError
from grpc.aio import EOF as _EOF  # type: ignore[attr-defined]  # grpc-stubs lacks it

from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._status import grpc_code
from eventmesh.auth import ANONYMOUS, CertIdentity, Guard, Principal
from eventmesh.bindings.protobuf import CloudEvent, from_proto, from_proto_batch, to_proto
from eventmesh.config import GrpcListener
from eventmesh.connectors.base import StartPosition
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.errors import (
    ClosedError,
    ConfigError,
    DeliveryError,
    EventMeshError,
    EventTooLargeError,
    EventValidationError,
    LifecycleError,
    LimitExceededError,
)
from eventmesh.observability.propagation import transport_parent
from eventmesh.server._authn import check_reply_inboxes
from eventmesh.server._ratelimit import LogLimit

if TYPE_CHECKING:
    from eventmesh.event import Event
    from eventmesh.mesh import Mesh
    from eventmesh.subscription import Delivery, Subscription

__all__ = [
    "ATTRIBUTE_METADATA_KEY",
    "ERROR_METADATA_KEY",
    "SERVICE_NAME",
    "EventMeshServicer",
    "add_to_server",
    "grpc_options",
]

log = logging.getLogger(__name__)

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["EventMesh"].full_name
"""The full name of the gRPC service."""
# The same names are read by eventmesh.client.grpc; they are part of the wire protocol.
ERROR_METADATA_KEY: Final = "eventmesh-error"
"""Trailing metadata: the class name of the error that failed the call."""
ATTRIBUTE_METADATA_KEY: Final = "eventmesh-attribute"
"""Trailing metadata: the attribute an ``EventValidationError`` names."""

_PublishContext: TypeAlias = "grpc.aio.ServicerContext[Any, pb.PublishResponse]"
_RequestContext: TypeAlias = "grpc.aio.ServicerContext[Any, pb.EventReply]"
_OneEvent = TypeVar("_OneEvent", pb.PublishRequest, pb.EventRequest)
_StreamContext: TypeAlias = "grpc.aio.ServicerContext[pb.SubscribeRequest, pb.SubscribeResponse]"
_json = msgspec.json.Decoder()

MAX_BATCH: Final = 10_000
"""Events one PublishBatch may carry: each is decoded on the event loop (a few µs), so a
16 MiB batch of a million tiny events would hold every other call for seconds."""
MAX_SETTLE: Final = 10_000
"""Delivery ids one ack or nack may name (the SDK names one): each is looked up on the
event loop."""
MAX_DELIVERY_SIZE: Final = 4 * 1024 * 1024 - 1024
"""The largest event a Subscribe stream delivers (serialized): a gRPC client receives at
most 4 MiB a message unless it raised its own limit, and a delivery above it would end
the client's stream every time it came back. A larger one is dead-lettered."""
_MAX_DETAIL: Final = 2_000
"""Characters of an error message a status carries (clients cap the metadata it goes in,
gRPC's own at 16 KiB, and a longer one ends the call with no error class)."""

_MAX_ATTRIBUTE: Final = 256
"""The longest attribute name sent in ``eventmesh-attribute`` (a longer one is no
attribute a valid event has: the message names it, cut short)."""

_KEEPALIVE_MS: Final = 60_000
"""Ping a connection silent for this long, to find peers that went away without a word."""
_KEEPALIVE_TIMEOUT_MS: Final = 20_000
"""Close the connection when the ping is not answered within this."""


def grpc_options(listener: GrpcListener) -> list[tuple[str, int]]:
    """The gRPC server's channel options for ``server.grpc`` (docs/sidecar.md)."""
    return [
        ("grpc.max_receive_message_length", listener.max_request_size),
        ("grpc.max_allowed_incoming_connections", listener.max_connections),
        ("grpc.max_concurrent_streams", listener.max_concurrent_streams),
        ("grpc.server_handshake_timeout_ms", int(listener.header_timeout * 1000)),
        ("grpc.max_connection_idle_ms", int(listener.idle_timeout * 1000)),
        ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
        # Not set, so gRPC's defaults hold: a client pinging more often than every
        # 5 minutes without calls gets GOAWAY after 2 strikes.
    ]


class _Undecodable:
    """What a request deserializer returns for bytes that are not its message, so that
    the handler answers INVALID_ARGUMENT (gRPC itself would log a traceback and answer
    UNKNOWN or INTERNAL)."""

    __slots__ = ("error", "message")

    def __init__(self, message: str, error: Exception) -> None:
        self.message = message
        self.error = error

    def refusal(self, logs: LogLimit) -> EventValidationError:
        """The error to answer with, after one rate-limited warning line."""
        logs.warning(
            "undecodable",
            "gRPC: a request is not a valid %s message (%s); answered INVALID_ARGUMENT",
            self.message,
            self.error,
        )
        return EventValidationError(
            f"the request is not a valid {self.message} message ({self.error}); "
            "send the message the method's .proto declares"
        )


def _decoder(cls: Any) -> Callable[[bytes], Any]:
    """``cls.FromString`` that returns an :class:`_Undecodable` instead of raising."""
    parse = cls.FromString
    name = cls.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, RecursionError, ValueError) as exc:
            return _Undecodable(name, exc)

    return decode


def _trace_headers(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[str | None, str | None]:
    """The W3C ``traceparent`` and ``tracestate`` of the call's metadata (an instrumented
    client's span), for :func:`~eventmesh.observability.tracing.transport_parent`."""
    traceparent = tracestate = None
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str):
            traceparent = value
        elif key == "tracestate" and isinstance(value, str):
            tracestate = value
    return traceparent, tracestate


def _authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The call's ``authorization`` metadata (the first, when it was sent twice)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


_DEFAULT_POLICY: Final = DeliveryPolicy()


def _dead_letter_topic(delivery: Any, topic: str, group: str) -> str | None:
    """The dead-letter topic ``delivery`` (an Open's ``delivery_json``, decoded) names,
    when it is not the default ``{topic}.dlq``: a subscriber publishes there by nacking,
    so it needs ``publish`` on it. The default goes with ``subscribe`` on the topic."""
    if not isinstance(delivery, dict):
        return None
    template = delivery.get("dead_letter")
    if not isinstance(template, str):  # absent, null (no dead letters), or refused later
        return None
    chosen = template.replace("{topic}", topic).replace("{group}", group)
    return None if chosen == _DEFAULT_POLICY.dead_letter_topic(topic, group) else chosen


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, logs: LogLimit
) -> NoReturn:
    """End the call with the status of ``exc``, as the module docstring says."""
    if isinstance(exc, EventMeshError):
        kind, detail = type(exc).__name__, str(exc)
    else:
        logs.log(
            logging.ERROR, "unexpected", "gRPC call failed on an unexpected error", exc_info=exc
        )
        kind, detail = "EventMeshError", "internal error"
    if len(detail) > _MAX_DETAIL:
        detail = detail[:_MAX_DETAIL] + f"... ({len(detail)} characters)"
    metadata = [(ERROR_METADATA_KEY, kind)]
    attribute = getattr(exc, "attribute", None)
    if (
        isinstance(attribute, str)
        and len(attribute) <= _MAX_ATTRIBUTE
        and attribute.isascii()
        and attribute.isprintable()
    ):
        metadata.append((ATTRIBUTE_METADATA_KEY, attribute))
    await context.abort(grpc_code(exc), detail, trailing_metadata=tuple(metadata))


class EventMeshServicer:
    """The ``eventmesh.v1.EventMesh`` service over ``mesh``, which must be open."""

    def __init__(
        self,
        mesh: Mesh,
        max_event_size: int | None = None,
        guard: Guard | None = None,
        *,
        open_timeout: float = 10.0,
    ) -> None:
        self.mesh = mesh
        self.max_event_size = max_event_size
        self.open_timeout = open_timeout
        """Seconds a Subscribe stream has, once let in, to send its 'open'."""
        self.guard = guard or Guard()
        self.logs = LogLimit(log)
        """At most one line per second per kind of bad request."""

    def _principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """Who makes this call, or UnauthenticatedError (ANONYMOUS with auth off)."""
        guard = self.guard
        if not guard.enabled:
            return ANONYMOUS
        cert = None
        if guard.auth.client_certs is not None:
            cert = CertIdentity.from_grpc(context.auth_context())
        return guard.principal(_authorization(context), cert)

    def _check_size(self, event: CloudEvent, where: str) -> None:
        limit = self.max_event_size
        if limit is not None and (size := event.ByteSize()) > limit:
            raise EventTooLargeError(
                f"{where} is {size} bytes, above the limit of {limit} "
                "(server.grpc.max_event_size); send smaller events, or data by reference"
            )

    def _one_event(
        self, request: _OneEvent | _Undecodable, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[_OneEvent, Event]:
        """The one event a Publish or Request call carries, once its caller may publish on
        its topic and it is within the size limit."""
        principal = self._principal(context)
        if isinstance(request, _Undecodable):
            raise request.refusal(self.logs)
        if self.guard.enabled:
            self.guard.check(principal, "publish", topic=request.topic)
        if not request.HasField("event"):
            raise EventValidationError(f"the {type(request).__name__} has no event")
        self._check_size(request.event, "the event")
        return request, from_proto(request.event)

    async def publish(
        self, request: pb.PublishRequest | _Undecodable, context: _PublishContext
    ) -> pb.PublishResponse:
        """Store one event; answer once it is stored."""
        try:
            request, event = self._one_event(request, context)
            check_reply_inboxes(self.guard, self._principal(context), (event,))
            with transport_parent(*_trace_headers(context)):
                await self.mesh.publish(request.topic, event)
        except Exception as exc:
            await _abort(context, exc, self.logs)
        return pb.PublishResponse(stored=1, ids=[event.id])

    async def publish_batch(
        self, request: pb.PublishBatchRequest | _Undecodable, context: _PublishContext
    ) -> pb.PublishResponse:
        """Store several events in order; answer once all are stored."""
        try:
            principal = self._principal(context)
            if isinstance(request, _Undecodable):
                raise request.refusal(self.logs)
            if self.guard.enabled:
                self.guard.check(principal, "publish", topic=request.topic)
            if len(request.batch.events) > MAX_BATCH:
                raise LimitExceededError(
                    f"the batch has {len(request.batch.events)} events, more than {MAX_BATCH}; "
                    "send it in parts"
                )
            limit = self.max_event_size
            if limit is not None:
                for index, msg in enumerate(request.batch.events):
                    if msg.ByteSize() > limit:  # the message only for the one too large
                        self._check_size(msg, f"event {index} of the batch")
            events = from_proto_batch(request.batch)
            check_reply_inboxes(self.guard, principal, events)
            if events:
                with transport_parent(*_trace_headers(context)):
                    await self.mesh.publish(request.topic, events)
            else:
                self.mesh.connector(request.topic)  # an empty batch still names a topic
        except Exception as exc:
            await _abort(context, exc, self.logs)
        return pb.PublishResponse(stored=len(events), ids=[event.id for event in events])

    async def request(
        self, request: pb.EventRequest | _Undecodable, context: _RequestContext
    ) -> pb.EventReply:
        """Publish one event as a request; answer with its first reply (eventmesh._requests)."""
        try:
            request, event = self._one_event(request, context)
            with transport_parent(*_trace_headers(context)):
                reply = await self.mesh.request(
                    request.topic, event, timeout=request.timeout or None
                )
            try:
                answer = to_proto(reply)
            except EventValidationError as exc:
                raise DeliveryError(
                    f"the reply {reply.id!r} cannot be sent over gRPC: {exc}", retryable=False
                ) from exc
        except Exception as exc:
            await _abort(context, exc, self.logs)
        return pb.EventReply(reply=answer)

    async def subscribe(
        self, request_iterator: AsyncIterator[pb.SubscribeRequest], context: _StreamContext
    ) -> None:
        """Run one subscriber's stream (see the module docstring)."""
        try:
            principal = self._principal(context)  # once per stream, before its first read
        except Exception as exc:
            await _abort(context, exc, self.logs)
        # Headers say the stream was let in. A client waits for them before it writes
        # 'open': a write racing a refusal makes gRPC's own client report INTERNAL in
        # place of the status this server sent.
        await context.send_initial_metadata(())
        first: Any = None  # read() gives a message or EOF, never None
        with anyio.move_on_after(self.open_timeout):
            first = await context.read()
        if first is None:  # the deadline passed: the stream held an RPC slot for nothing
            await _abort(
                context,
                LifecycleError(
                    f"no 'open' within {self.open_timeout:g}s of the stream's start "
                    "(server.grpc.header_timeout): send it first"
                ),
                self.logs,
            )
        if first is _EOF:
            return
        if isinstance(first, _Undecodable):
            await _abort(context, first.refusal(self.logs), self.logs)
        if first.WhichOneof("request") != "open":
            await _abort(
                context,
                LifecycleError("the first request of a Subscribe stream must be 'open'"),
                self.logs,
            )
        subscription: Subscription | None = None
        error: BaseException | None = None
        try:
            subscription = await self._subscription(first.open, principal)
            await subscription.start()
            await context.write(
                pb.SubscribeResponse(subscribed=pb.Subscribed(name=subscription.name))
            )
            stream = _Stream(
                subscription,
                context,
                first.open.credits,
                self.logs,
                max_pending=subscription.policy.max_in_flight,
            )
            await stream.run()
            error = stream.error
        except Exception as exc:
            error = exc
        finally:
            if subscription is not None:  # unacked deliveries go back to the group
                with anyio.CancelScope(shield=True):
                    await subscription.close()
        if error is not None and not context.done():
            await _abort(context, error, self.logs)

    async def _subscription(self, request: pb.Open, principal: Principal) -> Subscription:
        where = f"open of subscription to {request.topic!r}"
        guard = self.guard
        if guard.enabled:  # first: a denied caller learns nothing and costs no compile
            # The group as sent: the mesh refuses an empty one, so none is made up here.
            guard.check(principal, "subscribe", topic=request.topic, group=request.group)
        delivery = _json_field(request.delivery_json, f"{where}: delivery_json")
        if guard.enabled:
            dead_letter = _dead_letter_topic(delivery, request.topic, request.group)
            if dead_letter is not None:
                guard.check(principal, "publish", topic=dead_letter)
        start: StartPosition = "latest"
        which = request.WhichOneof("start")
        if which == "time":
            try:
                start = request.time.ToDatetime(tzinfo=UTC)
            except (ValueError, OverflowError) as exc:
                raise ConfigError(f"{where}: the start time is out of range ({exc})") from exc
        elif which == "position" and request.position == pb.START_POSITION_EARLIEST:
            start = "earliest"
        # Compiled in a worker thread: the spec came from the network.
        compiled_filter, compiled_transform = await self.mesh.compile_specs(
            request.topic,
            request.group,
            _json_field(request.filter_json, f"{where}: filter_json"),
            _json_field(request.transform_json, f"{where}: transform_json"),
        )
        return self.mesh.subscribe(
            request.topic,
            request.group,
            filter=compiled_filter,
            transform=compiled_transform,
            delivery=delivery,
            start=start,
            name=request.name or None,
        )


def _json_field(text: str, where: str) -> Any:
    if not text:
        return None
    try:
        return _json.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{where} nests too deep to be a subscription setting") from None


def _nack_error(nack: pb.Nack) -> BaseException | str | None:
    """The error to nack with, so that the policy sees what the client's handler raised."""
    if nack.give_up or nack.HasField("retry_after"):
        return DeliveryError(
            nack.error or "nacked",
            retryable=not nack.give_up,
            retry_after=nack.retry_after if nack.HasField("retry_after") else None,
        )
    return nack.error or None


class _Stream:
    """One Subscribe stream: deliveries out while credits last, settlements in.

    No more than ``max_pending`` (the policy's ``max_in_flight``) deliveries are out
    unsettled whatever the client granted: a client that grants billions and never
    settles holds no more than the HTTP pull API would let it. Credits are only counted,
    so a client that grants many at once loses none of them."""

    def __init__(
        self,
        subscription: Subscription,
        context: _StreamContext,
        credits: int,
        logs: LogLimit,
        *,
        max_pending: int,
    ) -> None:
        self.logs = logs
        self.subscription = subscription
        self.context = context
        self.max_pending = max_pending
        self.credits = credits
        self.error: BaseException | None = None
        self._pending: dict[int, Delivery] = {}
        self._ids = itertools.count(1)
        self._credited: anyio.Event | None = None

    async def run(self) -> None:
        """Until the client half-closes, the subscription ends, or either side fails."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._guard, self._send, tg.cancel_scope)
            await self._guard(self._receive, tg.cancel_scope)

    async def _guard(self, fn: Any, scope: anyio.CancelScope) -> None:
        try:
            await fn()
        except Exception as exc:
            if self.error is None:
                self.error = exc
        finally:
            scope.cancel()  # either side ending ends the stream

    async def _send(self) -> None:
        iterator = aiter(self.subscription)
        try:
            await self._send_from(iterator)
        finally:
            if isinstance(iterator, AsyncGenerator):  # finish it here, not in the GC
                with anyio.CancelScope(shield=True):
                    await iterator.aclose()

    async def _send_from(self, iterator: AsyncIterator[Delivery]) -> None:
        context = self.context
        pending = self._pending
        while True:
            while self.credits <= 0 or len(pending) >= self.max_pending:
                self._credited = credited = anyio.Event()
                await credited.wait()
            delivery = await anext(iterator, None)
            if delivery is None:  # the mesh closed the subscription
                raise ClosedError("the sidecar is shutting down; subscribe again later")
            try:
                event = to_proto(delivery.event)
            except EventValidationError as exc:
                await delivery.nack(
                    DeliveryError(f"the event cannot be sent over gRPC: {exc}", retryable=False)
                )
                continue
            size = event.ByteSize()
            if size > MAX_DELIVERY_SIZE:
                await delivery.nack(
                    DeliveryError(
                        f"the event is {size} bytes, more than a gRPC stream delivers "
                        f"({MAX_DELIVERY_SIZE}, within the 4 MiB a gRPC client receives by "
                        "default); read it over HTTP (a webhook or pull subscription)",
                        retryable=False,
                    )
                )
                continue
            self.credits -= 1
            delivery_id = next(self._ids)
            self._pending[delivery_id] = delivery
            await context.write(
                pb.SubscribeResponse(
                    delivery=pb.Delivery(
                        delivery_id=delivery_id,
                        attempt=delivery.attempt,
                        event=event,
                        topic=delivery.topic,
                    )
                )
            )

    async def _receive(self) -> None:
        context = self.context
        pending = self._pending
        while True:
            request = await context.read()
            if request is _EOF:
                return  # the client is done: leave the group
            if isinstance(request, _Undecodable):
                raise request.refusal(self.logs)
            kind = request.WhichOneof("request")
            if kind == "ack":
                for delivery_id in _settled(request.ack.delivery_ids):
                    delivery = pending.pop(delivery_id, None)
                    if delivery is not None:  # settling twice does nothing
                        await delivery.ack()
                self._wake()
            elif kind == "nack":
                error = _nack_error(request.nack)
                for delivery_id in _settled(request.nack.delivery_ids):
                    delivery = pending.pop(delivery_id, None)
                    if delivery is not None:
                        await delivery.nack(error)
                self._wake()
            elif kind == "credit":
                self.credits += request.credit.n
                self._wake()
            else:
                raise LifecycleError(
                    f"a Subscribe stream takes ack, nack and credit after 'open', got {kind}"
                )

    def _wake(self) -> None:
        """Let the sender look again: a credit came, or a delivery was settled."""
        credited, self._credited = self._credited, None
        if credited is not None:
            credited.set()


def _settled(ids: Any) -> Any:
    """An ack's or nack's delivery ids, refused when there are more than MAX_SETTLE."""
    if len(ids) > MAX_SETTLE:
        raise LimitExceededError(
            f"an ack or nack names {len(ids)} deliveries, more than {MAX_SETTLE}; "
            "settle them in parts"
        )
    return ids


def add_to_server(
    server: grpc.aio.Server,
    mesh: Mesh,
    *,
    max_event_size: int | None = None,
    guard: Guard | None = None,
    open_timeout: float = 10.0,
) -> None:
    """Serve the ``eventmesh.v1.EventMesh`` service of ``mesh`` on ``server``.

    ``mesh`` must be open while the server serves; stop the server before closing it.
    A published event larger than ``max_event_size`` bytes (serialized) fails its call
    with ``EventTooLargeError`` (RESOURCE_EXHAUSTED); None sets no limit of its own. A
    Subscribe stream that sends no 'open' within ``open_timeout`` seconds is ended.
    """
    servicer = EventMeshServicer(mesh, max_event_size, guard or Guard(), open_timeout=open_timeout)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Publish": grpc.unary_unary_rpc_method_handler(
            servicer.publish,
            request_deserializer=_decoder(pb.PublishRequest),
            response_serializer=pb.PublishResponse.SerializeToString,
        ),
        "PublishBatch": grpc.unary_unary_rpc_method_handler(
            servicer.publish_batch,
            request_deserializer=_decoder(pb.PublishBatchRequest),
            response_serializer=pb.PublishResponse.SerializeToString,
        ),
        "Request": grpc.unary_unary_rpc_method_handler(
            servicer.request,
            request_deserializer=_decoder(pb.EventRequest),
            response_serializer=pb.EventReply.SerializeToString,
        ),
        "Subscribe": grpc.stream_stream_rpc_method_handler(
            servicer.subscribe,
            request_deserializer=_decoder(pb.SubscribeRequest),
            response_serializer=pb.SubscribeResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
