"""Pull delivery for the sidecar: delivery ids, ack deadlines and flow control.

A pull subscription is an iterator-form :class:`~eventmesh.subscription.Subscription`
with a :class:`PullQueue` in front of it. The queue reads from the subscription only
while a long poll or a stream is waiting and there is room: at most
``delivery.max_in_flight`` deliveries are fetched and not yet acked or nacked. Each
delivery handed out gets a fresh delivery id and an ack deadline; one reaper task nacks
those whose deadline passes with the error ``"ack deadline exceeded"``, so the attempt
counts and the subscription's policy (backoff, ``max_attempts``, dead letter) decides
what happens next, as for any nack. An ack or nack for an id that is not outstanding
(settled already, or redelivered after its deadline) is reported back as unknown.

Deliveries wait in the queue (``ready``) between the fetch and a poller taking them:
the fetch may finish after the poller that asked for it has gone. The next poller gets
them first; their ack deadline starts only when they are handed out.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.abc
import anyio.lowlevel

from eventmesh.errors import ClosedError, ConnectorError
from eventmesh.event import Event
from eventmesh.subscription import Delivery, Subscription

__all__ = ["ACK_DEADLINE_ERROR", "Handout", "PullQueue"]

log = logging.getLogger(__name__)

REAP_SWEEP: Final = 256
"""Expired deliveries the reaper takes at a time before it lets the loop run."""
ACK_DEADLINE_ERROR = "ack deadline exceeded"
"""The error recorded on a delivery that was neither acked nor nacked in time."""


@dataclass(frozen=True, slots=True)
class Handout:
    """One delivery as a puller sees it: its id, the attempt number and the event."""

    delivery_id: str
    attempt: int
    event: Event


class _Signal:
    """Wakes every task waiting on it (an anyio.Event that re-arms itself)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def fire(self) -> None:
        event, self._event = self._event, anyio.Event()
        event.set()

    async def wait(self) -> None:
        await self._event.wait()


class PullQueue:
    """The outstanding deliveries of one pull subscription, and the tasks that keep them.

    Start :meth:`run` in a task group; it returns once :meth:`close` was called or the
    subscription ended. Closing wakes every waiting poller and stream.
    """

    def __init__(self, subscription: Subscription, *, ack_deadline: float) -> None:
        self.subscription = subscription
        self.ack_deadline = ack_deadline
        self.max_in_flight = subscription.policy.max_in_flight
        self._ready: deque[Delivery] = deque()
        self._outstanding: OrderedDict[str, tuple[Delivery, float]] = OrderedDict()
        """Handed out and not settled, in hand-out order, which is deadline order (one
        deadline for all). Ordered, so the reaper reads the oldest in constant time: a
        plain dict scans the slots its deletions left at its front, and reaping 100,000
        expired deliveries held the loop for 11 s."""
        self._wanted = 0  # deliveries asked for by the pollers and streams now waiting
        self._waiting = 0
        self._demand = _Signal()  # someone waits, or room was made: the fetcher may go on
        self._arrived = _Signal()  # a delivery is ready, or the queue closed
        self._handed = _Signal()  # the first outstanding delivery appeared: for the reaper
        self._closed = False
        self._failures = 0  # fetches failed in a row, for the back-off

    @property
    def closed(self) -> bool:
        """True once the queue was closed (or its subscription ended)."""
        return self._closed

    @property
    def waiting(self) -> int:
        """Long polls and streams waiting for a delivery right now."""
        return self._waiting

    @property
    def outstanding(self) -> int:
        """Deliveries handed out and not yet acked, nacked or past their deadline."""
        return len(self._outstanding)

    def _room(self) -> int:
        return self.max_in_flight - len(self._outstanding) - len(self._ready)

    # -- lifecycle -----------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Fetch on demand and reap expired deliveries until closed."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reap, tg)
            task_status.started()
            try:
                await self._fetch()
            finally:
                self._close()
                tg.cancel_scope.cancel()

    def close(self) -> None:
        """Stop handing out deliveries and wake every waiter. What is not acked goes back
        to the group when the subscription closes. Idempotent."""
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._arrived.fire()
        self._demand.fire()
        self._handed.fire()

    # -- the fetcher and the reaper ------------------------------------------------------

    async def _fetch(self) -> None:
        while not self._closed:
            try:
                await self._fetch_until_failure()
                return
            except ConnectorError as exc:
                # The backend may come back (a broker restart, a network blip), as for a
                # handler subscription: keep the subscription and fetch again after a
                # back-off. The loop goes on where it stopped.
                self._failures += 1
                delay = self.subscription.policy.backoff.delay(min(self._failures, 10))
                log.warning(
                    "pull subscription %s could not fetch (%s); retrying in %.1fs",
                    self.subscription.name,
                    exc,
                    delay,
                )
                with anyio.move_on_after(delay):
                    while not self._closed:
                        await self._arrived.wait()  # closing fires it

    async def _fetch_until_failure(self) -> None:
        deliveries: AsyncIterator[Delivery] = aiter(self.subscription)
        try:
            while not self._closed:
                if len(self._ready) >= self._wanted or self._room() <= 0:
                    await self._demand.wait()
                    continue
                try:
                    delivery = await anext(deliveries)
                except (StopAsyncIteration, ClosedError):
                    return
                self._failures = 0  # fetching works: the next failure waits the least
                self._ready.append(delivery)
                self._arrived.fire()
        finally:
            if isinstance(deliveries, AsyncGenerator):
                with anyio.CancelScope(shield=True):
                    await deliveries.aclose()

    async def _reap(self, tg: anyio.abc.TaskGroup) -> None:
        outstanding = self._outstanding
        while not self._closed:
            if not outstanding:
                await self._handed.wait()
                continue
            # One deadline for the whole queue, so insertion order is deadline order.
            delivery_id = next(iter(outstanding))
            deadline = outstanding[delivery_id][1]
            now = anyio.current_time()
            if deadline > now:
                await anyio.sleep(deadline - now)
                continue
            # Those due, a bounded sweep at a time with one log line for it: the loop
            # runs between sweeps however many are due at once.
            expired: list[tuple[str, Delivery]] = []
            while outstanding and len(expired) < REAP_SWEEP:
                delivery_id = next(iter(outstanding))
                delivery, deadline = outstanding[delivery_id]
                if deadline > now:
                    break
                del outstanding[delivery_id]
                expired.append((delivery_id, delivery))
            self._demand.fire()
            log.info(
                "subscription %s: %d deliveries were not acked within %.1fs (the first: %s of "
                "event %s); they count as failed attempts",
                self.subscription.name,
                len(expired),
                self.ack_deadline,
                expired[0][0],
                expired[0][1].event.id,
            )
            for delivery_id, delivery in expired:
                tg.start_soon(self._expire, delivery_id, delivery)
            await anyio.lowlevel.checkpoint()

    async def _expire(self, delivery_id: str, delivery: Delivery) -> None:
        """Nack a delivery past its deadline, in a task of its own: a nack that waits (a
        last attempt's dead letter to a topic out of reach) holds up no other deadline,
        and one that fails leaves the delivery outstanding for another deadline."""
        try:
            await delivery.nack(ACK_DEADLINE_ERROR)
        except Exception as exc:
            log.warning(
                "subscription %s: the nack of expired delivery %s failed (%s); it is tried "
                "again after another %.1fs",
                self.subscription.name,
                delivery_id,
                exc,
                self.ack_deadline,
            )
            self._keep([(delivery_id, (delivery, anyio.current_time() + self.ack_deadline))])

    # -- pollers and streams -------------------------------------------------------------

    async def take(
        self, max_events: int, wait: float | None, *, alive: Callable[[], bool] | None = None
    ) -> list[Handout]:
        """Up to ``max_events`` deliveries; waits up to ``wait`` seconds (None: until
        closed) for the first, then returns at once with what it has.

        With ``wait`` 0 it answers at once with the deliveries at hand, after letting the
        fetch run once; that may be none while events are on their way from the
        backend, so pollers should wait a little. An empty list once closed, and when
        ``alive`` says the caller has gone by then (what it would have been handed stays
        for the next one, its attempt not counted).
        """
        if not self._ready and not self._closed:
            self._wanted += max_events
            self._waiting += 1
            self._demand.fire()
            try:
                if wait is not None and wait <= 0:
                    await anyio.lowlevel.checkpoint()
                else:
                    with anyio.move_on_after(wait):
                        while not self._ready and not self._closed:
                            await self._arrived.wait()
            finally:
                self._wanted -= max_events
                self._waiting -= 1
        if alive is not None and not alive():
            return []
        return self._hand_out(max_events)

    def _hand_out(self, max_events: int) -> list[Handout]:
        if self._closed:
            return []
        out: list[Handout] = []
        ready = self._ready
        deadline = anyio.current_time() + self.ack_deadline
        first = not self._outstanding
        while ready and len(out) < max_events:
            delivery = ready.popleft()
            delivery_id = uuid.uuid4().hex
            self._outstanding[delivery_id] = (delivery, deadline)
            out.append(Handout(delivery_id, delivery.attempt, delivery.event))
        if out and first:
            self._handed.fire()
        return out

    def give_back(self, handouts: Sequence[Handout]) -> None:
        """Put deliveries just handed out back at the front of the queue, in their order,
        their attempt not counted: what a caller took but could not send (an answer
        that would be too large) goes to the next one first. Ids not outstanding (settled
        or expired since) are skipped."""
        back = [
            entry[0]
            for handout in handouts
            if (entry := self._outstanding.pop(handout.delivery_id, None)) is not None
        ]
        if back and not self._closed:
            self._ready.extendleft(reversed(back))
            self._arrived.fire()

    # -- settling ------------------------------------------------------------------------

    async def ack(self, delivery_ids: Iterable[str]) -> tuple[int, list[str]]:
        """Ack each outstanding delivery; returns how many, and the ids not outstanding."""
        acked = 0
        unknown: list[str] = []
        for delivery_id in delivery_ids:
            entry = self._outstanding.pop(delivery_id, None)
            if entry is None:
                unknown.append(delivery_id)
                continue
            try:
                await entry[0].ack()
            except BaseException:
                self._keep([(delivery_id, entry)])
                raise
            acked += 1
        if acked:
            self._demand.fire()
        return acked, unknown

    async def nack(
        self, delivery_ids: Iterable[str], error: str | BaseException | None = None
    ) -> tuple[int, list[str]]:
        """Nack each outstanding delivery (retried or dead-lettered under the policy);
        returns how many, and the ids not outstanding."""
        nacked = 0
        unknown: list[str] = []
        entries: list[tuple[str, tuple[Delivery, float]]] = []
        for delivery_id in delivery_ids:
            entry = self._outstanding.pop(delivery_id, None)
            if entry is None:
                unknown.append(delivery_id)
                continue
            entries.append((delivery_id, entry))
        if entries:
            self._demand.fire()
        try:
            for _, (delivery, _deadline) in entries:
                await delivery.nack(error)
                nacked += 1
        except BaseException:
            self._keep(entries[nacked:])
            raise
        return nacked, unknown

    def _keep(self, entries: list[tuple[str, tuple[Delivery, float]]]) -> None:
        """Deliveries whose ack or nack failed (or was cut short), outstanding again: the
        client may settle them again, and the reaper nacks them at their deadline, so
        none is left unsettled in the connector until the subscription closes."""
        for delivery_id, entry in entries:
            self._outstanding[delivery_id] = entry
        if entries:
            self._handed.fire()
