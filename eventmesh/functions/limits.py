"""The controls applied before a function is invoked: a rate limit and batching."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from eventmesh.delivery.deadletter import describe_error
from eventmesh.errors import DeliveryError
from eventmesh.event import Event

__all__ = ["Batcher", "RateLimiter"]


class RateLimiter:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved up.

    :meth:`acquire` waits its turn (first come, first served) until enough tokens are
    there. A batch larger than ``burst`` waits for ``burst`` tokens and leaves the
    bucket in debt, so the rate still holds over time.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0:
            raise ValueError("rate must be more than 0")
        self.rate = float(rate)
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()
        self._lock = anyio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, tokens: int = 1) -> None:
        """Take ``tokens`` (events), waiting as long as the rate requires."""
        async with self._lock:
            self._refill()
            want = min(tokens, self.burst)
            if self._tokens < want:
                await anyio.sleep((want - self._tokens) / self.rate)
                self._refill()
            self._tokens -= tokens


class _Batch:
    __slots__ = ("done", "error", "events", "full")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.full = anyio.Event()
        self.done = anyio.Event()
        self.error: BaseException | None = DeliveryError(
            "the batch was cancelled before the function returned; retrying"
        )


class Batcher:
    """Gathers the events of concurrent calls into lists for ``run``.

    The first call opens a batch and waits up to ``window`` seconds, or until ``size``
    events joined; then it calls ``run`` with the list. Every call returns when ``run``
    returned, or raises when it raised, so each event is acked, or retried under the
    policy, with its batch.
    """

    def __init__(
        self, size: int, window: float, run: Callable[[list[Event]], Awaitable[None]]
    ) -> None:
        self.size = size
        self.window = window
        self._run = run
        self._open: _Batch | None = None

    async def __call__(self, event: Event) -> None:
        """Add ``event`` to the open batch (or open one); return with its outcome."""
        batch = self._open
        leader = batch is None
        if batch is None:
            batch = self._open = _Batch()
        batch.events.append(event)
        if len(batch.events) >= self.size:
            self._open = None
            batch.full.set()
        if not leader:
            await batch.done.wait()
            error = batch.error
            if error is not None:
                # A fresh error per caller: one exception raised in many tasks would
                # collect all their tracebacks.
                retryable = not isinstance(error, DeliveryError) or error.retryable
                raise DeliveryError(
                    f"its batch of {len(batch.events)} events failed: {describe_error(error)}",
                    retryable=retryable,
                )
            return
        try:
            with anyio.move_on_after(self.window):
                await batch.full.wait()
            if self._open is batch:
                self._open = None
            await self._run(batch.events)
            batch.error = None
        except Exception as exc:
            batch.error = exc
            raise
        finally:
            if self._open is batch:  # the leader was cancelled: nobody runs this batch
                self._open = None
            batch.done.set()
