"""One running function: where every invocation happens, and what its result means.

:meth:`FunctionRunner.invoke` is the one place a function is called, for single
events, batches and correlated sets alike. In order it: waits for the rate limit,
takes a concurrency slot (for single events the dispatcher's lanes are the slots),
calls the invoker under the timeout, counts the outcome on
:class:`~eventmesh.functions.stats.FunctionStats`, and publishes the replies. It returns
when the event(s) may be acked and raises when they must be retried. What each result
means: docs/functions.md, 'What a function returns'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import anyio

from eventmesh._requests import reply_address, send_replies
from eventmesh.errors import DeliveryError
from eventmesh.event import Event
from eventmesh.functions.function import CAUSATION_EXTENSION, Drop, Function
from eventmesh.functions.invoker import Invoke
from eventmesh.functions.limits import RateLimiter
from eventmesh.functions.process import WorkerPool
from eventmesh.functions.stats import FunctionStats
from eventmesh.observability.histogram import Histogram

if TYPE_CHECKING:
    from eventmesh.observability.tracing import Tracing

__all__ = ["CAUSATION_EXTENSION", "FunctionRunner", "with_cause"]

log = logging.getLogger(__name__)


_TRACE: Final = ("traceparent", "tracestate")

Publish = Callable[[str, Sequence[Event]], Awaitable[None]]


def with_cause(reply: Event, cause: Event) -> Event:
    """``reply`` with ``causationid`` set to the cause's id and the cause's trace context,
    where the reply does not set them itself."""
    ext = reply.extensions
    added: dict[str, Any] = {}
    if CAUSATION_EXTENSION not in ext:
        added[CAUSATION_EXTENSION] = cause.id
    if "traceparent" not in ext:
        for name in _TRACE:
            value = cause.extensions.get(name)
            if value is not None:
                added[name] = value
    if not added:
        return reply
    return reply.replace(extensions={**ext, **added})


class FunctionRunner:
    """A declared function made runnable: its invoker, limits, stats and reply topic."""

    def __init__(
        self,
        function: Function,
        *,
        call: Invoke,
        publish: Publish,
        kind: str,
        pool: WorkerPool | None = None,
        stats: FunctionStats | None = None,
        tracing: Tracing | None = None,
        duration: Histogram | None = None,
    ) -> None:
        spec = function.spec
        self.tracing = tracing
        """Makes a ``function`` span per call (None: tracing off)."""
        self.duration = duration
        """Seconds per call, for the metrics (None: metrics off)."""
        self.function = function
        self.name = spec.name
        self.kind = kind
        """``async``, ``thread``, ``process`` or ``http``."""
        self.reply_to = spec.reply_to
        self.timeout = float(spec.timeout) if spec.timeout is not None else None
        self.stats = stats or FunctionStats()
        self.pool = pool
        self._call = call
        self._publish = publish
        # A single-event function gets no more events at once than its dispatcher has
        # lanes (``concurrency``): a limiter would only add two loop round trips per call.
        # Batches and correlated sets are invoked from more tasks than that, so they
        # need one.
        limited = spec.batch is not None or spec.correlate is not None
        self._limiter = anyio.CapacityLimiter(spec.concurrency) if limited else None
        self._rate = RateLimiter(spec.rate_limit, spec.burst) if spec.rate_limit else None
        self.sink: Callable[[Event], Awaitable[None]] = self.invoke
        """What a single-event trigger's subscription calls: :meth:`invoke`, or, when no
        span, rate limit or slot comes first, the invocation itself: one coroutine frame
        per event instead of three (the function layer's cost over a plain handler)."""
        if tracing is None and self._rate is None and self._limiter is None:
            direct = pool is None and self.timeout is None
            self.sink = self._direct() if direct else self._run

    failed = False
    """True once the function's trigger stopped for good (a correlation trigger's
    unexpected error): it reads no more events."""

    @property
    def state(self) -> str:
        """``failed`` once the trigger stopped for good; ``running`` while an invocation
        runs; else ``idle``, or for a process function whose workers are stopped ``cold``
        (``starting`` during a cold start)."""
        if self.failed:
            return "failed"
        if self.stats.in_flight:
            return "running"
        if self.pool is not None and self.pool.state != "warm":
            return self.pool.state
        return "idle"

    def describe(self) -> dict[str, Any]:
        """What the admin API lists for this function."""
        spec = self.function.spec
        return {
            "name": self.name,
            "kind": self.kind,
            "topic": spec.trigger.topic,
            "group": spec.group,
            "reply_to": spec.reply_to,
            "state": self.state,
            "workers": sorted(self.pool.pids) if self.pool is not None else [],
            **self.stats.as_dict(),
        }

    async def invoke(self, payload: Event | list[Event]) -> None:
        """Invoke the function once on an event, a batch or a correlated set; return
        when the event(s) may be acked, raise when they must be retried (module doc)."""
        if self.tracing is None:
            await self._invoke(payload)
            return
        cause = payload if isinstance(payload, Event) else payload[0]
        with self.tracing.function_span(self.name, cause):  # replies become its children
            await self._invoke(payload)

    async def _invoke(self, payload: Event | list[Event]) -> None:
        if self._rate is not None:
            await self._rate.acquire(1 if isinstance(payload, Event) else len(payload))
        if self._limiter is None:
            await self._run(payload)
        else:
            async with self._limiter:
                await self._run(payload)

    async def _run(self, payload: Event | list[Event]) -> None:
        stats = self.stats
        if self.pool is not None and self.pool.state != "warm":
            # The cold start is bounded on its own (process.COLD_START_TIMEOUT), not
            # by the invocation's timeout, which starts once a worker is ready.
            try:
                await self.pool.ready()
            except Exception:
                stats.invocations += 1
                stats.failures += 1
                raise
        if self.pool is None:
            await self._timed(payload)
        else:
            async with self.pool.slots:  # a free worker first: the timeout starts after
                await self._timed(payload)

    async def _timed(self, payload: Event | list[Event]) -> None:
        stats = self.stats
        stats.invocations += 1
        stats.in_flight += 1
        started = time.perf_counter()
        timed_out = False
        try:
            if self.timeout is None:
                result = await self._call(payload)
            else:
                with anyio.move_on_after(self.timeout) as scope:
                    result = await self._call(payload)
                timed_out = scope.cancelled_caught
        except Drop as exc:
            self._dropped(payload, exc)
            return
        except Exception:
            stats.failures += 1
            raise
        except (SystemExit, KeyboardInterrupt) as exc:
            stats.failures += 1
            raise self._exited(exc) from exc
        finally:
            stats.in_flight -= 1
            elapsed = time.perf_counter() - started
            stats.duration_sum += elapsed
            if self.duration is not None:
                self.duration.observe(elapsed)
        if timed_out:
            stats.failures += 1
            stats.timeouts += 1
            raise DeliveryError(
                f"function {self.name!r} timed out after {self.timeout:g}s (its timeout); retrying"
            )
        if result is not None:
            await self._answer(result, payload)

    def _direct(self) -> Callable[[Event], Awaitable[None]]:
        """:meth:`_run` for one event of a function with no worker pool and no timeout,
        as a closure over what it uses: the same counting and results in one coroutine
        frame, without attribute look-ups (the function layer's per-event cost)."""
        stats = self.stats
        call = self._call
        clock = time.perf_counter
        duration = self.duration
        pending = duration.pending if duration is not None else None
        fold_at = Histogram.FOLD_AT

        async def invoke_one(event: Event) -> None:
            stats.invocations += 1
            stats.in_flight += 1
            started = clock()
            try:
                result = await call(event)
            except Drop as exc:
                self._dropped(event, exc)
                return
            except Exception:
                stats.failures += 1
                raise
            except (SystemExit, KeyboardInterrupt) as exc:
                stats.failures += 1
                raise self._exited(exc) from exc
            finally:
                stats.in_flight -= 1
                elapsed = clock() - started
                stats.duration_sum += elapsed
                if pending is not None:  # Histogram.observe, inlined
                    pending.append(elapsed)
                    if len(pending) >= fold_at:
                        duration.fold()  # type: ignore[union-attr]
            if result is not None:
                await self._answer(result, event)

        return invoke_one

    def _exited(self, exc: BaseException) -> DeliveryError:
        """A handler's SystemExit or KeyboardInterrupt, as the failed attempt it is: raised
        on, it would end the mesh (a thread's is raised again in the mesh's task)."""
        return DeliveryError(f"function {self.name!r} raised {type(exc).__name__}: {exc}")

    def _dropped(self, payload: Event | list[Event], exc: Drop) -> None:
        self.stats.dropped += 1
        cause = payload if isinstance(payload, Event) else payload[0]
        log.debug("function %s dropped event %s: %s", self.name, cause.id, exc)

    async def _answer(self, result: Any, payload: Event | list[Event]) -> None:
        """Publish what the function returned (module docstring)."""
        stats = self.stats
        cause = payload if isinstance(payload, Event) else payload[0]
        replies = self._replies(result, cause)
        if replies:
            try:
                # To reply_to, and for a request to its reply inbox (eventmesh._requests).
                answers = [with_cause(r, cause) for r in replies]
                await send_replies(self._publish, cause, answers, self.reply_to)
            except Exception:
                stats.failures += 1
                raise
            stats.replies += len(replies)

    def _replies(self, result: Any, cause: Event) -> list[Event]:
        if result is None:
            return []
        if isinstance(result, Event):
            replies = [result]
        elif isinstance(result, list | tuple) and all(isinstance(e, Event) for e in result):
            replies = list(result)
        else:
            self.stats.failures += 1
            raise DeliveryError(
                f"function {self.name!r} returned a {type(result).__name__}; return None, "
                "an Event or a list of Events",
                retryable=False,
            )
        if replies and self.reply_to is None and reply_address(cause) is None:
            self.stats.failures += 1
            raise DeliveryError(
                f"function {self.name!r} returned {len(replies)} event(s) but has no "
                "reply_to; set reply_to to publish them (the cause is dead-lettered so the "
                "reply is not lost)",
                retryable=False,
            )
        return replies
