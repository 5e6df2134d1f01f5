"""Invokers: the raw call of a function's code, wherever that code runs.

An :data:`Invoke` takes an event (or a list, for batches and correlated sets) and
returns what the function returned: None, an Event or a list of Events. It raises what
the function raised (``Drop`` included). Four kinds:

* :func:`python_invoker` for a callable in this process: an async function runs on the
  event loop (a timeout cancels it); a plain function runs in the thread pool, so it
  cannot block the loop (a timeout abandons the wait; the thread runs to its end, and
  keeps its slot of :class:`ThreadSlots` until then);
* :func:`process_invoker` for ``isolation: process``: the event goes to a worker process
  encoded as JSON (a timeout abandons the wait and recycles the worker); ``Drop`` and a
  ``DeliveryError``'s ``retryable`` and ``retry_after`` come back as they were raised;
* :func:`http_invoker` for an HTTP function: a binary-mode POST through the mesh's
  webhook session, with the webhook retry table; a 200 with a CloudEvent body is the
  reply.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio.to_thread

from eventmesh.errors import DeliveryError
from eventmesh.event import Event, decode_json_batch, encode_json, encode_json_batch
from eventmesh.functions.function import Drop
from eventmesh.functions.process import WorkerPool

if TYPE_CHECKING:
    from eventmesh.delivery.webhook import WebhookSink

__all__ = [
    "Invoke",
    "ThreadSlots",
    "http_invoker",
    "is_async",
    "process_invoker",
    "python_invoker",
]

Invoke: TypeAlias = Callable[[Any], Awaitable[Any]]
"""Calls a function's code with an Event or a list of Events; returns what it returned."""


def is_async(fn: Callable[..., Any]) -> bool:
    """True for an async function (or an object with an async ``__call__``)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


class ThreadSlots:
    """At most ``limit`` threads of one plain function alive at once.

    A slot is taken before the thread starts and freed when the thread ends, not when
    its caller stops waiting: a thread abandoned at a timeout keeps its slot until the
    call returns, so a function that hangs cannot pile up threads with each retry (a
    caller waits for a slot, under its timeout).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._limiter = anyio.CapacityLimiter(limit)

    @property
    def live(self) -> int:
        """Threads running the function now (abandoned ones included)."""
        return int(self._limiter.borrowed_tokens)

    async def run(self, fn: Callable[[Any], Any], payload: Any) -> Any:
        """``fn(payload)`` in a worker thread, once a slot is free."""
        borrower = object()
        limiter = self._limiter
        await limiter.acquire_on_behalf_of(borrower)
        loop = asyncio.get_running_loop()
        lock = threading.Lock()
        state = "waiting"  # then "running" (the thread frees the slot) or "given up"

        def free() -> None:
            try:
                loop.call_soon_threadsafe(limiter.release_on_behalf_of, borrower)
            except RuntimeError:  # the loop is closed, and the limiter with it
                pass

        def call() -> Any:
            nonlocal state
            with lock:
                if state == "given up":
                    return None  # its caller left before the thread began
                state = "running"
            try:
                return fn(payload)
            finally:
                free()

        try:
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except BaseException:
            with lock:
                never_ran = state == "waiting"
                state = "given up"
            if never_ran:
                limiter.release_on_behalf_of(borrower)
            raise


def python_invoker(fn: Callable[..., Any], *, threads: int = 16) -> Invoke:
    """Call ``fn`` on the loop when it is async, else in a worker thread, with at most
    ``threads`` of them alive at once (:class:`ThreadSlots`)."""
    if is_async(fn):
        return fn
    slots = ThreadSlots(threads)

    async def in_thread(payload: Any) -> Any:
        return await slots.run(fn, payload)

    return in_thread


def process_invoker(pool: WorkerPool, name: str) -> Invoke:
    """Call the pool's handler in a worker process; events cross encoded as JSON."""

    async def in_process(payload: Any) -> Any:
        batch = not isinstance(payload, Event)
        data = encode_json_batch(payload) if batch else encode_json(payload)
        kind, answer = await pool.run(batch, data)
        if kind == "none":
            return None
        if kind == "events":
            return decode_json_batch(answer)
        if kind == "drop":
            raise Drop(answer)
        if kind == "error":
            text, retryable, retry_after = answer
            raise DeliveryError(
                f"function {name!r} raised {text}", retryable=retryable, retry_after=retry_after
            )
        raise DeliveryError(
            f"function {name!r} returned a {answer}; return None, an Event or a list of Events",
            retryable=False,
        )

    return in_process


def http_invoker(sink: WebhookSink) -> Invoke:
    """POST each event to the sink's URL; the CloudEvents it answers with are the reply."""

    async def over_http(payload: Any) -> Any:
        replies = await sink(payload)
        return replies or None

    return over_http
