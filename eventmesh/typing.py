"""The plain-callable shapes of user behaviour, named once for every layer.

A filter says whether a subscription wants an event; a transform returns the event to
deliver instead, or None to drop it on purpose; a sink receives an event and returns
when it is handled (raising to have it retried); a handler is what a user gives
``subscribe(handler=...)``, made into a sink. The pipeline compiles config into the
first two; the delivery engine calls the sinks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from eventmesh.event import Event

__all__ = ["Filter", "Handler", "Sink", "Transform"]

Filter: TypeAlias = Callable[[Event], bool]
"""True for events the subscription wants. Raises only on a real error."""
Transform: TypeAlias = Callable[[Event], Event | None]
"""The event to deliver instead, or None to drop this one on purpose."""
Sink: TypeAlias = Callable[[Event], Awaitable[Any]]
"""Where a subscription's events go: returns when handled, raises to have it retried."""
Handler: TypeAlias = Callable[[Event], Awaitable[Any]] | Callable[[Event], Any]
"""A subscription handler: async functions run on the loop, plain ones in a worker thread
so they cannot block it. Returning acks the event (a returned Event is a reply); raising
retries it."""
