"""eventmesh: a CloudEvents mesh for Python services.

Publish and subscribe with ``eventmesh.connect()``; run it as a sidecar with
``eventmesh run``; add backends as connector plugins.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from eventmesh._version import __version__
from eventmesh.errors import (
    ClosedError,
    ConfigError,
    ConnectError,
    ConnectorError,
    ContentTypeError,
    DeliveryError,
    EventMeshError,
    EventTooLargeError,
    EventValidationError,
    LifecycleError,
    MissingExtraError,
    PipelineError,
    PluginError,
    PluginLoadError,
    PluginNotFoundError,
    PublishError,
    SubscribeError,
    TopicFullError,
)
from eventmesh.event import Event

if TYPE_CHECKING:
    from eventmesh._client import Client
    from eventmesh.client.connect import connect
    from eventmesh.client.sync import BlockingClient, connect_blocking
    from eventmesh.config import MeshConfig, load_config
    from eventmesh.delivery.policy import Backoff, DeliveryPolicy
    from eventmesh.functions.function import Drop, Function
    from eventmesh.mesh import Mesh
    from eventmesh.subscription import Delivery, Subscription

# The rest is imported on first use: a function's worker process (it needs only the
# Event) or a short command should not pay for the mesh at start-up. None of it imports
# an extra's package; the remote clients load theirs (aiohttp, grpcio) when connected.
_LAZY: dict[str, str] = {
    "Backoff": "eventmesh.delivery.policy",
    "BlockingClient": "eventmesh.client",
    "Client": "eventmesh.client",
    "Delivery": "eventmesh.subscription",
    "DeliveryPolicy": "eventmesh.delivery.policy",
    "Drop": "eventmesh.functions.function",
    "Function": "eventmesh.functions.function",
    "Mesh": "eventmesh.mesh",
    "MeshConfig": "eventmesh.config",
    "Subscription": "eventmesh.subscription",
    "connect": "eventmesh.client",
    "connect_blocking": "eventmesh.client",
    "load_config": "eventmesh.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'eventmesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Backoff",
    "BlockingClient",
    "Client",
    "ClosedError",
    "ConfigError",
    "ConnectError",
    "ConnectorError",
    "ContentTypeError",
    "Delivery",
    "DeliveryError",
    "DeliveryPolicy",
    "Drop",
    "Event",
    "EventMeshError",
    "EventTooLargeError",
    "EventValidationError",
    "Function",
    "LifecycleError",
    "Mesh",
    "MeshConfig",
    "MissingExtraError",
    "PipelineError",
    "PluginError",
    "PluginLoadError",
    "PluginNotFoundError",
    "PublishError",
    "SubscribeError",
    "Subscription",
    "TopicFullError",
    "__version__",
    "connect",
    "connect_blocking",
    "load_config",
]
