"""Helpers for testing with eventmesh, shipped with it: the connector conformance kit.

Importing this module needs pytest (install ``eventmesh[dev]``).
"""

from eventmesh.testing.conformance import ConnectorConformance, collect

__all__ = ["ConnectorConformance", "collect"]
