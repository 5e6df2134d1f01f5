"""Helpers for testing with eventmesh, shipped with it: the connector conformance kit
and :func:`eventually` / :func:`holds_throughout` for waiting without fixed sleeps.

Importing this module needs pytest (the ``testing`` extra). Hypothesis strategies
that generate CloudEvents live in :mod:`eventmesh.testing.strategies`, which needs
hypothesis too; this package does not import it.
"""

from eventmesh._imports import needs_extra

with needs_extra("eventmesh.testing"):
    from eventmesh.testing.conformance import ConnectorConformance, collect
from eventmesh.testing.polling import eventually, holds_throughout

__all__ = ["ConnectorConformance", "collect", "eventually", "holds_throughout"]
