"""Wrong input over the HTTP API gets the right 4xx: 400 for what can never be taken as
sent (names, settings, data nested too deep), 429 for a bound of the mesh reached, and
never the 503 that tells a producer to retry."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

import eventmesh
from eventmesh import Event
from eventmesh.bindings.http import to_binary
from eventmesh.errors import LimitExceededError, RejectedError

pytestmark = pytest.mark.anyio


def _binary(data: Any = 1) -> tuple[dict[str, str], bytes]:
    return to_binary(Event(type="com.example.rule", source="/test", data=data))


async def test_a_topic_name_above_max_name_length_is_400_naming_the_key(serve: Any) -> None:
    """Publishing to a 300-character topic is 400 RejectedError naming
    limits.max_name_length, and nothing is stored."""
    headers, body = _binary()
    async with serve() as api:
        answer = await api.call("POST", f"/topics/{'x' * 300}/events", headers=headers, data=body)
        assert answer.status == 400
        assert answer.body["type"] == "RejectedError"
        assert "limits.max_name_length" in answer.body["detail"]
        assert api.mesh.topics == []


async def test_a_new_topic_beyond_max_topics_is_429(serve: Any) -> None:
    """With limits.max_topics 2, the third distinct topic is 429 LimitExceededError with
    the key; the first two still take events."""
    headers, body = _binary()
    async with serve({"limits": {"max_topics": 2}}) as api:
        for topic in ("a", "b"):
            answer = await api.call("POST", f"/topics/{topic}/events", headers=headers, data=body)
            assert answer.status == 202
        answer = await api.call("POST", "/topics/c/events", headers=headers, data=body)
        assert answer.status == 429
        assert answer.body["type"] == "LimitExceededError"
        assert answer.body["key"] == "limits.max_topics"
        answer = await api.call("POST", "/topics/a/events", headers=headers, data=body)
        assert answer.status == 202


@pytest.mark.parametrize(
    ("content_type", "wrap"),
    [
        ("application/json", None),
        ("application/cloudevents+json", "event"),
        ("application/cloudevents-batch+json", "batch"),
    ],
)
async def test_data_nested_985_deep_is_400_on_data(
    serve: Any, content_type: str, wrap: str | None
) -> None:
    """Data nested 985 deep is 400 naming data in every content mode (it was 202 on
    memory and 500 on Kafka and NATS); nothing is stored."""
    data = b"[" * 985 + b"]" * 985
    headers = {"Content-Type": content_type}
    if wrap is None:
        headers.update({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"})
        body = data
    else:
        body = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":' + data + b"}"
        if wrap == "batch":
            body = b"[" + body + b"]"
    async with serve() as api:
        answer = await api.call("POST", "/topics/deep/events", headers=headers, data=body)
        assert answer.status == 400
        assert answer.body["type"] == "EventValidationError"
        assert answer.body["attribute"] == "data"
        assert api.mesh.topics == []


@pytest.mark.parametrize(
    ("spec", "key", "words"),
    [
        ({"delivery": {"concurrency": 1_000_000}}, "delivery", "between 1 and 1,000"),
        ({"delivery": {"max_attempts": 10**9}}, "delivery", "between 1 and 10,000"),
        ({"delivery": {"prefetch": 10**9}}, "delivery", "between 0 and 100,000"),
        ({"delivery": {"ttl": 1e308}}, "delivery", "at most 31,536,000s"),
        ({"delivery": {"backoff": {"max": 1e308}}}, "delivery.backoff", "86,400s"),
        ({"ack_deadline": 1e308}, "ack_deadline", "at most 86,400s"),
        (
            {"sink": "http://127.0.0.1:9/", "protocolsettings": {"timeout": 1e308}},
            "protocolsettings.timeout",
            "at most 86,400s",
        ),
        (
            {"sink": "http://127.0.0.1:9/", "protocolsettings": {"max_batch": 10**6}},
            "protocolsettings.max_batch",
            "between 1 and 10,000",
        ),
        (
            {"sink": "http://127.0.0.1:9/", "protocolsettings": {"headers": {"X-A": "1\r\n2"}}},
            "protocolsettings.headers.X-A",
            "control character",
        ),
        (
            {
                "sink": "http://user:pw@127.0.0.1:9/",
                "protocolsettings": {"headers": {"Authorization": "Bearer t"}},
            },
            "protocolsettings.headers",
            "ambiguous credentials",
        ),
        ({"group": "g" * 300}, "group", "limits.max_name_length"),
    ],
)
async def test_subscription_settings_out_of_range_are_400_naming_the_key(
    serve: Any, spec: dict[str, Any], key: str, words: str
) -> None:
    """Each number and header a client may set is checked when the subscription is made:
    400 ConfigError with the key and the range, and no subscription is left behind."""
    async with serve() as api:
        answer = await api.call("POST", "/subscriptions", json={"topic": "t", **spec})
        assert answer.status == 400, answer.body
        assert answer.body["type"] == "ConfigError"
        assert answer.body["key"] == key
        assert words in answer.body["detail"]
        assert api.mesh.subscriptions == []


async def test_a_subscription_on_a_topic_name_too_long_is_400(serve: Any) -> None:
    """A subscription's topic above limits.max_name_length is 400 RejectedError."""
    async with serve() as api:
        answer = await api.call("POST", "/subscriptions", json={"topic": "t" * 300})
        assert answer.status == 400
        assert answer.body["type"] == "RejectedError"


async def test_subscriptions_beyond_max_subscriptions_are_429_until_one_is_deleted(
    serve: Any,
) -> None:
    """With limits.max_subscriptions 2, a third POST is 429 naming the key; after a
    DELETE, a new one is created."""
    async with serve({"limits": {"max_subscriptions": 2}}) as api:
        for n in (1, 2):
            answer = await api.call("POST", "/subscriptions", json={"id": f"s{n}", "topic": "t"})
            assert answer.status == 201
        answer = await api.call("POST", "/subscriptions", json={"id": "s3", "topic": "t"})
        assert answer.status == 429
        assert answer.body["type"] == "LimitExceededError"
        assert answer.body["key"] == "limits.max_subscriptions"
        assert (await api.call("DELETE", "/subscriptions/s1")).status == 204
        answer = await api.call("POST", "/subscriptions", json={"id": "s3", "topic": "t"})
        assert answer.status == 201


async def test_refused_names_do_not_use_up_the_topic_bound(serve: Any) -> None:
    """Thousands of requests for names refused by their length leave the mesh with no
    topics: refused names cost no memory."""
    headers, body = _binary()
    async with serve({"limits": {"max_topics": 1}}) as api:
        for n in range(200):
            topic = quote(f"{n:03d}" * 100)
            answer = await api.call("POST", f"/topics/{topic}/events", headers=headers, data=body)
            assert answer.status == 400
        assert api.mesh.topics == []
        answer = await api.call("POST", "/topics/ok/events", headers=headers, data=body)
        assert answer.status == 202


async def test_the_remote_sdk_raises_the_same_errors_again(serve: Any) -> None:
    """Over HTTP, the SDK raises RejectedError for a name too long and LimitExceededError
    with its key for a topic past the bound, as the embedded mesh does."""
    event = Event(type="com.example.rule", source="/test", data=1)
    limits = {"limits": {"max_topics": 1}}
    async with serve(limits) as api, eventmesh.connect(api.url) as client:
        with pytest.raises(RejectedError, match="max_name_length"):
            await client.publish("x" * 300, event)
        await client.publish("first", event)
        with pytest.raises(LimitExceededError) as info:
            await client.publish("second", event)
        assert info.value.key == "limits.max_topics"
