"""A subscription over the HTTP API may not dead-letter to the topic it reads: each
event given up on would come back, be given up again and multiply, for ever."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "spec",
    [
        {"topic": "loop", "sink": "http://127.0.0.1:9/", "delivery": {"dead_letter": "{topic}"}},
        {"topic": "loop", "delivery": {"dead_letter": "loop", "max_attempts": 1}},
        {"topic": "loop", "group": "loop", "delivery": {"dead_letter": "{group}"}},
    ],
)
async def test_a_dead_letter_topic_that_is_the_subscriptions_own_is_400(
    serve: Any, spec: dict[str, Any]
) -> None:
    """Push or pull, a delivery.dead_letter that resolves to the topic is a 400
    ConfigError naming delivery.dead_letter, and nothing is created; another topic is
    created as before."""
    async with serve() as api:
        answer = await api.call("POST", "/subscriptions", json=spec)
        assert answer.status == 400, answer.body
        assert answer.body["type"] == "ConfigError"
        assert answer.body["key"] == "delivery.dead_letter"
        assert "names the topic the subscription reads ('loop')" in answer.body["detail"]
        assert (await api.call("GET", "/subscriptions")).body == {"subscriptions": []}
        assert api.mesh.subscriptions == []
        fine = {**spec, "delivery": {"dead_letter": "{topic}.{group}.dlq"}}
        created = await api.call("POST", "/subscriptions", json=fine)
        assert created.status == 201, created.body
