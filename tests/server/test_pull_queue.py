"""The sidecar's pull queue keeps a subscription alive through a failed fetch, as a
handler subscription's dispatcher does: the backend may come back."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from eventmesh import DeliveryPolicy, Event, Mesh
from eventmesh._duration import Duration
from eventmesh.connectors.memory import MemoryConnector
from eventmesh.delivery.policy import Backoff
from eventmesh.errors import SubscribeError
from eventmesh.server.pull import PullQueue

pytestmark = pytest.mark.anyio


class FailingFetch(MemoryConnector):
    """A memory connector whose consumers' first fetches raise these errors, as a broker
    going away for a moment makes a real connector's fetch raise."""

    def __init__(self, failures: list[Exception]) -> None:
        super().__init__()
        self.failures = failures

    def subscribe(self, topic, group, *, start="latest"):  # type: ignore[no-untyped-def]
        consumer = super().subscribe(topic, group, start=start)
        real_fetch = consumer.fetch
        failures = self.failures

        async def fetch(max_events=256, timeout=None):  # type: ignore[no-untyped-def]
            if failures:
                raise failures.pop(0)
            return await real_fetch(max_events, timeout)

        consumer.fetch = fetch  # type: ignore[method-assign]
        return consumer


async def test_a_failed_fetch_is_retried_and_the_pollers_get_what_comes_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two fetches fail (a broker blip): the queue stays open, says so in the log, and
    the events published meanwhile and after reach the next polls."""
    connector = FailingFetch([SubscribeError("broker away")] * 2)
    policy = DeliveryPolicy(backoff=Backoff(initial=Duration(0.01), max=Duration(0.01), jitter=0))
    async with Mesh(connectors={"default": connector}) as mesh:
        sub = await mesh.subscribe("t", "g", start="earliest", delivery=policy)
        queue = PullQueue(sub, ack_deadline=30)
        got: list[Any] = []
        async with anyio.create_task_group() as tg:
            await tg.start(queue.run)
            await mesh.publish("t", [Event(type="t", source="/s", id=f"e{i}") for i in range(3)])
            with anyio.fail_after(10):
                while len(got) < 3:
                    assert not queue.closed, "the failed fetch closed the pull queue"
                    got += await queue.take(3, 1)
            queue.close()
        await sub.close()
    assert sorted(h.event.id for h in got) == ["e0", "e1", "e2"]
    assert "could not fetch (broker away); retrying" in caplog.text
