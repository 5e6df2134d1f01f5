"""What a subscription or a function needs of whoever runs it, passed in explicitly.

A :class:`~eventmesh.mesh.Mesh` and the SDK's remote clients each make one
:class:`Services` and hand it to the subscriptions they make (the mesh also to its
functions), so that none of these imports its owner or reaches into its private
members: a subscription can be built, and tested, over any ``Services``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeAlias, TypeVar

import anyio.abc

from eventmesh.event import Event

if TYPE_CHECKING:
    from eventmesh.observability.tracing import Tracing

__all__ = ["Publish", "Services", "delivering"]

Publish: TypeAlias = Callable[[str, Event | Sequence[Event]], Awaitable[None]]
"""Stores one event or a list of them on a topic; raises when it could not."""

_Member = TypeVar("_Member")


@dataclass(frozen=True, kw_only=True)
class Services(Generic[_Member]):
    """The owner's side of its subscriptions (``_Member`` is the subscription type)."""

    publish: Publish
    """Stores what subscriptions and functions publish on their own behalf (replies and
    dead letters), also while the owner closes: what drains then must settle."""
    task_group: Callable[[], anyio.abc.TaskGroup]
    """The owner's task group, which runs the dispatchers; raises ``ClosedError`` once
    the owner closed."""
    register: Callable[[_Member], None]
    """Called when a subscription starts: the owner closes it when it closes."""
    unregister: Callable[[_Member], None]
    """Called when a subscription closes (also one whose start failed)."""
    tracing: Tracing | None = None
    """Wraps sinks and functions in spans (None: tracing off)."""
    measure: bool = False
    """Keep latency and duration histograms for the metrics (metrics on)."""


delivering: ContextVar[tuple[object, object] | None] = ContextVar(
    "eventmesh_delivering", default=None
)
"""``(services, subscription)``: the :class:`Services` of the owner, and the
subscription, that deliver in this task. Set in each dispatcher's task and so inherited
by the workers it starts, so that an owner or a subscription told to close by one of its
own handlers can tell (it cannot wait for that handler)."""
