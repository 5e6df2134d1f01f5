"""Who decides what becomes of an event whose handling failed: here, or the source.

A subscription settles an event its handler raised on (or its iterating user nacked)
through one of two strategies, chosen when the subscription is made:

* :class:`RetryHere`, for a subscription on a connector: the delivery policy runs in
  this process, so the event is tried again after the policy's backoff while attempts
  remain, then dead-lettered through the subscription's :class:`~eventmesh.delivery.gate.Gate`;
* :class:`HandBack`, for a subscription that a sidecar runs (the SDK's remote clients):
  the failure and its error are sent back to the sidecar, whose copy of the policy
  retries or dead-letters it; nothing is retried, expired or dead-lettered here.

Acks need no strategy: a delivery's own ``ack()`` reaches its source either way.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import ClassVar, TypeAlias

from eventmesh.connectors.base import Delivery
from eventmesh.delivery.deadletter import describe_error
from eventmesh.delivery.gate import Gate
from eventmesh.delivery.policy import retry_delay

__all__ = ["HandBack", "Reject", "RetryHere", "Settle"]

Reject: TypeAlias = Callable[[Delivery, BaseException | str | None], Awaitable[None]]
"""Sends a failed delivery back to its source with the error (a ``DeliveryError``'s
``retryable`` and ``retry_after`` travel with it); raises nothing."""


class Settle(abc.ABC):
    """What a subscription does after a failed attempt at an event."""

    here: ClassVar[bool]
    """True when the delivery policy runs in this process (TTL, retries, dead letters);
    False when the source runs it, so the subscription checks nothing of it here."""

    @abc.abstractmethod
    async def failed(
        self, delivery: Delivery, error: BaseException | str | None, attempt: int
    ) -> float | None:
        """Attempt ``attempt`` at ``delivery`` failed with ``error``: return the seconds
        to wait before trying it again here, or settle it and return None."""


class RetryHere(Settle):
    """The policy of ``gate`` decides: retry after its backoff while attempts remain and
    the error allows (``retry_delay``), else dead-letter the event and ack it."""

    here = True

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def failed(
        self, delivery: Delivery, error: BaseException | str | None, attempt: int
    ) -> float | None:
        delay = retry_delay(self.gate.policy, attempt, error)
        if delay is None:
            await self.gate.give_up(delivery, "failed", describe_error(error), attempts=attempt)
        return delay


class HandBack(Settle):
    """The source decides: every failure goes back to it through ``reject``."""

    here = False

    def __init__(self, reject: Reject) -> None:
        self.reject = reject

    async def failed(
        self, delivery: Delivery, error: BaseException | str | None, attempt: int
    ) -> None:
        await self.reject(delivery, error)
