"""A sidecar's pull subscription as a :class:`~eventmesh.connectors.base.Consumer`.

:class:`PullConsumer` is the HTTP client's member of a consumer group: starting it
creates a ``pull`` subscription on the sidecar (``POST /subscriptions``), ``fetch``
long-polls ``GET /subscriptions/{id}/events``, each :class:`PulledDelivery` is acked or
nacked by its delivery id, and closing it deletes the subscription, which hands what was
not acked to the group again. A :class:`~eventmesh.subscription.Subscription` reads it
as it reads a connector's consumer, with :meth:`PullConsumer.reject` as its
:class:`~eventmesh.delivery.settle.HandBack`: the sidecar's copy of the policy retries
or dead-letters what failed.

The sidecar's ack deadline runs from the moment it hands a delivery out, so the
consumer holds at most ``window`` unsettled deliveries: ``fetch`` waits for room.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import quote

import anyio
import msgspec

from eventmesh._status import NotFoundError
from eventmesh.connectors.base import Consumer, Delivery
from eventmesh.delivery.deadletter import describe_error
from eventmesh.errors import (
    ClosedError,
    ConnectorError,
    DeliveryError,
    EventMeshError,
    EventValidationError,
    SubscribeError,
)
from eventmesh.event import Event, decode_json

if TYPE_CHECKING:
    from eventmesh.client.http import HttpClient

__all__ = ["PullConsumer", "PulledDelivery"]

log = logging.getLogger(__name__)

_WAIT: Final = 5
"""Seconds one long poll waits on the sidecar; closing the consumer cuts it short."""


class _Pulled(msgspec.Struct, frozen=True):
    delivery_id: str
    attempt: int
    event: msgspec.Raw


class _Pull(msgspec.Struct, frozen=True):
    deliveries: list[_Pulled]


class _Created(msgspec.Struct):
    id: str


_decode_pull = msgspec.json.Decoder(_Pull).decode


class PulledDelivery(Delivery):
    """A delivery the sidecar handed out, settled by its id."""

    __slots__ = ("_settled", "consumer", "delivery_id")

    def __init__(self, consumer: PullConsumer, pulled: _Pulled, event: Event) -> None:
        # The sidecar keeps partitions and offsets to itself: -1 says "not known here".
        super().__init__(
            event,
            topic=consumer.topic,
            partition=-1,
            offset=-1,
            key=event.partitionkey,
            attempt=pulled.attempt,
        )
        self.consumer = consumer
        self.delivery_id = pulled.delivery_id
        self._settled = False

    async def ack(self) -> None:
        await self.consumer._settle(self, "ack", None)

    async def nack(self, delay: float = 0.0) -> None:
        # The sidecar's policy chooses the delay; ``delay`` cannot be passed on.
        await self.consumer._settle(self, "nack", None)


class PullConsumer(Consumer):
    """A pull subscription on the sidecar of ``client``, created from ``body`` (the JSON
    of ``POST /subscriptions``), holding at most ``window`` unsettled deliveries."""

    def __init__(
        self, client: HttpClient, *, topic: str, group: str, name: str, body: bytes, window: int
    ) -> None:
        self.topic = topic
        self.group = group
        self.name = name
        self.id: str | None = None
        """The subscription's id on the sidecar, once started."""
        self._client = client
        self._body = body
        self._window = window
        self._path = ""
        self._unsettled = 0
        self._room: anyio.Event | None = None
        self._poll_scope: anyio.CancelScope | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def _start(self) -> None:
        """Create the subscription on the sidecar; raises ``ConfigError`` for a filter,
        transform or policy it refuses."""
        self._client._check_open()
        await self._create()

    async def _create(self) -> None:
        headers = {"Content-Type": "application/json"}
        answer = await self._client._request(
            "POST", "/subscriptions", data=self._body, headers=headers
        )
        self.id = msgspec.json.decode(answer, type=_Created).id
        self._path = f"/subscriptions/{quote(self.id, safe='')}"

    async def _close(self) -> None:
        if self._poll_scope is not None:
            self._poll_scope.cancel()
        self._wake()
        if self.id is None or self._client._state == "closed":
            return
        with anyio.CancelScope(shield=True):
            try:
                await self._client._request("DELETE", self._path)
            except NotFoundError:
                pass
            except EventMeshError as exc:
                log.warning("subscription %s: could not delete it: %s", self.name, exc)

    # -- fetching ------------------------------------------------------------------------

    async def fetch(self, max_events: int = 256, timeout: float | None = None) -> list[Delivery]:
        """Long-poll until deliveries come (up to ``max_events``, and no more than the
        room left in the window), ``timeout`` passes or the consumer closes."""
        self._check_fetch()
        with anyio.move_on_after(timeout):
            while not self.closed:
                room = self._window - self._unsettled
                if room <= 0:
                    self._room = wake = anyio.Event()
                    await wake.wait()
                    continue
                batch = await self._poll(min(max_events, room))
                if batch:
                    return batch
        return []

    async def _poll(self, max_events: int) -> list[Delivery]:
        """One long poll: ``[]`` when nothing came, or the consumer closed meanwhile."""
        path = f"{self._path}/events?max={max_events}&wait={_WAIT}"
        answer = b""
        self._poll_scope = scope = anyio.CancelScope()
        try:
            with scope:
                if not self.closed:
                    answer = await self._client._request("GET", path, wait=_WAIT)
        except NotFoundError:
            if self.closed:
                return []
            # The sidecar restarted, or someone deleted the subscription: join again.
            log.warning("subscription %s is gone from the sidecar; creating it again", self.name)
            await self._create()
            return []
        except (ConnectorError, ClosedError):
            raise
        except EventMeshError as exc:
            # The sidecar, or a proxy before it, refused this poll (a 5xx, 429, 401...):
            # a SubscribeError, which a handler subscription meets by polling again after
            # a back-off, rather than stopping for good.
            raise SubscribeError(
                f"subscription {self.name!r}: the sidecar refused a poll ({exc}); poll again later"
            ) from exc
        finally:
            self._poll_scope = None
        if not answer or self.closed:
            return []
        try:
            pulled = _decode_pull(answer)
        except msgspec.DecodeError as exc:
            raise SubscribeError(
                f"subscription {self.name!r}: unreadable deliveries: {exc}"
            ) from exc
        if len(pulled.deliveries) > max_events:
            raise SubscribeError(
                f"subscription {self.name!r}: the sidecar sent {len(pulled.deliveries)} "
                f"deliveries for a poll of at most {max_events}; they come again after "
                "their ack deadline"
            )
        out: list[Delivery] = []
        for item in pulled.deliveries:
            try:
                event = decode_json(item.event)
            except EventValidationError as exc:
                await self._give_up(item, exc)
                continue
            out.append(PulledDelivery(self, item, event))
        self._unsettled += len(out)
        return out

    async def _give_up(self, item: _Pulled, error: EventValidationError) -> None:
        """Nack what cannot be read as an event, for the sidecar to dead-letter (as the
        gRPC stream does), so that one unreadable event stops nothing else."""
        log.warning(
            "subscription %s: delivery %s is not a valid event (%s); handed back to be "
            "dead-lettered",
            *(self.name, item.delivery_id, error),
        )
        body = {"delivery_ids": [item.delivery_id], "error": str(error), "give_up": True}
        await self._post(item.delivery_id, "nack", body)

    def _wake(self) -> None:
        room, self._room = self._room, None
        if room is not None:
            room.set()

    # -- settling ------------------------------------------------------------------------

    async def reject(self, delivery: Delivery, error: BaseException | str | None) -> None:
        """Nack ``delivery`` with ``error``, for the sidecar's policy to retry or
        dead-letter (a ``DeliveryError``'s ``retryable`` and ``retry_after`` travel)."""
        assert isinstance(delivery, PulledDelivery)
        await self._settle(delivery, "nack", error)

    async def _settle(
        self,
        delivery: PulledDelivery,
        verb: Literal["ack", "nack"],
        error: BaseException | str | None,
    ) -> None:
        """Ack or nack one delivery, once. Failures are logged, not raised: the sidecar
        delivers what it did not see settled again (at-least-once)."""
        if delivery._settled:
            return
        delivery._settled = True
        self._unsettled -= 1
        self._wake()
        body: dict[str, Any] = {"delivery_ids": [delivery.delivery_id]}
        if error is not None:
            body["error"] = describe_error(error)
        if isinstance(error, DeliveryError):
            body["give_up"] = not error.retryable
            if error.retry_after is not None:
                body["retry_after"] = error.retry_after
        await self._post(delivery.delivery_id, verb, body)

    async def _post(self, delivery_id: str, verb: Literal["ack", "nack"], body: Any) -> None:
        """Send one settlement; a failure is logged (the delivery comes again)."""
        try:
            answer = msgspec.json.decode(
                await self._client._request("POST", f"{self._path}/{verb}", json=body)
            )
        except EventMeshError as exc:
            log.warning(
                "subscription %s: the %s of delivery %s failed (%s); it comes again",
                *(self.name, verb, delivery_id, exc),
            )
            return
        if isinstance(answer, dict) and answer.get("unknown"):
            log.info(
                "subscription %s: delivery %s was no longer outstanding at its %s (settled "
                "already, or handed out again after its ack deadline)",
                *(self.name, delivery_id, verb),
            )
