"""The one table from error classes to HTTP statuses and gRPC codes, and back.

The sidecar answers an ``EventMeshError`` with the status below and a problem body
(RFC 9457, ``application/problem+json``) whose ``type`` names the error class; the
remote SDK reads that body and raises the same class again, so a caller sees the same
exception embedded or remote.

======================  ======  ===================  =======================================
error                   HTTP    gRPC                 why
======================  ======  ===================  =======================================
ContentTypeError        415     INVALID_ARGUMENT     the body is in a format we do not read
EventTooLargeError      413     RESOURCE_EXHAUSTED   above the configured size limit
EventValidationError    400     INVALID_ARGUMENT     the event breaks the CloudEvents spec
ConfigError             400     INVALID_ARGUMENT     a bad subscription, filter or policy
PluginNotFoundError     400     INVALID_ARGUMENT     the request names a connector not here
RejectedError           400     INVALID_ARGUMENT     the backend never takes this; do not retry
LimitExceededError      429     RESOURCE_EXHAUSTED   a configured bound (topics, subscriptions)
RequestTimeoutError     504     DEADLINE_EXCEEDED    no reply to a request within its timeout
UnauthenticatedError    401     UNAUTHENTICATED      no credentials the sidecar accepts
PermissionDeniedError   403     PERMISSION_DENIED    the principal lacks the grant
NotFoundError           404     NOT_FOUND            no such subscription or delivery
TopicFullError          503     UNAVAILABLE          retention is full; retry later
ConnectError            503     UNAVAILABLE          the backend is unreachable; retry later
PublishError            503     UNAVAILABLE          not stored; safe to retry
SubscribeError          503     UNAVAILABLE          the backend refused; retry later
ClosedError             503     UNAVAILABLE          the sidecar is shutting down
LifecycleError          409     FAILED_PRECONDITION  used in the wrong state
PipelineError           422     FAILED_PRECONDITION  a filter or transform failed
DeliveryError           502     UNAVAILABLE          the sink failed
EventMeshError          500     INTERNAL             anything else of ours
======================  ======  ===================  =======================================

The first row whose class matches wins (subclasses are listed before their bases).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from eventmesh import errors
from eventmesh.errors import EventMeshError

if TYPE_CHECKING:  # only the gRPC server and client read codes, and they import grpc
    import grpc

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "NotFoundError",
    "error_from_grpc",
    "error_from_problem",
    "grpc_code",
    "http_status",
    "problem",
]

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"


class NotFoundError(EventMeshError):
    """The request names a subscription or delivery the sidecar does not have."""


# gRPC codes by name, so that the HTTP side of the sidecar and the HTTP client never load
# grpcio: grpc_code() turns the name into grpc.StatusCode where gRPC is spoken.
_TABLE: Final[tuple[tuple[type[EventMeshError], int, str], ...]] = (
    (errors.ContentTypeError, 415, "INVALID_ARGUMENT"),
    (errors.EventTooLargeError, 413, "RESOURCE_EXHAUSTED"),
    (errors.EventValidationError, 400, "INVALID_ARGUMENT"),
    (errors.ConfigError, 400, "INVALID_ARGUMENT"),
    (errors.PluginNotFoundError, 400, "INVALID_ARGUMENT"),
    (errors.RejectedError, 400, "INVALID_ARGUMENT"),
    (errors.LimitExceededError, 429, "RESOURCE_EXHAUSTED"),
    (errors.RequestTimeoutError, 504, "DEADLINE_EXCEEDED"),
    (errors.UnauthenticatedError, 401, "UNAUTHENTICATED"),
    (errors.PermissionDeniedError, 403, "PERMISSION_DENIED"),
    (NotFoundError, 404, "NOT_FOUND"),
    (errors.TopicFullError, 503, "UNAVAILABLE"),
    (errors.ConnectError, 503, "UNAVAILABLE"),
    (errors.PublishError, 503, "UNAVAILABLE"),
    (errors.SubscribeError, 503, "UNAVAILABLE"),
    (errors.ClosedError, 503, "UNAVAILABLE"),
    (errors.LifecycleError, 409, "FAILED_PRECONDITION"),
    (errors.PipelineError, 422, "FAILED_PRECONDITION"),
    (errors.DeliveryError, 502, "UNAVAILABLE"),
    (EventMeshError, 500, "INTERNAL"),
)

_BY_NAME: Final[dict[str, type[EventMeshError]]] = {cls.__name__: cls for cls, _, _ in _TABLE}
_BY_NAME.update(
    {
        name: getattr(errors, name)
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
        and issubclass(getattr(errors, name), EventMeshError)
    }
)


def _row(exc: BaseException) -> tuple[int, str]:
    for cls, status, code in _TABLE:
        if isinstance(exc, cls):
            return status, code
    return 500, "INTERNAL"


def http_status(exc: BaseException) -> int:
    """The HTTP status for an error (500 for anything not ours)."""
    return _row(exc)[0]


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code for an error (INTERNAL for anything not ours)."""
    import grpc  # loaded only where gRPC is spoken

    return grpc.StatusCode[_row(exc)[1]]


def problem(exc: BaseException, **extra: Any) -> dict[str, Any]:
    """The problem body for an error: ``type`` (the class name), ``title``, ``status``,
    ``detail`` and, where the error has them, ``attribute``, ``index``, ``key`` and
    ``line``."""
    status = http_status(exc)
    name = type(exc).__name__ if isinstance(exc, EventMeshError) else "EventMeshError"
    body: dict[str, Any] = {
        "type": name,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": str(exc) if isinstance(exc, EventMeshError) else "internal error",
    }
    for field in ("attribute", "index", "key", "line"):
        value = getattr(exc, field, None)
        if value is not None:
            body[field] = value
    body.update(extra)
    return body


def error_from_problem(body: Any, status: int) -> EventMeshError:
    """The exception a problem body describes, as the SDK raises it again."""
    if not isinstance(body, dict):
        body = {}
    detail = str(body.get("detail") or f"the sidecar answered HTTP {status}")
    cls = _BY_NAME.get(str(body.get("type")))
    if cls is None:
        cls = next((c for c, s, _ in _TABLE if s == status), EventMeshError)
    return _build(cls, detail, body)


def error_from_grpc(code: grpc.StatusCode, details: str | None, kind: str | None) -> EventMeshError:
    """The exception for a gRPC status; ``kind`` is the error class name the server sent
    in the ``eventmesh-error`` trailing metadata, when it did."""
    detail = details or f"the sidecar answered gRPC {code.name}"
    cls = _BY_NAME.get(kind or "")
    if cls is None:
        cls = next((c for c, _, g in _TABLE if g == code.name), EventMeshError)
    return _build(cls, detail, {})


def _build(cls: type[EventMeshError], detail: str, body: dict[str, Any]) -> EventMeshError:
    if issubclass(cls, errors.EventValidationError):
        return cls(detail, attribute=body.get("attribute"), index=body.get("index"))
    if issubclass(cls, errors.ConfigError):
        error = cls.__new__(cls)
        EventMeshError.__init__(error, detail)
        error.key = body.get("key")
        error.line = body.get("line")
        return error
    if issubclass(cls, errors.PipelineError):
        return cls(detail, step=body.get("step"))
    if issubclass(cls, errors.LimitExceededError):
        return cls(detail, key=body.get("key"))
    return cls(detail)


_TITLES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
