"""gRPC server reflection for the sidecar: grpcurl and similar tools work without the
``.proto`` files.

Reflection answers from the protobuf descriptors of the services a server says it
serves. So that nobody has to keep a second list, :func:`recording` notes the name of
every service registered on the server (``add_generic_rpc_handlers``, which is how each
of the sidecar's services is added) and :func:`enable` then turns reflection on for
exactly those, plus the reflection service itself. Each registered service's
descriptor must be in protobuf's default pool, which importing its ``_pb2`` module
does (the modules that register services import theirs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection

__all__ = ["enable", "recording"]

log = logging.getLogger(__name__)


def recording(server: grpc.aio.Server) -> list[str]:
    """The list that collects, in order, the name of each service registered on
    ``server`` from now on (through ``add_generic_rpc_handlers``)."""
    names: list[str] = []
    add: Callable[[Iterable[grpc.GenericRpcHandler[Any, Any]]], None]
    add = server.add_generic_rpc_handlers

    def add_and_record(handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]) -> None:
        handlers = tuple(handlers)
        add(handlers)
        for handler in handlers:
            name = _service_name(handler)
            if name is not None and name not in names:
                names.append(name)

    server.add_generic_rpc_handlers = add_and_record  # type: ignore[method-assign,assignment]
    return names


def _service_name(handler: Any) -> str | None:
    """The service a generic handler serves (grpc.method_handlers_generic_handler gives
    it), or None for a handler that does not say."""
    service_name = getattr(handler, "service_name", None)
    if not callable(service_name):
        return None
    name = service_name()
    return name if isinstance(name, str) else None


def enable(server: grpc.aio.Server, names: Sequence[str]) -> list[str]:
    """Turn reflection on for the services ``names`` (those :func:`recording` saw);
    the names served, the reflection service's own included. A service whose descriptor
    protobuf does not know is left out, with a warning."""
    pool = descriptor_pool.Default()
    served: list[str] = []
    for name in names:
        try:
            pool.FindServiceByName(name)
        except KeyError:
            log.warning(
                "gRPC reflection leaves out %s: its descriptor is not loaded (import its "
                "_pb2 module where the service is registered)",
                name,
            )
            continue
        served.append(name)
    served.append(reflection.SERVICE_NAME)
    reflection.enable_server_reflection(served, server)
    return served
