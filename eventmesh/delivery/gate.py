"""The gate every delivery passes before its handler: TTL, filter, transform, dead letters.

Both ways of consuming a subscription go through it, so they treat events the same: the
dispatcher (handler form) calls :meth:`Gate.prepare` before the sink and
:meth:`Gate.give_up` when attempts run out; the iterator form calls the same two before
yielding a delivery and when the user's last nack fails it.
"""

from __future__ import annotations

import logging
import time

from eventmesh.connectors.base import Delivery
from eventmesh.delivery.deadletter import DeadLetterPublisher, dead_letter, describe_error
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.delivery.stats import DeliveryStats
from eventmesh.event import Event
from eventmesh.typing import Filter, Transform

__all__ = ["Gate"]

log = logging.getLogger(__name__)


class Gate:
    """What happens to a delivery of one subscription before and instead of its handler."""

    def __init__(
        self,
        *,
        name: str,
        topic: str,
        group: str,
        policy: DeliveryPolicy,
        dead_letter: DeadLetterPublisher,
        filter: Filter | None = None,
        transform: Transform | None = None,
        stats: DeliveryStats | None = None,
    ) -> None:
        self.name = name
        self.topic = topic
        self.group = group
        self.policy = policy
        self.filter = filter
        self.transform = transform
        self.stats = stats or DeliveryStats()
        self._publish = dead_letter
        self._dlq_topic = policy.dead_letter_topic(topic, group)

    @property
    def passes_all(self) -> bool:
        """True when :meth:`prepare` hands every event through as it is: no TTL, filter
        or transform is set."""
        return self.policy.ttl is None and self.filter is None and self.transform is None

    def expired(self, delivery: Delivery) -> bool:
        """True when the policy has a ttl and the event is older (by its time, else by
        when it was stored)."""
        ttl = self.policy.ttl
        if ttl is None:
            return False
        when = delivery.event.time
        born = when.timestamp() if when is not None else delivery.timestamp
        return born is not None and time.time() - born > ttl

    async def prepare(self, delivery: Delivery) -> Event | None:
        """The event to hand to the handler, or None when the gate settled the delivery
        itself: dead-lettered (expired, or a step raised), filtered out, or dropped."""
        event = delivery.event
        if self.expired(delivery):
            await self.expire(delivery)
            return None
        if self.filter is not None:
            try:
                wanted = self.filter(event)
            except Exception as exc:
                await self.give_up(delivery, "filter", describe_error(exc))
                return None
            if not wanted:
                self.stats.filtered += 1
                await delivery.ack()
                return None
        if self.transform is not None:
            try:
                changed = self.transform(event)
            except Exception as exc:  # a PipelineError, or a user callable's own error
                await self.give_up(delivery, "transform", describe_error(exc))
                return None
            if changed is None:
                self.stats.dropped += 1
                await delivery.ack()
                return None
            event = changed
        return event

    async def expire(self, delivery: Delivery) -> None:
        """Dead-letter an expired delivery with reason ``expired``."""
        await self.give_up(delivery, "expired", f"older than ttl {self.policy.ttl}s")

    async def give_up(
        self, delivery: Delivery, reason: str, error: str, *, attempts: int | None = None
    ) -> None:
        """Dead-letter the event as it was read (retrying the store itself), then ack it."""
        await dead_letter(
            self._publish,
            self._dlq_topic,
            delivery.event,
            reason=reason,
            error=error,
            attempts=attempts if attempts is not None else delivery.attempt,
            topic=self.topic,
            group=self.group,
            backoff=self.policy.backoff,
            kind="subscription",
            name=self.name,
            logger=log,
        )
        self.stats.dead_lettered += 1
        await delivery.ack()
