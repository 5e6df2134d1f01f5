"""The plain-callable shapes of user behaviour, named once for every layer.

A filter says whether a subscription wants an event; a transform returns the event to
deliver instead, or None to drop it on purpose; a sink receives an event and returns
when it is handled (raising to have it retried). The pipeline compiles config into the
first two; the delivery engine calls all three.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from eventmesh.event import Event

__all__ = ["Filter", "Sink", "Transform"]

Filter: TypeAlias = Callable[[Event], bool]
"""True for events the subscription wants. Raises only on a real error."""
Transform: TypeAlias = Callable[[Event], Event | None]
"""The event to deliver instead, or None to drop this one on purpose."""
Sink: TypeAlias = Callable[[Event], Awaitable[Any]]
"""Where a subscription's events go: returns when handled, raises to have it retried."""
