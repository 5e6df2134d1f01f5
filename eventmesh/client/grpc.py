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

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Self

import anyio
import anyio.abc
import grpc
import grpc.aio
import msgspec

from eventmesh._client import Client
from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._requests import check_wait
from eventmesh.bindings.protobuf import from_proto, to_proto, to_proto_batch
from eventmesh.client._remote import (
    bearer,
    check_tls_files,
    read_file,
    remote_services,
    warn_clear_text,
)
from eventmesh.client._stream import _ERROR_KEY, StreamConsumer, calling
from eventmesh.config import convert
from eventmesh.connectors.base import StartPosition
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.delivery.services import Services
from eventmesh.delivery.settle import HandBack
from eventmesh.errors import (
    ConfigError,
    ConnectError,
    EventValidationError,
    LifecycleError,
    PublishError,
)
from eventmesh.event import Event
from eventmesh.subscription import Subscription
from eventmesh.typing import Handler

__all__ = ["GrpcClient", "GrpcSubscription"]

log = logging.getLogger(__name__)

_SERVICE: Final = pb.DESCRIPTOR.services_by_name["EventMesh"].full_name
_json = msgspec.json.Encoder(enc_hook=float)  # a Duration is a float


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
    ``timeout`` how many seconds a publish, or a subscription's start, may take before
    ``PublishError`` or ``SubscribeError`` (as HttpClient's ``timeout``);
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
        timeout: float = 30.0,
        options: Sequence[tuple[str, Any]] | None = None,
        token: str | None = None,
        tls: bool = False,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
    ) -> None:
        if window < 1:
            raise ConfigError(f"window must be at least 1, got {window}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if address.startswith("grpcs://"):
            tls = True
        self.address = address.removeprefix("grpcs://").removeprefix("grpc://").rstrip("/")
        self.tls = tls
        self.window = window
        self.connect_timeout = connect_timeout
        self.timeout = float(timeout)
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
        self._subscriptions: dict[int, Subscription] = {}
        self._services: Services[Subscription] | None = None
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
            self._hold(stack.pop_all())
        # Replies through _send, which still works while the client closes.
        self._services = remote_services(self._send, self._tg, self._subscriptions)
        await self._opened()
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
        return await self._send(topic, events)

    async def _send(self, topic: str, events: Event | Sequence[Event]) -> list[str]:
        """:meth:`publish`, also while the client closes (for the handlers' replies)."""
        if not isinstance(topic, str):
            raise ConfigError(f"a topic name must be a non-empty string, got {topic!r}")
        with calling(self.address), self._publishing():
            if isinstance(events, Event):
                request = pb.PublishRequest(topic=topic, event=to_proto(events))
                await self._publish(request, metadata=self._metadata, timeout=self.timeout)
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
                pb.PublishBatchRequest(topic=topic, batch=batch),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        # PublishResponse.ids holds these same ids (the server reads them from the
        # request and stores it all or nothing); the ones sent need no decoding.
        return [event.id for event in events]

    @contextmanager
    def _publishing(self) -> Iterator[None]:
        """A publish that ran out of :attr:`timeout` (the client's own deadline, not an
        error of the sidecar's) is a PublishError that says what is not known."""
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            metadata: Any = exc.trailing_metadata() or ()
            sidecar_said = any(key == _ERROR_KEY for key, _ in metadata)
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or sidecar_said:
                raise
            raise PublishError(
                f"the sidecar at {self.address} did not answer the publish within "
                f"{self.timeout:g}s (GrpcClient timeout): a topic full under when_full: "
                "wait, or a broker that does not answer; the events may or may not be "
                "stored, so publish them again only where duplicates are harmless or the "
                "topic deduplicates"
            ) from exc

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
        with calling(self.address):
            # The call's own deadline is the sidecar's wait plus a margin, so the sidecar
            # answers a timeout itself (DEADLINE_EXCEEDED with RequestTimeoutError).
            answer = await self._ask(message, metadata=self._metadata, timeout=wait + 10)
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
        consumer = StreamConsumer(self, request)
        assert self._services is not None  # made on entering, and _check_open passed
        return GrpcSubscription(
            self._services,
            name=consumer.name,
            topic=topic,
            group=group,
            consumer=consumer,
            policy=policy,
            handler=handler,
            filter=None,  # the sidecar runs the filter, transform and policy
            transform=None,
            reply_to=reply_to,
            settle=HandBack(consumer.reject),
        )


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


class GrpcSubscription(Subscription):
    """A subscription on the sidecar, used as an embedded :class:`Subscription` is:
    ``async with``, ``await`` and ``close()``, ``async for`` with ack/nack, or a handler.
    It is one: the same class over a :class:`~eventmesh.client._stream.StreamConsumer`."""

    _consumer: StreamConsumer

    async def start(self) -> Self:
        """Open the stream and join the group (with a handler, start delivering).

        Raises ``ConfigError`` for a filter, transform or policy the sidecar refuses."""
        await super().start()
        self.name = self._consumer.name  # as the sidecar named it
        return self

    def __repr__(self) -> str:
        return f"<GrpcSubscription {self.name} {self._state}>"
