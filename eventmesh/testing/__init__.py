"""Helpers for testing with eventmesh, shipped with it: the connector conformance kit.

Importing this module needs pytest (install ``eventmesh[dev]``). Hypothesis strategies
that generate CloudEvents live in :mod:`eventmesh.testing.strategies`, which needs
hypothesis too; this package does not import it.
"""

from eventmesh.testing.conformance import ConnectorConformance, collect

__all__ = ["ConnectorConformance", "collect"]
