"""What the sidecar's two HTTP apps (the API and the admin port) share about callers:
who makes a request, and the problem body that answers an error (a 401 names its scheme)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from aiohttp import web

from eventmesh._requests import reply_address
from eventmesh._status import PROBLEM_CONTENT_TYPE, http_status, problem
from eventmesh.auth import CertIdentity, Guard, Principal
from eventmesh.errors import PermissionDeniedError, UnauthenticatedError
from eventmesh.event import Event

__all__ = ["caller", "check_reply_inboxes", "problem_response"]

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


def check_reply_inboxes(guard: Guard, principal: Principal, events: Iterable[Event]) -> None:
    """PermissionDeniedError unless ``principal`` may publish on each reply inbox that
    ``events`` ask replies to go to (``replyto``): a responder publishes there on the
    event's behalf, so asking for it is publishing there. Without this, a publisher who
    saw another caller's request (its inbox and correlation id) could have any responder
    it reaches answer that pending request. Requests made through the sidecar's request
    endpoints are not affected: the sidecar sets their inbox itself."""
    if not guard.enabled:
        return
    for event in events:
        if not event.extensions:
            continue
        inbox = reply_address(event)
        if inbox is not None and not guard.acl.allows(principal.name, "publish", topic=inbox):
            raise PermissionDeniedError(
                f"event {event.id!r:.80} asks for replies on the reply inbox {inbox!r:.120} "
                f"(its replyto), and principal {principal.name!r} may not publish there: "
                "send a request through the request endpoints instead, or grant publish "
                "on that inbox"
            )


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
