"""Dead letters: what an event that could not be delivered carries with it.

A dead-lettered event is the original event (same id, source, type and data) with
these extensions added, so an operator can see why and replay it:

==================== ==============================================================
``deadletterreason`` ``failed`` (every attempt failed), ``expired`` (older than the
                     subscription's ttl), ``filter`` or ``transform`` (a pipeline
                     step raised), ``rejected`` (the sink refused it for good)
``deadlettererror``  the last error, as ``ExceptionType: message`` (at most 1 KiB)
``deadletterattempts`` how many attempts were made
``deadlettertopic``  the topic the event was read from
``deadlettergroup``  the subscription's consumer group
==================== ==============================================================
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

from eventmesh.event import Event

__all__ = ["DeadLetterPublisher", "dead_letter_event"]

DeadLetterPublisher: TypeAlias = Callable[[str, Event], Awaitable[None]]
"""Stores one event on a topic (the mesh's publish); raises when it could not."""


def dead_letter_event(
    event: Event, *, reason: str, error: str, attempts: int, topic: str, group: str
) -> Event:
    """The event to store on the dead-letter topic for ``event``."""
    extensions = dict(event.extensions)
    extensions.update(
        deadletterreason=reason,
        deadlettererror=error,
        deadletterattempts=attempts,
        deadlettertopic=topic,
        deadlettergroup=group,
    )
    return event.replace(extensions=extensions)
