"""The delivery engine: per-subscription dispatch with ordering, retries and dead letters."""

from eventmesh.delivery.deadletter import DeadLetterPublisher, dead_letter_event
from eventmesh.delivery.dispatcher import Dispatcher, Filter, Sink, Transform
from eventmesh.delivery.policy import Backoff, DeliveryPolicy
from eventmesh.delivery.stats import DeliveryStats

__all__ = [
    "Backoff",
    "DeadLetterPublisher",
    "DeliveryPolicy",
    "DeliveryStats",
    "Dispatcher",
    "Filter",
    "Sink",
    "Transform",
    "dead_letter_event",
]
