"""Bounds on what clients choose: name lengths, the number of topics and subscriptions,
every delivery and webhook setting, and the nesting of event data (docs/operations.md,
"Limits: names, counts and settings")."""

from __future__ import annotations

import math
from typing import Any

import pytest

from eventmesh import Event, Mesh
from eventmesh._status import http_status
from eventmesh.bindings.http import from_http, from_http_one
from eventmesh.config import load_config
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.delivery.webhook import WebhookSession, WebhookSink
from eventmesh.errors import (
    ConfigError,
    EventValidationError,
    LimitExceededError,
    RejectedError,
)

pytestmark = pytest.mark.anyio


def _event(data: Any = 1) -> Event:
    return Event(type="com.example.limit", source="/test", data=data)


# -- names and counts ----------------------------------------------------------------------


async def test_a_topic_name_above_max_name_length_is_rejected_and_not_remembered() -> None:
    """A 300-character topic is RejectedError (400) naming limits.max_name_length, on
    publish and subscribe; the mesh keeps nothing for it."""
    async with Mesh() as mesh:
        with pytest.raises(RejectedError, match=r"limits\.max_name_length \(249\)") as info:
            await mesh.publish("x" * 300, _event())
        assert http_status(info.value) == 400
        with pytest.raises(RejectedError, match="max_name_length"):
            mesh.subscribe("y" * 300, "g")
        await mesh.publish("z" * 249, _event())  # the bound itself is allowed
        assert mesh.topics == ["z" * 249]


async def test_topics_beyond_max_topics_are_429_and_refused_names_do_not_count() -> None:
    """With limits.max_topics 3, a fourth distinct topic is LimitExceededError naming the
    key, on publish and on subscribe; the three known topics keep working, and names
    refused for their length take no place."""
    async with Mesh({"limits": {"max_topics": 3}}) as mesh:
        for n in range(20):
            with pytest.raises(RejectedError):
                await mesh.publish(f"{n}" * 300, _event())
        for topic in ("a", "b", "c"):
            await mesh.publish(topic, _event())
        with pytest.raises(LimitExceededError) as info:
            await mesh.publish("d", _event())
        assert info.value.key == "limits.max_topics"
        assert http_status(info.value) == 429
        with pytest.raises(LimitExceededError):
            mesh.subscribe("e", "g")
        await mesh.publish("a", _event())
        assert sorted(mesh.topics) == ["a", "b", "c"]


async def test_a_subscriptions_dead_letter_topic_is_counted_when_it_subscribes() -> None:
    """The dead-letter and reply topics a subscription may publish to are admitted when it
    is made, so the topic bound fails the subscribe, not a later delivery."""
    async with Mesh({"limits": {"max_topics": 2}}) as mesh:
        async with mesh.subscribe("orders", "g"):
            assert sorted(mesh.topics) == ["orders", "orders.dlq"]
        with pytest.raises(LimitExceededError):
            mesh.subscribe("orders", "g", delivery={"dead_letter": None}, reply_to="answers")


async def test_subscriptions_beyond_max_subscriptions_are_429_until_one_closes() -> None:
    """With limits.max_subscriptions 2, a third subscribe is LimitExceededError naming the
    key; once one closes, a new one may be made."""
    async with Mesh({"limits": {"max_subscriptions": 2}}) as mesh:
        first = await mesh.subscribe("t", "one").start()
        async with mesh.subscribe("t", "two"):
            with pytest.raises(LimitExceededError) as info:
                mesh.subscribe("t", "three")
            assert info.value.key == "limits.max_subscriptions"
            await first.close()
            async with mesh.subscribe("t", "three"):
                pass


async def test_group_and_subscription_names_above_max_name_length_are_config_errors() -> None:
    """A group or subscription name longer than limits.max_name_length is a ConfigError
    whose key ends in that argument."""
    async with Mesh({"limits": {"max_name_length": 10}}) as mesh:
        with pytest.raises(ConfigError, match="max_name_length") as info:
            mesh.subscribe("t", "g" * 11)
        assert str(info.value.key).endswith(".group")
        with pytest.raises(ConfigError, match="max_name_length") as info:
            mesh.subscribe("t", "g", name="n" * 11)
        assert str(info.value.key).endswith(".name")


def test_the_config_file_is_held_to_the_same_name_and_count_bounds() -> None:
    """Subscriptions beyond limits.max_subscriptions, and a topic above max_name_length,
    are refused when the configuration loads, naming the key."""
    sink = {"handler": "m:f"}
    subs = [{"name": f"s{i}", "topic": "t", "sink": sink} for i in range(3)]
    with pytest.raises(ConfigError, match="max_subscriptions") as info:
        load_config({"subscriptions": subs, "limits": {"max_subscriptions": 2}})
    assert info.value.key == "subscriptions"
    with pytest.raises(ConfigError, match="max_name_length") as info:
        load_config({"subscriptions": [{"name": "s", "topic": "t" * 250, "sink": sink}]})
    assert info.value.key == "subscriptions[0].topic"
    with pytest.raises(ConfigError, match="max_name_length"):
        load_config({"topics": {"t" * 250: {"connector": "default"}}})


# -- delivery settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delivery", "words"),
    [
        ({"concurrency": 1_000_000}, "concurrency must be between 1 and 1,000"),
        ({"concurrency": 0}, "concurrency must be between 1 and 1,000"),
        ({"max_attempts": 10**9}, "max_attempts must be between 1 and 10,000"),
        ({"prefetch": 10**9}, "prefetch must be between 0 and 100,000"),
        ({"ttl": 1e308}, "ttl must be above 0s and at most 31,536,000s"),
        ({"backoff": {"initial": 1e308}}, "initial must be between 0s and 86,400s"),
        ({"backoff": {"max": math.inf}}, "max must be between 0s and 86,400s"),
        ({"backoff": {"multiplier": math.nan}}, "multiplier must be between 1 and 100"),
        ({"backoff": {"jitter": math.nan}}, "jitter must be between 0 and 1"),
    ],
)
async def test_delivery_settings_out_of_range_are_refused_at_subscribe(
    delivery: dict[str, Any], words: str
) -> None:
    """Each number of a delivery policy has a range; one outside it (or NaN, inf) is a
    ConfigError naming the key and the range, before anything is started."""
    async with Mesh() as mesh:
        with pytest.raises(ConfigError, match=words) as info:
            mesh.subscribe("t", "g", delivery=delivery)
        assert ".delivery" in str(info.value.key)
        assert mesh.subscriptions == []


def test_the_bounds_themselves_are_accepted_and_one_more_is_not() -> None:
    """The upper bounds are valid settings; one above each is refused."""
    policy = DeliveryPolicy(concurrency=1_000, max_attempts=10_000, prefetch=100_000)
    assert policy.max_in_flight == 100_000
    with pytest.raises(ValueError, match="concurrency"):
        DeliveryPolicy(concurrency=1_001)
    with pytest.raises(ValueError, match="max_attempts"):
        DeliveryPolicy(max_attempts=10_001)
    with pytest.raises(ValueError, match="prefetch"):
        DeliveryPolicy(prefetch=100_001)


# -- webhook sinks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sink", "key", "words"),
    [
        (
            {"webhook": "http://user:secret@127.0.0.1/", "headers": {"Authorization": "x"}},
            "subscriptions[0].sink.headers",
            "ambiguous credentials",
        ),
        (
            {"webhook": "http://127.0.0.1/", "headers": {"X-Token": "a\r\nX-Evil: 1"}},
            "subscriptions[0].sink.headers.X-Token",
            "control character",
        ),
        (
            {"webhook": "http://127.0.0.1/", "headers": {"Bad Name": "x"}},
            "subscriptions[0].sink.headers",
            "not a header name",
        ),
        (
            {"webhook": "http://127.0.0.1/", "headers": {"Content-Length": "5"}},
            "subscriptions[0].sink.headers.Content-Length",
            "would cut the body short",
        ),
        (
            {"webhook": "http://127.0.0.1/", "headers": {"transfer-encoding": "chunked"}},
            "subscriptions[0].sink.headers.transfer-encoding",
            "framing and connection headers",
        ),
        (
            {"webhook": "http://127.0.0.1/", "timeout": 1e308},
            "subscriptions[0].sink.timeout",
            "at most 86,400s",
        ),
        (
            {"webhook": "http://127.0.0.1/", "max_batch": 10**6},
            "subscriptions[0].sink.max_batch",
            "10,000",
        ),
        (
            {"webhook": "http://127.0.0.1/", "batch_window": 3600},
            "subscriptions[0].sink.batch_window",
            "60s",
        ),
    ],
)
def test_webhook_sinks_are_checked_when_the_config_loads(
    sink: dict[str, Any], key: str, words: str
) -> None:
    """Credentials given twice, control characters in headers and settings out of range
    are ConfigErrors naming the exact key."""
    with pytest.raises(ConfigError) as info:
        load_config({"subscriptions": [{"name": "s", "topic": "t", "sink": sink}]})
    assert info.value.key == key
    assert words in str(info.value)


async def test_a_webhook_sink_made_in_code_is_held_to_the_same_rules() -> None:
    """WebhookSink refuses a header value with a line break and credentials in both the URL
    and a header, as the config does."""
    async with WebhookSession() as session:
        with pytest.raises(ConfigError, match="control character") as info:
            WebhookSink("http://127.0.0.1/", session=session, headers={"X-A": "1\n2"})
        assert info.value.key == "headers.X-A"
        with pytest.raises(ConfigError, match="ambiguous credentials"):
            WebhookSink(
                "http://u:p@127.0.0.1/", session=session, headers={"authorization": "Bearer t"}
            )
        WebhookSink("http://u:p@127.0.0.1/", session=session)  # credentials once: fine


# -- data nesting ------------------------------------------------------------------------------


def _nested(depth: int) -> list[Any]:
    data: list[Any] = []
    for _ in range(depth - 1):
        data = [data]
    return data


_HEADERS = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}


@pytest.mark.parametrize("depth", [65, 985, 5_000])
def test_data_nested_deeper_than_64_is_refused_by_the_http_binding(depth: int) -> None:
    """Binary, structured and batched bodies with data nested deeper than 64 levels are
    EventValidationError on data (400), whatever the connector behind."""
    data = b"[" * depth + b"]" * depth
    with pytest.raises(EventValidationError) as info:
        from_http({**_HEADERS, "content-type": "application/json"}, data)
    assert info.value.attribute == "data"
    envelope = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":' + data + b"}"
    with pytest.raises(EventValidationError) as info:
        from_http({"content-type": "application/cloudevents+json"}, envelope)
    assert info.value.attribute == "data"
    with pytest.raises(EventValidationError) as info:
        from_http({"content-type": "application/cloudevents-batch+json"}, b"[" + envelope + b"]")
    assert info.value.attribute == "data"
    fine = from_http_one({**_HEADERS, "content-type": "application/json"}, b"[" * 64 + b"]" * 64)
    assert fine.data == _nested(64)  # the bound itself is read


async def test_a_dead_letter_topic_over_the_name_bound_fails_the_subscribe_naming_it() -> None:
    """A 249-character topic is fine, but its default dead-letter topic (253 characters)
    is not: the subscribe says it is the dead-letter topic; without one it works."""
    async with Mesh() as mesh:
        with pytest.raises(RejectedError, match=r"the delivery\.dead_letter topic is refused"):
            mesh.subscribe("t" * 249, "g")
        async with mesh.subscribe("t" * 249, "g", delivery={"dead_letter": None}):
            pass
