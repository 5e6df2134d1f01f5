"""A sidecar's ``Subscribe`` stream as a :class:`~eventmesh.connectors.base.Consumer`,
and the one place the gRPC client turns a failed call into our errors.

:class:`StreamConsumer` is the gRPC client's member of a consumer group: starting it
opens one ``Subscribe`` stream (``open`` first, then the sidecar's ``subscribed``), a
reader task puts the deliveries the stream brings into an inbox that ``fetch`` drains,
and a writer task sends the acks and nacks, granting the sidecar one more credit per
settlement, so at most ``window`` deliveries are unsettled here. A
:class:`~eventmesh.subscription.Subscription` reads it as it reads a connector's
consumer, with :meth:`StreamConsumer.reject` as its
:class:`~eventmesh.delivery.settle.HandBack`: the sidecar's copy of the policy retries
or dead-letters what failed.

Closing half-closes the stream once the settlements made so far are written; the sidecar
then leaves the group, and what was not acked goes to the group again. When the stream
ends by itself (the sidecar stopped, or closed the subscription), ``fetch`` hands out
what arrived, then raises the error that ended it, and the consumer counts as closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import grpc
import grpc.aio

from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._status import error_from_grpc
from eventmesh.bindings.protobuf import from_proto
from eventmesh.connectors.base import Consumer, Delivery
from eventmesh.delivery.deadletter import describe_error
from eventmesh.errors import (
    ClosedError,
    ConnectError,
    DeliveryError,
    EventMeshError,
    EventValidationError,
    SubscribeError,
)
from eventmesh.event import Event

if TYPE_CHECKING:
    from eventmesh.client.grpc import GrpcClient

__all__ = ["StreamConsumer", "StreamDelivery", "translate"]

log = logging.getLogger(__name__)

# Part of the wire protocol, as eventmesh.server.grpc writes them.
_ERROR_KEY: Final = "eventmesh-error"
_ATTRIBUTE_KEY: Final = "eventmesh-attribute"
# Codes that, without our metadata, come from the connection rather than the sidecar.
_TRANSPORT_CODES: Final = {"UNAVAILABLE", "UNIMPLEMENTED", "DEADLINE_EXCEEDED", "CANCELLED"}
_LEAVE_TIMEOUT: Final = 30.0
"""Seconds closing waits for the sidecar to end a half-closed stream before cutting it."""

_Call = grpc.aio.StreamStreamCall[pb.SubscribeRequest, pb.SubscribeResponse]


def translate(exc: grpc.aio.AioRpcError, address: str) -> EventMeshError:
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


@contextmanager
def calling(address: str) -> Iterator[None]:
    """Around calls to the sidecar at ``address``: a failed call raises our exception
    (:func:`translate`), and a call the client cut short by closing its channel (gRPC
    cancels it) ``ClosedError``; the caller's own cancellation goes through."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise translate(exc, address) from exc
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        raise ClosedError(
            f"the call to the sidecar at {address} was cut short: the client closed its channel"
        ) from None


class StreamDelivery(Delivery):
    """A delivery the sidecar sent on the stream, settled by its id."""

    __slots__ = ("_settled", "consumer", "delivery_id")

    def __init__(self, consumer: StreamConsumer, msg: pb.Delivery, event: Event) -> None:
        # The sidecar keeps partitions and offsets to itself: -1 says "not known here".
        super().__init__(
            event,
            topic=msg.topic or consumer.topic,
            partition=-1,
            offset=-1,
            key=event.partitionkey,
            attempt=msg.attempt,
        )
        self.consumer = consumer
        self.delivery_id = msg.delivery_id
        self._settled = False

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            ack = pb.Ack(delivery_ids=[self.delivery_id])
            await self.consumer._send(pb.SubscribeRequest(ack=ack))

    async def nack(self, delay: float = 0.0) -> None:
        # The sidecar's policy chooses the delay; ``delay`` cannot be passed on.
        await self.consumer.reject(self, None)


class StreamConsumer(Consumer):
    """One ``Subscribe`` stream to the sidecar of ``client``, opened with ``request``."""

    def __init__(self, client: GrpcClient, request: pb.Open) -> None:
        self.topic = request.topic
        self.group = request.group
        self.name = request.name or f"{request.topic}/{request.group}"
        """The subscription's name; the sidecar's, once started."""
        self._client = client
        self._request = request
        self._call: _Call | None = None
        self._error: EventMeshError | None = None
        window = client.window
        # At most `window` deliveries are unsettled, so these never fill up.
        self._inbox_in, self._inbox = anyio.create_memory_object_stream[Delivery](window)
        self._outbox_in, self._outbox = anyio.create_memory_object_stream[pb.SubscribeRequest](
            window + 1
        )
        self._scope = anyio.CancelScope()
        self._fetch_scope: anyio.CancelScope | None = None
        self._ended = anyio.Event()  # set when the stream and its tasks are done
        self._stream_ended = False
        self._running = False

    @property
    def closed(self) -> bool:
        """True once closed, or once the stream ended by itself."""
        return super().closed or self._stream_ended

    # -- lifecycle -----------------------------------------------------------------------

    async def _start(self) -> None:
        """Open the stream and join the group. Raises ``ConfigError`` for a filter,
        transform or policy the sidecar refuses."""
        client = self._client
        client._check_open()
        self._call = call = client._subscribe(None, metadata=client._metadata)  # written below
        with calling(client.address), anyio.move_on_after(client.timeout) as waited:
            # The sidecar sends headers once it has let the stream in, or ends the call
            # if it refuses it: writing before then could race the refusal, and gRPC's
            # client reports a write that lost that race as INTERNAL, not as the status
            # the sidecar sent (which a read of the ended call raises).
            await call.initial_metadata()
            if not call.done():
                await call.write(pb.SubscribeRequest(open=self._request))
            response = await call.read()
        if waited.cancelled_caught:
            call.cancel()
            raise SubscribeError(
                f"the sidecar at {client.address} did not confirm subscription "
                f"{self.name!r} within {client.timeout:g}s (the client's timeout); is it "
                "overloaded, or its broker out of reach?"
            )
        if not isinstance(response, pb.SubscribeResponse) or not response.HasField("subscribed"):
            raise SubscribeError(
                f"the sidecar at {client.address} did not confirm subscription {self.name!r}"
            )
        self.name = response.subscribed.name
        assert client._tg is not None
        await client._tg.start(self._run)

    async def _close(self) -> None:
        """Send the settlements made so far, half-close, and wait (a while) for the
        sidecar to end the stream; cut it short after that."""
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
        if not self._running:
            if self._call is not None:
                self._call.cancel()  # a start that failed half-way
            return
        self._outbox_in.close()  # the writer sends what is settled, then half-closes
        with anyio.move_on_after(_LEAVE_TIMEOUT):
            await self._ended.wait()
        self._scope.cancel()
        await self._ended.wait()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self._call is not None
        self._running = True
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._write)
                    task_status.started()
                    await self._read()
        except Exception as exc:  # a bug of ours: keep it from the client's other tasks
            log.exception("subscription %s stopped on an unexpected error", self.name)
            self._error = SubscribeError(f"subscription {self.name!r} failed: {exc!r}")
        finally:
            self._call.cancel()  # nothing when it ended; leaves the group when cut short
            self._ended.set()

    # -- the stream ----------------------------------------------------------------------

    async def _read(self) -> None:
        """Deliveries into the inbox until the sidecar ends the stream."""
        assert self._call is not None
        call = self._call
        try:
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
                    await self._send(pb.SubscribeRequest(nack=nack))
                    continue
                await self._inbox_in.send(StreamDelivery(self, msg, event))
        except grpc.aio.AioRpcError as exc:
            if not super().closed:
                self._error = translate(exc, self._client.address)
                log.error("subscription %s lost its stream: %s", self.name, self._error)
        finally:
            self._stream_ended = True  # before the inbox ends, so fetch sees both at once
            self._inbox_in.close()
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

    # -- fetching and settling -----------------------------------------------------------

    async def fetch(self, max_events: int = 256, timeout: float | None = None) -> list[Delivery]:
        """What the stream brought, up to ``max_events``, waiting up to ``timeout`` for
        the first; once the stream ended and its deliveries are handed out, the error
        that ended it (``[]`` when it ended because it was closed)."""
        self._check_fetch()
        inbox = self._inbox
        out: list[Delivery] = []
        self._fetch_scope = scope = anyio.move_on_after(timeout)  # closing cancels it too
        try:
            with scope:
                out.append(await inbox.receive())
        except anyio.EndOfStream:
            if self._error is not None:
                raise self._error from None
            return []
        finally:
            self._fetch_scope = None
        if not out:
            return []
        while len(out) < max_events:
            try:
                out.append(inbox.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        return out

    async def reject(self, delivery: Delivery, error: BaseException | str | None) -> None:
        """Nack ``delivery`` with ``error``, for the sidecar's policy to retry or
        dead-letter (a ``DeliveryError`` keeps its ``retryable`` and ``retry_after``)."""
        assert isinstance(delivery, StreamDelivery)
        if delivery._settled:
            return
        delivery._settled = True
        nack = pb.Nack(delivery_ids=[delivery.delivery_id])
        if isinstance(error, DeliveryError):
            nack.error = str(error)
            nack.give_up = not error.retryable
            if error.retry_after is not None:
                nack.retry_after = error.retry_after
        elif error is not None:
            nack.error = describe_error(error)
        await self._send(pb.SubscribeRequest(nack=nack))

    async def _send(self, request: pb.SubscribeRequest) -> None:
        try:
            await self._outbox_in.send(request)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the stream ended: the sidecar delivers the event again
