"""The delivery policy of a subscription: retries, backoff, dead letter, TTL, ordering."""

from __future__ import annotations

import random
from typing import Any, Literal

import msgspec

from eventmesh._duration import Duration
from eventmesh.errors import DeliveryError

__all__ = ["Backoff", "DeliveryPolicy", "retry_delay"]


class Backoff(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Exponential backoff with jitter between attempts."""

    initial: Duration = Duration(0.2)
    """The delay before the second attempt."""
    max: Duration = Duration(30.0)
    """No delay is longer than this."""
    multiplier: float = 2.0
    """Each delay is this many times the one before."""
    jitter: float = 0.2
    """Up to this fraction is taken off each delay at random, so retries spread out."""

    def __post_init__(self) -> None:
        if self.multiplier < 1:
            raise ValueError("backoff.multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff.jitter must be between 0 and 1")

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        base = min(float(self.max), float(self.initial) * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * random.random())


class DeliveryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a subscription delivers: how hard it tries, in what order, and where failures go."""

    max_attempts: int = 6
    """Attempts per event, the first included; then it goes to the dead-letter topic."""
    backoff: Backoff = Backoff()
    dead_letter: str | None = "{topic}.dlq"
    """Topic for events that failed every attempt, expired, or broke a pipeline step.
    ``{topic}`` and ``{group}`` are filled in. ``null`` drops such events (logged as
    errors and counted): choose it only where losing them is acceptable."""
    ordering: Literal["partitionkey", "none"] = "partitionkey"
    """``partitionkey``: events with the same key are handled one at a time, in order;
    ``none``: any event may overtake another."""
    concurrency: int = 16
    """Events handled at the same time by this subscription in this process."""
    ttl: Duration | None = None
    """Events older than this (by their ``time``, else by when they were stored) are not
    delivered but dead-lettered with reason ``expired``."""
    prefetch: int = 0
    """Events fetched ahead of the handlers; 0 means 32 per unit of concurrency."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.prefetch < 0:
            raise ValueError("prefetch cannot be negative")

    @property
    def max_in_flight(self) -> int:
        """How many fetched events may wait for or be in a handler at once."""
        return self.prefetch or 32 * self.concurrency

    def dead_letter_topic(self, topic: str, group: str) -> str | None:
        """The dead-letter topic for a subscription, with its placeholders filled in."""
        if self.dead_letter is None:
            return None
        return self.dead_letter.replace("{topic}", topic).replace("{group}", group)


def retry_delay(policy: DeliveryPolicy, attempt: int, error: Any) -> float | None:
    """How long to wait before retrying after failed attempt ``attempt``, or None to give
    up: when attempts are used up, or the error is a ``DeliveryError`` that says a retry
    cannot help. A ``DeliveryError.retry_after`` longer than the backoff wins, up to
    ``backoff.max``."""
    if attempt >= policy.max_attempts:
        return None
    delay = policy.backoff.delay(attempt)
    if isinstance(error, DeliveryError):
        if not error.retryable:
            return None
        if error.retry_after is not None:
            delay = max(delay, min(error.retry_after, float(policy.backoff.max)))
    return delay
