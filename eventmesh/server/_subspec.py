"""Subscription specs of the sidecar's API: the body of ``POST /subscriptions`` checked
(:func:`parse`), the resource's fields (:func:`fields`, :func:`config_fields`) and the
webhook settings, with every error a ConfigError naming the key inside the body."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import msgspec

from eventmesh._duration import Duration
from eventmesh.config import SinkConfig, SubscriptionConfig, convert
from eventmesh.delivery.policy import MAX_DELAY, DeliveryPolicy, check_range
from eventmesh.errors import ConfigError

__all__ = [
    "SubscriptionSpec",
    "config_fields",
    "convert_body",
    "parse",
    "rekey",
    "sink_settings",
    "spec_fields",
]

_DEFAULT_ACK_DEADLINE = 30.0
_T = TypeVar("_T")
_MISSING = re.compile(r"missing required field `([^`]+)`")


class SubscriptionSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /subscriptions`` (see docs/sidecar.md)."""

    topic: str
    id: str | None = None
    group: str | None = None
    """The consumer group; defaults to the id."""
    protocol: Literal["HTTP", "pull"] | None = None
    """``HTTP`` pushes to ``sink``; ``pull`` is read through the pull endpoints. Default:
    ``HTTP`` when there is a sink, else ``pull``."""
    sink: str | None = None
    protocolsettings: dict[str, Any] | None = None
    """For ``HTTP``: ``headers``, ``mode``, ``timeout``, ``max_batch``, ``batch_window``."""
    filters: list[Any] | None = None
    """CloudEvents Subscriptions API filters: every one must match."""
    filter: Any = None
    """One filter (an alternative to ``filters``)."""
    transform: list[Any] | None = None
    delivery: DeliveryPolicy = DeliveryPolicy()
    start: Literal["earliest", "latest"] = "latest"
    reply_to: str | None = None
    """For ``HTTP``: the topic a webhook's CloudEvent answers are published to."""
    ack_deadline: Duration | None = None
    """For ``pull``: how long a delivery may stay unacked (30 s by default)."""
    persist: bool = True
    """Store it where the topic's events are, so that it outlives this sidecar and runs
    on every sidecar of the backend; false keeps it in this sidecar's memory only (the
    remote SDK's subscriptions, which the client deletes, and makes again after a
    restart)."""


def convert_body(data: Any, kind: type[_T]) -> _T:
    """A decoded JSON request body checked against a struct; ConfigError naming the key
    inside the body (``delivery.max_attempts``) otherwise."""
    try:
        return convert(data, kind, key="body")
    except ConfigError as exc:
        key = (exc.key or "").removeprefix("body").removeprefix(".")
        message = str(exc).removeprefix(f"{exc.key}: ") if exc.key else str(exc)
        missing = _MISSING.search(message)
        if missing:
            key = f"{key}.{missing.group(1)}" if key else missing.group(1)
        raise ConfigError(message, key=key or None) from exc


def parse(spec: Mapping[str, Any]) -> SubscriptionSpec:
    parsed = convert_body(dict(spec), SubscriptionSpec)
    if not parsed.topic:
        raise ConfigError("a topic name must be a non-empty string", key="topic")
    if parsed.group is not None and not parsed.group:
        raise ConfigError("a group must be a non-empty string when given", key="group")
    if parsed.filters is not None and parsed.filter is not None:
        raise ConfigError(
            "give 'filters' (a list, all must match) or 'filter', not both", key="filters"
        )
    if parsed.protocol == "HTTP" or (parsed.protocol is None and parsed.sink is not None):
        if parsed.sink is None:
            raise ConfigError("a subscription with protocol HTTP needs a 'sink' URL", key="sink")
        if parsed.ack_deadline is not None:
            raise ConfigError(
                "'ack_deadline' applies to pull subscriptions; an HTTP sink acks by answering",
                key="ack_deadline",
            )
    else:
        for name in ("sink", "protocolsettings", "reply_to"):
            if getattr(parsed, name) is not None:
                raise ConfigError(
                    f"{name!r} applies to push subscriptions (protocol HTTP); a pull "
                    "subscription is read through GET /subscriptions/{id}/events",
                    key=name,
                )
        if parsed.ack_deadline is not None:
            try:
                check_range("ack_deadline", parsed.ack_deadline, 0, MAX_DELAY, above=True, unit="s")
            except ValueError as exc:
                raise ConfigError(str(exc), key="ack_deadline") from None
    return parsed


def sink_settings(spec: SubscriptionSpec) -> SinkConfig:
    settings = dict(spec.protocolsettings or {})
    for reserved in ("handler", "webhook"):
        if reserved in settings:
            raise ConfigError(
                f"unknown key {reserved!r}; the URL is the subscription's 'sink'",
                key=f"protocolsettings.{reserved}",
            )
    settings["webhook"] = spec.sink
    try:
        config = convert(settings, SinkConfig, key="protocolsettings")
    except ConfigError as exc:
        message = str(exc).removeprefix(f"{exc.key}: ") if exc.key else str(exc)
        raise ConfigError(message, key=exc.key) from exc
    problem = config.problem()
    if problem is not None:
        key, message = problem
        raise ConfigError(message, key=f"protocolsettings.{key}")
    return config


def spec_fields(
    spec: SubscriptionSpec, sub_id: str, protocol: str, settings: SinkConfig | None
) -> dict[str, Any]:
    """The resource's fields: what was asked for, with defaults filled in."""
    fields: dict[str, Any] = {
        "id": sub_id,
        "topic": spec.topic,
        "group": spec.group or sub_id,
        "protocol": protocol,
    }
    if settings is not None:
        fields["sink"] = spec.sink
        fields["protocolsettings"] = _settings_fields(settings)
    if spec.filters is not None:
        fields["filters"] = spec.filters
    if spec.filter is not None:
        fields["filter"] = spec.filter
    if spec.transform is not None:
        fields["transform"] = spec.transform
    fields["delivery"] = _builtins(spec.delivery)
    fields["start"] = spec.start
    fields["persist"] = spec.persist
    if protocol == "HTTP":
        fields["reply_to"] = spec.reply_to
    else:
        fields["ack_deadline"] = float(
            spec.ack_deadline if spec.ack_deadline is not None else _DEFAULT_ACK_DEADLINE
        )
    return fields


def config_fields(sub: SubscriptionConfig) -> dict[str, Any]:
    fields: dict[str, Any] = {"id": sub.name, "topic": sub.topic, "group": sub.group_name}
    sink = sub.sink
    if sink is not None and sink.webhook is not None:
        fields["protocol"] = "HTTP"
        fields["sink"] = sink.webhook
        fields["protocolsettings"] = _settings_fields(sink)
    else:
        fields["protocol"] = "handler"
        fields["handler"] = sink.handler if sink is not None else None
    if sub.filter is not None:
        fields["filter"] = sub.filter
    if sub.transform is not None:
        fields["transform"] = sub.transform
    fields["delivery"] = _builtins(sub.delivery)
    fields["start"] = sub.start
    fields["reply_to"] = sub.reply_to
    return fields


def _settings_fields(sink: SinkConfig) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "headers": dict(sink.headers),
        "mode": sink.mode,
        "timeout": float(sink.timeout),
        "max_batch": sink.max_batch,
        "batch_window": float(sink.batch_window),
    }
    if sink.signing_secret is not None:
        fields["signing_secret"] = sink.signing_secret  # shown as *** by resource()
    return fields


def _builtins(policy: DeliveryPolicy) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(policy, enc_hook=float)
    return data


def rekey(exc: ConfigError, topic: str, group: str, from_filters: bool) -> ConfigError:
    """The mesh's error with its key said as the request's (``filters[1].exact``)."""
    prefix = f"subscribe({topic!r}, group={group!r})."
    key = exc.key
    if key is None or not key.startswith(prefix):
        return exc
    inner = key[len(prefix) :]
    if from_filters and inner.startswith("filter"):
        inner = "filters" + inner[len("filter") :]
    message = str(exc).removeprefix(f"{key}: ")
    return ConfigError(message, key=inner)
