"""Invokers: the raw call of a function's code, wherever that code runs.

An :data:`Invoke` takes an event (or a list, for batches and correlated sets) and
returns what the function returned: None, an Event or a list of Events. It raises what
the function raised (``Drop`` included). Four kinds:

* :func:`python_invoker` for a callable in this process: an async function runs on the
  event loop (a timeout cancels it); a plain function runs in the thread pool, so it
  cannot block the loop (a timeout abandons the wait; the thread runs to its end);
* :func:`process_invoker` for ``isolation: process``: the event goes to a worker process
  encoded as JSON (a timeout abandons the wait; the worker stays busy until the
  handler returns);
* :func:`http_invoker` for an HTTP function: a binary-mode POST through the mesh's
  webhook session, with the webhook retry table; a 200 with a CloudEvent body is the
  reply.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio.to_thread

from eventmesh.errors import DeliveryError
from eventmesh.event import Event, decode_json_batch, encode_json, encode_json_batch
from eventmesh.triggers.function import Drop
from eventmesh.triggers.process import WorkerPool

if TYPE_CHECKING:
    from eventmesh.delivery.webhook import WebhookSink

__all__ = ["Invoke", "http_invoker", "is_async", "process_invoker", "python_invoker"]

Invoke: TypeAlias = Callable[[Any], Awaitable[Any]]
"""Calls a function's code with an Event or a list of Events; returns what it returned."""


def is_async(fn: Callable[..., Any]) -> bool:
    """True for an async function (or an object with an async ``__call__``)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


def python_invoker(fn: Callable[..., Any]) -> Invoke:
    """Call ``fn`` on the loop when it is async, else in a worker thread."""
    if is_async(fn):
        return fn

    async def in_thread(payload: Any) -> Any:
        return await anyio.to_thread.run_sync(partial(fn, payload), abandon_on_cancel=True)

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
            raise DeliveryError(f"function {name!r} raised {answer}")
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
