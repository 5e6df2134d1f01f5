"""The one exception tree of eventmesh.

Every error the library raises on purpose is an ``EventMeshError``::

    EventMeshError
    ├── ConfigError              a config file, key or value is wrong (names the key and line)
    │   └── MissingExtraError    a feature asked for needs an extra that is not installed
    ├── EventValidationError     an event breaks the CloudEvents spec (names the attribute)
    │   ├── ContentTypeError     a message's content type is not one a binding reads
    │   └── EventTooLargeError   an event or a request is above the configured size limit
    ├── LifecycleError           an object opened twice, or used before it was opened
    │   └── ClosedError          an object used after it was closed
    ├── ConnectorError           a backend could not do what was asked
    │   ├── ConnectError         the backend cannot be reached
    │   ├── PublishError         an event was not stored; the caller must not assume it was
    │   │   └── TopicFullError   the topic is at its retention limit and is set to fail
    │   ├── RejectedError        the backend will never store this as sent (a topic name it
    │   │                        refuses, a batch larger than it can hold): do not retry
    │   └── SubscribeError       a subscription could not be started or continued
    ├── UnauthenticatedError     the call carries no credentials the sidecar accepts (401)
    ├── PermissionDeniedError    the caller's principal is not granted what it asked (403)
    ├── LimitExceededError       a configured bound of the mesh is reached (topics,
    │                            subscriptions): names the limit and its config key
    ├── RequestTimeoutError      a request got no reply within its timeout (504)
    ├── PluginError
    │   ├── PluginNotFoundError  no connector of that name is installed
    │   └── PluginLoadError      a connector is installed but failed to import
    ├── PipelineError            a filter or transform failed on an event
    └── DeliveryError            an event could not be delivered to its sink (says whether
                                 a retry may help, and when)

Each connector translates its client library's exceptions into this tree at one
boundary, with ``raise ... from exc``, so no aiokafka or nats exception escapes it.
"""

from __future__ import annotations

__all__ = [
    "ClosedError",
    "ConfigError",
    "ConnectError",
    "ConnectorError",
    "ContentTypeError",
    "DeliveryError",
    "EventMeshError",
    "EventTooLargeError",
    "EventValidationError",
    "LifecycleError",
    "LimitExceededError",
    "MissingExtraError",
    "PermissionDeniedError",
    "PipelineError",
    "PluginError",
    "PluginLoadError",
    "PluginNotFoundError",
    "PublishError",
    "RejectedError",
    "RequestTimeoutError",
    "SubscribeError",
    "TopicFullError",
    "UnauthenticatedError",
]


class EventMeshError(Exception):
    """The root of every error eventmesh raises on purpose."""


class ConfigError(EventMeshError):
    """A configuration file, key or value is wrong.

    ``key`` is the dotted path of the offending key and ``line`` its 1-based line in
    the file, when the configuration came from a file.
    """

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None) -> None:
        where = ""
        if key is not None:
            where = f"{key}: "
        if line is not None:
            where = f"line {line}: {where}"
        super().__init__(f"{where}{message}")
        self.key = key
        self.line = line


class MissingExtraError(ConfigError, ImportError):
    """What was asked for (the sidecar, a remote client, tracing, ...) needs an optional
    dependency that is not installed; ``extra`` names the extra that installs it
    (``pip install 'eventmesh[sidecar]'``). It is an ImportError too, so ``except
    ImportError`` and ``pytest.importorskip`` around an optional import still work."""

    extra: str = ""
    """The extra to install ("" when rebuilt from a sidecar's answer, which names none)."""

    def __init__(self, message: str, *, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


class EventValidationError(EventMeshError):
    """An event is not a valid CloudEvent; ``attribute`` names the offending attribute
    and, for an event inside a batch, ``index`` its 0-based position."""

    def __init__(
        self, message: str, *, attribute: str | None = None, index: int | None = None
    ) -> None:
        super().__init__(message)
        self.attribute = attribute
        self.index = index

    def in_batch(self, index: int) -> EventValidationError:
        """This error again, said of event ``index`` of a batch: the same class and
        attribute, with ``index`` set (raise it ``from`` this one)."""
        return type(self)(
            f"event {index} of the batch: {self}", attribute=self.attribute, index=index
        )


class ContentTypeError(EventValidationError):
    """A message's content type is not one the binding reads (HTTP 415)."""


class EventTooLargeError(EventValidationError):
    """An event, or a request of several, is larger than the configured limit (HTTP 413)."""


class LifecycleError(EventMeshError):
    """An object was opened twice, or used before it was opened."""


class ClosedError(LifecycleError):
    """An object was used after it was closed."""


class ConnectorError(EventMeshError):
    """A connector's backend could not do what was asked."""


class ConnectError(ConnectorError):
    """The connector cannot reach its backend."""


class PublishError(ConnectorError):
    """Events were not stored. Nothing may be assumed stored unless publish returned."""


class TopicFullError(PublishError):
    """The topic holds as many unconsumed events as its retention allows."""


class RejectedError(ConnectorError):
    """The backend will never store this request as sent: a topic name it refuses, a
    batch larger than it can hold. Unlike PublishError, retrying the same request cannot
    help; the message names the rule that was broken."""


class SubscribeError(ConnectorError):
    """A subscription could not be started or continued."""


class UnauthenticatedError(EventMeshError):
    """The call carries no credentials the sidecar accepts. The message says what was
    missing, never why a given token was wrong."""


class PermissionDeniedError(EventMeshError):
    """The caller's principal is not granted the action on that topic or group."""


class LimitExceededError(EventMeshError):
    """A configured bound on what the mesh holds is reached (the number of topics or of
    subscriptions); ``key`` names the config key that sets it."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class RequestTimeoutError(EventMeshError):
    """A request (``request()``) got no reply within its timeout; ``timeout`` is the
    seconds it waited. A reply that comes later is counted and dropped."""

    def __init__(self, message: str, *, timeout: float | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout


class PluginError(EventMeshError):
    """A connector plugin could not be used."""


class PluginNotFoundError(PluginError):
    """No connector of the requested name is installed."""


class PluginLoadError(PluginError):
    """A connector plugin is installed but could not be loaded."""


class PipelineError(EventMeshError):
    """A filter or transform failed on an event; ``step`` names the step."""

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


class DeliveryError(EventMeshError):
    """An event could not be delivered to its sink.

    A sink raises it to tell the dispatcher how to go on: ``retryable=False`` sends the
    event to the dead-letter topic at once (a webhook's 400, say); ``retry_after`` is the
    least number of seconds to wait before the next attempt (a ``Retry-After`` header).
    Any other exception from a sink is retried under the policy.
    """

    def __init__(
        self, message: str, *, retryable: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
