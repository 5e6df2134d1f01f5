"""Dead letters: what an event that could not be delivered carries with it.

A dead-lettered event is the event as it was read from the topic (same id, source,
type and data; before any transform) with these extensions added, so an operator can
see why and replay it through the same subscription:

==================== ==============================================================
``deadletterreason`` ``failed`` (every attempt failed), ``expired`` (older than the
                     subscription's ttl), ``filter`` or ``transform`` (a pipeline
                     step raised)
``deadlettererror``  the last error, as ``ExceptionType: message`` (at most 1 KiB)
``deadletterattempts`` how many attempts were made
``deadlettertopic``  the topic the event was read from
``deadlettergroup``  the subscription's consumer group
==================== ==============================================================

An event is never dead-lettered to the topic it was read from: there every group would
read it again, fail again and dead-letter it again, for ever (and each group's copy
doubles the load). :meth:`DeliveryPolicy.dead_letter_topic` refuses such a policy where
it is made; should one get past that (a plugin passing the topic itself), the event is
dropped as with no dead-letter topic: an error is logged for it and the caller acks it.
The event itself stays on its topic for as long as the connector retains it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import anyio

from eventmesh._logging import event_fields
from eventmesh.delivery.policy import Backoff
from eventmesh.errors import ClosedError
from eventmesh.event import Event

__all__ = [
    "DeadLetterPublisher",
    "dead_letter",
    "dead_letter_event",
    "describe_error",
    "store_dead_letter",
]

log = logging.getLogger(__name__)

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


def describe_error(error: BaseException | str | None) -> str:
    """``ExceptionType: message`` (or the text given), at most 1 KiB."""
    if error is None:
        text = "nacked"
    elif isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}"
    else:
        text = str(error)
    return text if len(text) <= 1024 else text[:1021] + "..."


async def store_dead_letter(
    publish: DeadLetterPublisher, topic: str, event: Event, *, backoff: Backoff, where: str
) -> None:
    """Publish a dead letter, retrying with backoff until it is stored.

    The caller acks the original only after this returns: an event must not be acked
    before it is safely somewhere else. ``ClosedError`` (the mesh or its connector has
    closed) is raised at once, as no retry can store it then: the caller leaves the
    original unacked, to be delivered again.
    """
    attempt = 1
    while True:
        try:
            await publish(topic, event)
            return
        except ClosedError:
            raise
        except Exception as exc:
            delay = backoff.delay(min(attempt, 10))
            log.warning(
                "%s could not dead-letter event %s to %s: %r; retrying in %.1fs",
                where,
                event.id,
                topic,
                exc,
                delay,
            )
            await anyio.sleep(delay)
            attempt += 1


async def dead_letter(
    publish: DeadLetterPublisher,
    dlq_topic: str | None,
    event: Event,
    *,
    reason: str,
    error: str,
    attempts: int,
    topic: str,
    group: str,
    backoff: Backoff,
    kind: str,
    name: str,
    logger: logging.Logger,
) -> None:
    """Give ``event`` up: store it on ``dlq_topic`` as a dead letter (retrying the store
    until it holds), or, with no dead-letter topic, log that it is dropped. ``kind`` and
    ``name`` say who gives it up ("subscription", "billing"); the records go to the
    caller's ``logger`` with the event's fields. The caller acks the event afterwards.

    A ``dlq_topic`` that is ``topic``, the one the event was read from, is not stored
    to (it would come back for ever): the event is dropped as with none, and the error
    logged for it says so.
    """
    owner = f"{kind} {name}"
    fields = event_fields(event, name, reason=reason, error=error)
    if dlq_topic is None or dlq_topic == topic:
        why = (
            "no dead-letter topic is set"
            if dlq_topic is None
            else f"its dead-letter topic {dlq_topic!r} is the topic it was read from, where "
            "it would be delivered and dead-lettered again for ever; set "
            "delivery.dead_letter to another topic"
        )
        logger.error(
            "%s dropped event %s after %d attempt%s, not retrying (%s: %s): %s",
            owner,
            event.id,
            attempts,
            "" if attempts == 1 else "s",
            reason,
            error,
            why,
            extra={**fields, "attempt": attempts},
        )
        return
    dead = dead_letter_event(
        event, reason=reason, error=error, attempts=attempts, topic=topic, group=group
    )
    await store_dead_letter(publish, dlq_topic, dead, backoff=backoff, where=owner)
    logger.warning(
        "%s dead-lettered event %s to %s after %d attempt%s, not retrying (%s: %s)",
        owner,
        event.id,
        dlq_topic,
        attempts,
        "" if attempts == 1 else "s",
        reason,
        error,
        extra={**fields, "dead_letter_topic": dlq_topic, "attempt": attempts},
    )
