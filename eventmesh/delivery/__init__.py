"""The delivery engine: per-subscription dispatch with ordering, retries and dead letters."""

from eventmesh.delivery.deadletter import (
    DeadLetterPublisher,
    dead_letter_event,
    describe_error,
    store_dead_letter,
)
from eventmesh.delivery.dispatcher import Dispatcher
from eventmesh.delivery.gate import Gate
from eventmesh.delivery.policy import Backoff, DeliveryPolicy
from eventmesh.delivery.stats import DeliveryStats

__all__ = [
    "Backoff",
    "DeadLetterPublisher",
    "DeliveryPolicy",
    "DeliveryStats",
    "Dispatcher",
    "Gate",
    "dead_letter_event",
    "describe_error",
    "store_dead_letter",
]
