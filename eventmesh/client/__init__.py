"""The SDK: ``eventmesh.connect()`` and the blocking facade for scripts."""

from eventmesh._client import Client
from eventmesh.client.connect import connect
from eventmesh.client.sync import BlockingClient, connect_blocking

__all__ = ["BlockingClient", "Client", "connect", "connect_blocking"]
