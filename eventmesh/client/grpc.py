"""The remote client: the SDK's API over the sidecar's gRPC service (``grpc://`` targets).

``GrpcClient`` offers what an embedded Mesh does: ``publish`` (one ``Publish`` or
``PublishBatch`` call, answered once stored) and ``subscribe`` in both forms, on one
``Subscribe`` stream each, with at most ``window`` deliveries unsettled here (credits).
Filters and transforms run in the sidecar, handlers here. See docs/sdk.md,
'Remote clients'.

Design: the stream is a :class:`~eventmesh.connectors.base.Consumer`
(:mod:`eventmesh.client._stream`) under the same :class:`~eventmesh.subscription.Subscription`
and dispatcher an embedded mesh uses.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Self

import anyio
import anyio.abc
import grpc
import grpc.aio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream

from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._requests import check_wait, send_replies
from eventmesh._status import error_from_grpc
from eventmesh.bindings.protobuf import from_proto, to_proto, to_proto_batch
from eventmesh.client._remote import bearer, check_tls_files, read_file, warn_clear_text
from eventmesh.client.base import Client
from eventmesh.config import convert
from eventmesh.connectors.base import Delivery as ConnectorDelivery
from eventmesh.connectors.base import StartPosition
from eventmesh.delivery.deadletter import describe_error
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.delivery.stats import DeliveryStats
from eventmesh.errors import (
    ClosedError,
    ConfigError,
    ConnectError,
    DeliveryError,
    EventMeshError,
    EventValidationError,
    LifecycleError,
    SubscribeError,
)
from eventmesh.event import Event
from eventmesh.subscription import Delivery, Handler, Subscription, _as_sink

__all__ = ["GrpcClient", "GrpcSubscription"]

log = logging.getLogger(__name__)

# Part of the wire protocol, as eventmesh.server.grpc writes them.
_ERROR_KEY: Final = "eventmesh-error"
_ATTRIBUTE_KEY: Final = "eventmesh-attribute"
_SERVICE: Final = pb.DESCRIPTOR.services_by_name["EventMesh"].full_name
# Codes that, without our metadata, come from the connection rather than the sidecar.
_TRANSPORT_CODES: Final = {"UNAVAILABLE", "UNIMPLEMENTED", "DEADLINE_EXCEEDED", "CANCELLED"}
_json = msgspec.json.Encoder(enc_hook=float)  # a Duration is a float

_Call = grpc.aio.StreamStreamCall[pb.SubscribeRequest, pb.SubscribeResponse]


def _translate(exc: grpc.aio.AioRpcError, address: str) -> EventMeshError:
    """Our exception for a failed call: what the sidecar said, or a ConnectError."""
    code = exc.code()
    details = exc.details()
    metadata: Any = exc.trailing_metadata() or ()  # grpc.aio.Metadata: (key, value) pairs
    values = {key: value for key, value in metadata if isinstance(value, str)}
    kind = values.get(_ERROR_KEY)
    if kind is None and code.name in _TRANSPORT_CODES:
        return ConnectError(
            f"lost the eventmesh sidecar at {address} ({code.name}: {details}); "
            "is 'eventmesh run' serving gRPC there?"
        )
    error = error_from_grpc(code, details, kind)
    if isinstance(error, EventValidationError) and _ATTRIBUTE_KEY in values:
        error.attribute = values[_ATTRIBUTE_KEY]
    return error


async def _connect(channel: grpc.aio.Channel, timeout: float) -> grpc.ChannelConnectivity:
    """The channel's state once its first connection attempt settles: ``READY``,
    ``TRANSIENT_FAILURE`` as soon as the attempt fails (refused, TLS handshake failed:
    failing now, as HTTP does, rather than retrying until ``timeout``), or the state it
    is still in after ``timeout`` seconds.

    Polled rather than ``channel_ready()``: cutting that short leaves a connectivity
    watch in gRPC's core that resolves later, on a loop that may be closed by then.
    """
    settled = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
    state = channel.get_state(try_to_connect=True)
    with anyio.move_on_after(timeout):
        while state not in settled:
            await anyio.sleep(0.01)
            state = channel.get_state(try_to_connect=True)
    return state


class GrpcClient(Client):
    """A client of the eventmesh sidecar at ``address`` (``host:port``, optionally with a
    ``grpc://`` prefix, or ``grpcs://`` for TLS), to use as
    ``async with GrpcClient("127.0.0.1:10205") as client``.

    ``window`` is how many deliveries each subscription may hold unsettled;
    ``connect_timeout`` how long entering waits for a connection attempt that neither
    succeeds nor fails before ``ConnectError`` (a refused one raises at once);
    ``options`` are passed to the gRPC channel. ``token`` is sent as ``authorization:
    Bearer <token>`` metadata on every call and stream. ``tls`` (implied by ``grpcs://``)
    speaks TLS, trusting ``ca_file`` (the system's CAs when None) and presenting
    ``cert_file`` and ``key_file`` when the sidecar asks for a client certificate (mTLS).
    Raises ``ConfigError`` for a bad token or TLS file.
    """

    def __init__(
        self,
        address: str,
        *,
        window: int = 64,
        connect_timeout: float = 10.0,
        options: Sequence[tuple[str, Any]] | None = None,
        token: str | None = None,
        tls: bool = False,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
    ) -> None:
        if window < 1:
            raise ConfigError(f"window must be at least 1, got {window}")
        if address.startswith("grpcs://"):
            tls = True
        self.address = address.removeprefix("grpcs://").removeprefix("grpc://").rstrip("/")
        self.tls = tls
        self.window = window
        self.connect_timeout = connect_timeout
        self._options = list(options or ())
        scheme = "grpcs" if tls else "grpc"
        check_tls_files(
            f"{scheme}://{self.address}",
            tls=tls,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
        self._credentials = (
            grpc.ssl_channel_credentials(
                root_certificates=None if ca_file is None else read_file(ca_file, "ca_file"),
                private_key=None if key_file is None else read_file(key_file, "key_file"),
                certificate_chain=None if cert_file is None else read_file(cert_file, "cert_file"),
            )
            if tls
            else None
        )
        # The token lives only in the metadata every call sends.
        self._metadata: tuple[tuple[str, str], ...] | None = None
        if token is not None:
            self._metadata = (("authorization", bearer(token)),)
            warn_clear_text(f"{scheme}://{self.address}")
        self._channel: grpc.aio.Channel | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._subscriptions: dict[int, GrpcSubscription] = {}
        self._state = "new"

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise LifecycleError("a GrpcClient can be entered once; create a new one")
        self._state = "opening"
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(self.address, options=self._options)
        else:
            channel = grpc.aio.secure_channel(
                self.address, self._credentials, options=self._options
            )
        try:
            state = await _connect(channel, self.connect_timeout)
        except BaseException:
            await channel.close(None)
            self._state = "closed"
            raise
        if state != grpc.ChannelConnectivity.READY:
            await channel.close(None)
            self._state = "closed"
            hint = "is 'eventmesh run' serving gRPC there?"
            if self.tls:
                hint = (
                    "is 'eventmesh run' serving gRPC with TLS there, does ca_file hold the CA "
                    "that signed its certificate, and does it want a client certificate "
                    "(cert_file, key_file)?"
                )
            if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                why = "the connection attempt failed (refused, or TLS did not complete)"
            else:
                why = f"no connection within {self.connect_timeout:g}s"
            raise ConnectError(
                f"cannot reach the eventmesh sidecar at {self.address}: {why}; {hint}"
            )
        self._channel = channel
        response = pb.PublishResponse.FromString
        self._publish = channel.unary_unary(
            f"/{_SERVICE}/Publish", pb.PublishRequest.SerializeToString, response
        )
        self._publish_batch = channel.unary_unary(
            f"/{_SERVICE}/PublishBatch", pb.PublishBatchRequest.SerializeToString, response
        )
        self._ask = channel.unary_unary(
            f"/{_SERVICE}/Request", pb.EventRequest.SerializeToString, pb.EventReply.FromString
        )
        self._subscribe = channel.stream_stream(
            f"/{_SERVICE}/Subscribe",
            pb.SubscribeRequest.SerializeToString,
            pb.SubscribeResponse.FromString,
        )
        async with AsyncExitStack() as stack:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._stack = stack.pop_all()
        self._state = "open"
        return self

    async def _disconnect(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)

    def _describe(self) -> str:
        return f"the client of {self.address}"

    def _usage(self) -> str:
        return "GrpcClient(address) as client"

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, topic: str, events: Event | Sequence[Event]) -> list[str]:
        """Store one event or a list of events on ``topic``; returns the ids of the
        events, in order, once the sidecar stored them all (all or nothing). Raises what
        the sidecar raised (``PublishError``, ...)."""
        self._check_open()
        if not isinstance(topic, str):
            raise ConfigError(f"a topic name must be a non-empty string, got {topic!r}")
        try:
            if isinstance(events, Event):
                request = pb.PublishRequest(topic=topic, event=to_proto(events))
                await self._publish(request, metadata=self._metadata)
                return [events.id]
            if not isinstance(events, list | tuple):
                raise EventValidationError(
                    "publish takes an eventmesh.Event or a list of them, got "
                    f"{type(events).__name__}"
                )
            for i, event in enumerate(events):
                if not isinstance(event, Event):
                    raise EventValidationError(
                        f"item {i} of the events is a {type(event).__name__}, not an "
                        "eventmesh.Event (convert SDK events with Event.from_cloudevent)"
                    )
            batch = to_proto_batch(events)
            await self._publish_batch(
                pb.PublishBatchRequest(topic=topic, batch=batch), metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, self.address) from exc
        # PublishResponse.ids holds these same ids (the server reads them from the
        # request and stores it all or nothing); the ones sent need no decoding.
        return [event.id for event in events]

    async def request(self, topic: str, event: Event, *, timeout: float | None = None) -> Event:
        """Publish ``event`` on ``topic`` as a request and return the first reply (the
        sidecar's ``Request`` call; docs/sdk.md, Request-reply). Raises what the sidecar
        raised: ``RequestTimeoutError`` when no reply came within ``timeout`` seconds
        (default 30), ``LimitExceededError``, ``PermissionDeniedError``, ..."""
        self._check_open()
        if not isinstance(topic, str):
            raise ConfigError(f"a topic name must be a non-empty string, got {topic!r}")
        wait = check_wait(timeout)
        if type(event) is not Event:
            raise EventValidationError(f"request takes one eventmesh.Event, got {event!r:.60}")
        message = pb.EventRequest(topic=topic, event=to_proto(event), timeout=timeout or 0.0)
        try:
            # The call's own deadline is the sidecar's wait plus a margin, so the sidecar
            # answers a timeout itself (DEADLINE_EXCEEDED with RequestTimeoutError).
            answer = await self._ask(message, metadata=self._metadata, timeout=wait + 10)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, self.address) from exc
        return from_proto(answer.reply)

    # -- subscribing ---------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        group: str,
        *,
        handler: Handler | None = None,
        filter: Any = None,
        transform: Any = None,
        delivery: DeliveryPolicy | Mapping[str, Any] | None = None,
        start: StartPosition = "latest",
        name: str | None = None,
        reply_to: str | None = None,
    ) -> GrpcSubscription:
        """Join consumer ``group`` on ``topic`` through the sidecar; start the result with
        ``async with`` or ``await``. Arguments as for :meth:`eventmesh.Mesh.subscribe`,
        except that ``filter`` and ``transform`` must be specs, not callables."""
        self._check_open()
        where = f"subscribe({topic!r}, group={group!r})"
        for label, value in (("topic", topic), ("group", group)):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: {label} must be a non-empty string, got {value!r}")
        if delivery is None or isinstance(delivery, DeliveryPolicy):
            policy = delivery or DeliveryPolicy()  # checked here, to run the handler's lanes
        else:
            policy = convert(delivery, DeliveryPolicy, key=f"{where}.delivery")
        request = pb.Open(
            topic=topic,
            group=group,
            filter_json=_spec_json(filter, "filter", where),
            transform_json=_spec_json(transform, "transform", where),
            delivery_json="" if delivery is None else _json.encode(policy).decode(),
            name=name or "",
            credits=self.window,
        )
        if isinstance(start, datetime):
            if start.tzinfo is None:
                raise ConfigError(f"{where}: start must be a timezone-aware datetime")
            request.time.FromDatetime(start)
        elif start in ("earliest", "latest"):
            request.position = (
                pb.START_POSITION_EARLIEST if start == "earliest" else pb.START_POSITION_LATEST
            )
        else:
            raise ConfigError(f"{where}: start must be 'earliest', 'latest' or a datetime")
        return GrpcSubscription(self, request, policy=policy, handler=handler, reply_to=reply_to)


def _spec_json(spec: Any, label: str, where: str) -> str:
    if spec is None:
        return ""
    if callable(spec) and not isinstance(spec, Mapping | Sequence):
        raise ConfigError(
            f"{where}: the {label} is a Python callable, which cannot be sent to the sidecar; "
            f"pass a {label} spec (docs/filters.md), or do the work in the handler"
        )
    try:
        return _json.encode(spec).decode()
    except (TypeError, msgspec.EncodeError) as exc:
        raise ConfigError(f"{where}: the {label} spec cannot be sent as JSON: {exc}") from exc


class _StreamDelivery(ConnectorDelivery):
    """A delivery the sidecar sent on the stream, settled by its id."""

    __slots__ = ("delivery_id", "subscription")

    def __init__(self, subscription: GrpcSubscription, msg: pb.Delivery, event: Event) -> None:
        # The sidecar keeps partitions and offsets to itself: -1 says "not known here".
        super().__init__(
            event,
            topic=msg.topic or subscription.topic,
            partition=-1,
            offset=-1,
            key=event.partitionkey,
            attempt=msg.attempt,
        )
        self.subscription = subscription
        self.delivery_id = msg.delivery_id

    async def ack(self) -> None:
        ack = pb.Ack(delivery_ids=[self.delivery_id])
        await self.subscription._settle(pb.SubscribeRequest(ack=ack))

    async def nack(self, delay: float = 0.0) -> None:
        # Delivery.nack comes through GrpcSubscription._nack; the sidecar's policy
        # chooses the delay.
        await self.subscription._nack(self, self.event, None)


class GrpcSubscription(Subscription):
    """A subscription on the sidecar, used as an embedded :class:`Subscription` is:
    ``async with``, ``await`` and ``close()``, ``async for`` with ack/nack, or a handler."""

    def __init__(
        self,
        client: GrpcClient,
        request: pb.Open,
        *,
        policy: DeliveryPolicy,
        handler: Handler | None,
        reply_to: str | None,
    ) -> None:
        # Subscription.__init__ is not called on purpose: it builds the consumer, gate
        # and dispatcher that the sidecar runs. Whatever uses them is overridden here.
        self._client = client
        self._request = request
        self.stats = DeliveryStats()
        self.name = request.name or f"{request.topic}/{request.group}"
        self.topic = request.topic
        self.group = request.group
        self.policy = policy
        self.reply_to = reply_to
        self._handler = handler
        self._call: _Call | None = None
        self._error: EventMeshError | None = None
        window = client.window
        # At most `window` deliveries are unsettled, so these never fill up.
        self._inbox_in, self._inbox = anyio.create_memory_object_stream[Delivery](window)
        self._outbox_in, self._outbox = anyio.create_memory_object_stream[pb.SubscribeRequest](
            window + 1
        )
        self._scope = anyio.CancelScope()
        self._route_scope = anyio.CancelScope()
        self._ended = anyio.Event()  # set when the stream and its tasks are done
        self._state = "new"

    def __repr__(self) -> str:
        return f"<GrpcSubscription {self.name} {self._state}>"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> Self:
        """Open the stream and join the group (with a handler, start delivering).

        Raises ``ConfigError`` for a filter, transform or policy the sidecar refuses."""
        if self._state != "new":
            raise LifecycleError(f"subscription {self.name!r} was already started")
        client = self._client
        client._check_open()
        self._state = "open"
        self._call = call = client._subscribe(None, metadata=client._metadata)  # written below
        try:
            # The sidecar sends headers once it has let the stream in, or ends the call
            # if it refuses it: writing before then could race the refusal, and gRPC's
            # client reports a write that lost that race as INTERNAL, not as the status
            # the sidecar sent (which a read of the ended call raises).
            await call.initial_metadata()
            if not call.done():
                await call.write(pb.SubscribeRequest(open=self._request))
            response = await call.read()
        except grpc.aio.AioRpcError as exc:
            self._state = "closed"
            raise _translate(exc, client.address) from exc
        except BaseException:
            self._state = "closed"
            call.cancel()
            raise
        if not isinstance(response, pb.SubscribeResponse) or not response.HasField("subscribed"):
            self._state = "closed"
            call.cancel()
            raise SubscribeError(
                f"the sidecar at {client.address} did not confirm subscription {self.name!r}"
            )
        self.name = response.subscribed.name
        assert client._tg is not None
        client._subscriptions[id(self)] = self
        await client._tg.start(self._run)
        return self

    # __await__, __aenter__, __aexit__ and closed come from Subscription.

    async def close(self, timeout: float | None = None) -> None:
        """Stop: with a handler, finish the events in hand (up to ``timeout`` seconds, 30
        by default) and cancel the rest; send the settlements made so far and leave the
        group. What was not acked is delivered again to the group. Idempotent."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closing"
        try:
            if self._handler is None:
                self._outbox_in.close()  # the writer sends what is settled, then half-closes
            else:
                self._route_scope.cancel()  # no new events to the handler; see _dispatch
            with anyio.move_on_after(timeout if timeout is not None else 30.0):
                await self._ended.wait()
            self._scope.cancel()
            await self._ended.wait()
        finally:
            self._state = "closed"
            self._client._subscriptions.pop(id(self), None)

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self._call is not None
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._write)
                    if self._handler is not None:
                        tg.start_soon(self._dispatch)
                    task_status.started()
                    await self._read()
        except Exception as exc:  # a bug of ours: keep it from the client's other tasks
            log.exception("subscription %s stopped on an unexpected error", self.name)
            self._error = SubscribeError(f"subscription {self.name!r} failed: {exc!r}")
        finally:
            self._call.cancel()  # nothing when it ended; leaves the group when cut short
            self._state = "closed"
            self._client._subscriptions.pop(id(self), None)
            self._ended.set()

    # -- the stream ----------------------------------------------------------------------

    async def _read(self) -> None:
        """Deliveries into the inbox until the sidecar ends the stream."""
        assert self._call is not None
        call = self._call
        try:
            async with self._inbox_in:
                while True:
                    response = await call.read()
                    if not isinstance(response, pb.SubscribeResponse):
                        return  # the sidecar ended the stream
                    if response.WhichOneof("response") != "delivery":
                        continue
                    msg = response.delivery
                    try:
                        event = from_proto(msg.event)
                    except EventValidationError as exc:  # dead-letter what cannot be read
                        nack = pb.Nack(delivery_ids=[msg.delivery_id], error=str(exc), give_up=True)
                        await self._settle(pb.SubscribeRequest(nack=nack))
                        continue
                    self.stats.received += 1
                    delivery = Delivery(self, _StreamDelivery(self, msg, event), event)
                    await self._inbox_in.send(delivery)
        except grpc.aio.AioRpcError as exc:
            if self._state == "open":
                self._error = _translate(exc, self._client.address)
                log.error("subscription %s lost its stream: %s", self.name, self._error)
        finally:
            self._outbox_in.close()  # nothing more to settle: let the writer finish

    async def _write(self) -> None:
        """Settlements and credits out; half-close once the outbox is closed."""
        assert self._call is not None
        call = self._call
        try:
            async with self._outbox:
                async for request in self._outbox:
                    await call.write(request)
                    credits = 1
                    while True:  # settle what else is waiting, then grant as many credits
                        try:
                            request = self._outbox.receive_nowait()
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                        await call.write(request)
                        credits += 1
                    await call.write(pb.SubscribeRequest(credit=pb.Credit(n=credits)))
                await call.done_writing()  # the sidecar leaves the group when it reads this
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            pass  # the stream already ended: the reader records why

    async def _nack(
        self, delivery: ConnectorDelivery, event: Event, error: BaseException | str | None
    ) -> None:
        """Send a nack; the sidecar retries or dead-letters under the policy. A
        ``DeliveryError`` keeps its ``retryable`` and ``retry_after``."""
        assert isinstance(delivery, _StreamDelivery)
        self.stats.failed += 1
        nack = pb.Nack(delivery_ids=[delivery.delivery_id])
        if isinstance(error, DeliveryError):
            nack.error = str(error)
            nack.give_up = not error.retryable
            if error.retry_after is not None:
                nack.retry_after = error.retry_after
        elif error is not None:
            nack.error = describe_error(error)
        await self._settle(pb.SubscribeRequest(nack=nack))

    async def _settle(self, request: pb.SubscribeRequest) -> None:
        if self._state == "open" or self._state == "closing":
            try:
                await self._outbox_in.send(request)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the stream ended: the sidecar delivers the event again

    # -- iterator form -------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Delivery]:
        if self._handler is not None:
            raise LifecycleError(
                f"subscription {self.name!r} has a handler; iterate only a subscription "
                "made without one"
            )
        if self._state == "new":
            raise LifecycleError(
                "enter the subscription first: 'async with client.subscribe(...) as sub'"
            )
        if self._state == "closed" and self._error is None:
            raise ClosedError(f"subscription {self.name!r} is closed")
        return self._iterate()  # what is left, then the error that ended the stream, if any

    async def _iterate(self) -> AsyncIterator[Delivery]:
        async with self._inbox.clone() as inbox:
            async for delivery in inbox:
                yield delivery
        if self._error is not None:
            raise self._error

    # -- handler form --------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Route deliveries to lanes: one key's events run one at a time, in order."""
        count = self.policy.concurrency
        ordered = self.policy.ordering == "partitionkey"
        round_robin = itertools.cycle(range(count))
        window = self._client.window
        lanes = [anyio.create_memory_object_stream[Delivery](window) for _ in range(count)]
        async with anyio.create_task_group() as tg:
            for _, lane_out in lanes:
                tg.start_soon(self._work, lane_out)
            try:
                with self._route_scope:
                    async for delivery in self._inbox:
                        key = delivery.event.partitionkey
                        index = hash(key) % count if ordered and key else next(round_robin)
                        lanes[index][0].send_nowait(delivery)  # room: at most `window` held
            finally:
                for lane_in, _ in lanes:
                    lane_in.close()  # the lanes finish what they hold
        self._outbox_in.close()  # then the writer sends the settlements and half-closes

    async def _work(self, lane: MemoryObjectReceiveStream[Delivery]) -> None:
        assert self._handler is not None
        sink = _as_sink(self._handler)
        reply_to = self.reply_to
        publish = self._client.publish
        async with lane:
            async for delivery in lane:
                try:
                    result = await sink(delivery.event)
                    if result is not None:  # to reply_to, and a request's reply inbox
                        await send_replies(publish, delivery.event, result, reply_to)
                except Exception as exc:
                    log.debug("subscription %s: handler failed on %s: %r", self.name, delivery, exc)
                    await delivery.nack(exc)
                else:
                    await delivery.ack()
