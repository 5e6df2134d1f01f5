"""The delivery policy of a subscription: retries, backoff, dead letter, TTL, ordering.

Every number has a range, checked when the policy is made (from a config file, the
sidecar's API or the SDK), so no client can ask for a million lanes or a delay of
1e308 seconds. The ranges (docs/delivery.md):

==================  ==============================  =========
key                 range                           default
==================  ==============================  =========
max_attempts        1 to 10,000                     6
concurrency         1 to 1,000                      16
prefetch            0 (32 x concurrency) to 100,000 0
ttl                 above 0 to 365 days, or null    null
backoff.initial     0 to 1 day                      0.2 s
backoff.max         0 to 1 day                      30 s
backoff.multiplier  1 to 100                        2
backoff.jitter      0 to 1                          0.2
==================  ==============================  =========

NaN and infinities are refused everywhere.
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal

import msgspec

from eventmesh._duration import Duration
from eventmesh.errors import ConfigError, DeliveryError

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_CONCURRENCY",
    "MAX_DELAY",
    "MAX_PREFETCH",
    "MAX_TTL",
    "Backoff",
    "DeliveryPolicy",
    "check_range",
    "retry_delay",
]

MAX_ATTEMPTS = 10_000
"""The most attempts per event ``max_attempts`` may ask for."""
MAX_CONCURRENCY = 1_000
"""The most events one subscription may handle at once in one process."""
MAX_PREFETCH = 100_000
"""The most events one subscription may fetch ahead of its handlers."""
MAX_DELAY = 86_400.0
"""One day, in seconds: the longest backoff delay and the longest timeout of a sink."""
MAX_TTL = 365 * 86_400.0
"""365 days, in seconds: the longest ``ttl``."""


def check_range(
    name: str, value: float, low: float, high: float, *, above: bool = False, unit: str = ""
) -> None:
    """ValueError naming ``name`` and its range unless ``low <= value <= high`` (``low <
    value`` with ``above``) and finite. For the ``__post_init__`` of config structs, whose
    ValueError the loader reports as a ConfigError at the struct's key."""
    number = float(value)
    ok = math.isfinite(number) and (low < number if above else low <= number) and number <= high
    if not ok:
        span = (
            f"above {_fmt(low)}{unit} and at most {_fmt(high)}{unit}"
            if above
            else f"between {_fmt(low)}{unit} and {_fmt(high)}{unit}"
        )
        raise ValueError(f"{name} must be {span}, got {value!r}")


def _fmt(number: float) -> str:
    return f"{int(number):,}" if number == int(number) else f"{number:g}"


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
        check_range("initial", self.initial, 0, MAX_DELAY, unit="s")
        check_range("max", self.max, 0, MAX_DELAY, unit="s")
        check_range("multiplier", self.multiplier, 1, 100)
        check_range("jitter", self.jitter, 0, 1)

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based), for any number:
        once the growth passes ``max`` it is not computed (``multiplier ** attempt``
        overflows a float long before ``max_attempts`` runs out)."""
        initial, top = float(self.initial), float(self.max)
        steps = attempt - 1
        if initial <= 0 or initial >= top:
            base = min(initial, top)
        elif steps * math.log(self.multiplier) >= math.log(top / initial):
            base = top
        else:
            base = initial * self.multiplier**steps
        return base * (1.0 - self.jitter * random.random())


class DeliveryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a subscription delivers: how hard it tries, in what order, and where failures go."""

    max_attempts: int = 6
    """Attempts per event, the first included; then it goes to the dead-letter topic."""
    backoff: Backoff = Backoff()
    dead_letter: str | None = "{topic}.dlq"
    """Topic for events that failed every attempt, expired, or broke a pipeline step.
    ``{topic}`` and ``{group}`` are filled in; the subscription's own topic is refused
    (each dead letter would come back to it for ever). ``null`` drops such events
    (logged as errors and counted): choose it only where losing them is acceptable."""
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
        check_range("max_attempts", self.max_attempts, 1, MAX_ATTEMPTS)
        check_range("concurrency", self.concurrency, 1, MAX_CONCURRENCY)
        check_range("prefetch", self.prefetch, 0, MAX_PREFETCH)
        if self.ttl is not None:
            check_range("ttl", self.ttl, 0, MAX_TTL, above=True, unit="s")

    @property
    def max_in_flight(self) -> int:
        """How many fetched events may wait for or be in a handler at once."""
        return self.prefetch or 32 * self.concurrency

    def dead_letter_topic(self, topic: str, group: str) -> str | None:
        """The dead-letter topic for a subscription to ``topic`` in ``group``, with its
        placeholders filled in. Raises ConfigError naming ``delivery.dead_letter`` when
        that is ``topic`` itself: every event given up on would be read again by each
        group, fail again and be dead-lettered again, for ever."""
        if self.dead_letter is None:
            return None
        chosen = self.dead_letter.replace("{topic}", topic).replace("{group}", group)
        if chosen == topic:
            raise ConfigError(
                f"{self.dead_letter!r} names the topic the subscription reads ({topic!r}): "
                "each event given up on would be delivered again and dead-lettered again, "
                "for ever; name another topic (the default is '{topic}.dlq'), or null to "
                "drop such events",
                key="delivery.dead_letter",
            )
        return chosen


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
