"""What the sidecar's two HTTP apps (the API and the admin port) share about callers:
who makes a request, and the problem body that answers an error (a 401 names its scheme)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from eventmesh._status import PROBLEM_CONTENT_TYPE, http_status, problem
from eventmesh.auth import CertIdentity, Guard, Principal
from eventmesh.errors import UnauthenticatedError

__all__ = ["caller", "problem_response"]

_encoder = msgspec.json.Encoder()


def caller(request: web.BaseRequest, guard: Guard) -> Principal:
    """The principal ``guard`` sees in ``request``: from its Authorization header or,
    without one, its verified TLS client certificate; UnauthenticatedError when neither
    is accepted."""
    cert = None
    authorization = request.headers.get("Authorization")
    if not authorization and request.transport is not None:
        cert = CertIdentity.from_peercert(request.transport.get_extra_info("peercert"))
    return guard.principal(authorization, cert)


def problem_response(exc: BaseException, **extra: Any) -> web.Response:
    """``exc`` as a problem body with its status (eventmesh._status); a 401 carries
    ``WWW-Authenticate: Bearer``."""
    response = web.Response(
        body=_encoder.encode(problem(exc, **extra)),
        status=http_status(exc),
        content_type=PROBLEM_CONTENT_TYPE,
    )
    if isinstance(exc, UnauthenticatedError):
        response.headers["WWW-Authenticate"] = "Bearer"
    return response
