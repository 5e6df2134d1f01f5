"""Connectors: the contract every backend implements, the registry, the memory and local
backends."""

from eventmesh.connectors.base import (
    Capabilities,
    Connector,
    Consumer,
    Delivery,
    StartPosition,
    StateStore,
    StoredEvent,
)
from eventmesh.connectors.local import LocalConfig, LocalConnector
from eventmesh.connectors.memory import MemoryConfig, MemoryConnector
from eventmesh.connectors.registry import available_connectors, load_connector

__all__ = [
    "Capabilities",
    "Connector",
    "Consumer",
    "Delivery",
    "LocalConfig",
    "LocalConnector",
    "MemoryConfig",
    "MemoryConnector",
    "StartPosition",
    "StateStore",
    "StoredEvent",
    "available_connectors",
    "load_connector",
]
