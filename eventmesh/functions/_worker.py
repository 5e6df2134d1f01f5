"""What runs inside a worker process: import the handler once, call it per invocation.

Events cross the process boundary as JSON bytes (msgspec), never as pickled objects;
the answer is a ``(kind, payload)`` pair of plain values, so an exception the handler
raises never has to be picklable: what the mesh acts on (a ``Drop``'s reason, a
``DeliveryError``'s ``retryable`` and ``retry_after``) crosses as plain values too.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Callable
from typing import Any

from eventmesh._imports import import_callable
from eventmesh.delivery.deadletter import describe_error
from eventmesh.errors import DeliveryError
from eventmesh.event import Event, decode_json, decode_json_batch, encode_json_batch
from eventmesh.functions.function import Drop

__all__ = ["invoke", "ready"]

_handlers: dict[str, Callable[..., Any]] = {}


def _load(path: str) -> Callable[..., Any]:
    handler = _handlers.get(path)
    if handler is None:
        handler = _handlers[path] = import_callable(path, where="worker process")
    return handler


def ready(path: str) -> int:
    """Import the handler (the cold start's work); the worker's process id."""
    _load(path)
    return os.getpid()


def _seconds(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


async def _wait(awaitable: Any) -> Any:
    return await awaitable


def invoke(path: str, batch: bool, payload: bytes) -> tuple[str, Any]:
    """Call the handler on the encoded event (or list of events).

    Returns ``("none", b"")``, ``("events", batch_json)``, ``("drop", reason)``,
    ``("error", ("Type: message", retryable, retry_after))`` (``True, None`` unless the
    handler raised a ``DeliveryError``) or ``("invalid", type_name)``.
    """
    handler = _load(path)
    argument: Event | list[Event] = decode_json_batch(payload) if batch else decode_json(payload)
    try:
        result = handler(argument)
        if inspect.isawaitable(result):
            result = asyncio.run(_wait(result))
    except Drop as exc:
        return "drop", str(exc)
    except DeliveryError as exc:
        return "error", (describe_error(exc), bool(exc.retryable), _seconds(exc.retry_after))
    except BaseException as exc:  # SystemExit, KeyboardInterrupt, CancelledError too:
        # raised in the mesh, they would end it, or read as its own cancellation
        return "error", (describe_error(exc), True, None)
    if result is None:
        return "none", b""
    if isinstance(result, Event):
        return "events", encode_json_batch([result])
    if isinstance(result, list | tuple) and all(isinstance(e, Event) for e in result):
        return "events", encode_json_batch(list(result))
    return "invalid", type(result).__name__
