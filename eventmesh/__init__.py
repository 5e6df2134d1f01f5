"""eventmesh: a CloudEvents mesh for Python services.

Publish and subscribe with ``eventmesh.connect()``; run it as a sidecar with
``eventmesh run``; add backends as connector plugins.
"""

from eventmesh._version import __version__
from eventmesh.client import BlockingClient, Client, connect, connect_blocking
from eventmesh.config import MeshConfig, load_config
from eventmesh.delivery.policy import Backoff, DeliveryPolicy
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
    PipelineError,
    PluginError,
    PluginLoadError,
    PluginNotFoundError,
    PublishError,
    SubscribeError,
    TopicFullError,
)
from eventmesh.event import Event
from eventmesh.mesh import Mesh
from eventmesh.subscription import Delivery, Subscription
from eventmesh.triggers.function import Drop, Function

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
