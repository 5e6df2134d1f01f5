"""The sidecar's pull queue keeps a subscription alive through a failed fetch, as a
handler subscription's dispatcher does: the backend may come back."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from faults import Forwarding, Troubled

from eventmesh import DeliveryPolicy, Event, Mesh
from eventmesh._duration import Duration
from eventmesh.connectors.base import Delivery
from eventmesh.connectors.memory import MemoryConfig
from eventmesh.delivery.policy import Backoff
from eventmesh.errors import PublishError, SubscribeError
from eventmesh.server.pull import PullQueue

pytestmark = pytest.mark.anyio


class FailingFetch(Troubled):
    """A memory connector whose consumers' first fetches raise these errors, as a broker
    going away for a moment makes a real connector's fetch raise."""

    def __init__(self, failures: list[Exception]) -> None:
        super().__init__()
        self.failures = failures

    def trouble(self, topic: str) -> None:
        if self.failures:
            raise self.failures.pop(0)


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


class _FlakyAck(Forwarding):
    """A memory delivery whose first ack fails, as an ack to a broker that is away does."""

    __slots__ = ("_owner",)

    def __init__(self, inner: Delivery, owner: FailingAck) -> None:
        super().__init__(inner)
        self._owner = owner

    async def ack(self) -> None:
        if self._owner.failing:
            self._owner.failing -= 1
            raise PublishError("broker away")
        await self.inner.ack()


class FailingAck(Troubled):
    """A memory connector whose first ``failing`` acks raise."""

    def __init__(self, failing: int) -> None:
        super().__init__()
        self.failing = failing

    def wrap(self, topic: str, delivery: Delivery) -> Delivery:
        return _FlakyAck(delivery, self)


async def test_a_delivery_whose_ack_failed_stays_outstanding_for_another_try() -> None:
    """An ack the connector could not make raises to the client, and the delivery stays
    outstanding: acked again it settles, so nothing is left unsettled in the group."""
    async with Mesh(connectors={"default": FailingAck(1)}) as mesh:
        sub = await mesh.subscribe("t", "g", start="earliest")
        queue = PullQueue(sub, ack_deadline=30)
        async with anyio.create_task_group() as tg:
            await tg.start(queue.run)
            await mesh.publish("t", Event(type="t", source="/s", id="e1"))
            with anyio.fail_after(10):
                (handout,) = await queue.take(1, 5)
            with pytest.raises(PublishError):
                await queue.ack([handout.delivery_id])
            assert queue.outstanding == 1
            assert await queue.ack([handout.delivery_id]) == (1, [])
            assert queue.outstanding == 0
            queue.close()
        await sub.close()
        assert sub.stats.delivered == 1


class _StuckNack(Forwarding):
    """A memory delivery whose nack never returns for event 'stuck', as a last attempt's
    dead letter to a topic out of reach keeps trying."""

    __slots__ = ()

    async def nack(self, delay: float = 0.0) -> None:
        if self.event.id == "stuck":
            await anyio.sleep_forever()
        await self.inner.nack(delay)


class StuckNack(Troubled):
    def wrap(self, topic: str, delivery: Delivery) -> Delivery:
        return _StuckNack(delivery)


async def test_a_nack_that_waits_holds_up_no_other_expired_delivery() -> None:
    """Two deliveries pass their ack deadline; the first one's nack waits for good: the
    second is still nacked at its deadline and comes back as its next attempt."""
    policy = DeliveryPolicy(backoff=Backoff(initial=Duration(0.01), max=Duration(0.01), jitter=0))
    async with Mesh(connectors={"default": StuckNack(MemoryConfig(partitions=1))}) as mesh:
        sub = await mesh.subscribe("t", "g", start="earliest", delivery=policy)
        queue = PullQueue(sub, ack_deadline=0.2)
        async with anyio.create_task_group() as tg:
            await tg.start(queue.run)
            await mesh.publish("t", [Event(type="t", source="/s", id=i) for i in ("stuck", "e2")])
            with anyio.fail_after(10):
                first: list[Any] = []
                while len(first) < 2:
                    first += await queue.take(2, 5)
                assert [h.event.id for h in first] == ["stuck", "e2"]
                (again,) = await queue.take(1, 5)  # neither acked: wait out the deadline
            assert (again.event.id, again.attempt) == ("e2", 2)
            queue.close()
            tg.cancel_scope.cancel()


async def test_expired_deliveries_are_reaped_in_sweeps_that_let_the_loop_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """600 deliveries past their deadline at once are reaped in sweeps of REAP_SWEEP,
    with one log line and a checkpoint each (the loop runs between them), and all of them
    come back as second attempts. Before, each had its own log line, and reading the
    oldest of a dict whose front had been deleted rescanned it: 100,000 expiries held
    the loop 11 s."""
    import logging

    from eventmesh.server import pull

    sweep = getattr(pull, "REAP_SWEEP", 256)

    policy = DeliveryPolicy(
        backoff=Backoff(initial=Duration(0.01), max=Duration(0.01), jitter=0), prefetch=1000
    )
    from eventmesh.connectors.memory import MemoryConnector

    async with Mesh(connectors={"default": MemoryConnector(MemoryConfig(partitions=1))}) as mesh:
        sub = await mesh.subscribe("t", "g", start="earliest", delivery=policy)
        queue = PullQueue(sub, ack_deadline=0.2)
        events = [Event(type="t", source="/s", id=f"e{i}") for i in range(600)]
        await mesh.publish("t", events)
        taken: list[Any] = []
        again: list[Any] = []
        with caplog.at_level(logging.INFO, logger="eventmesh.server.pull"):
            async with anyio.create_task_group() as tg:
                await tg.start(queue.run)
                with anyio.fail_after(10):
                    while len(taken) < 600:
                        taken += await queue.take(600, 1)
                    while len(again) < 600:
                        again += await queue.take(600, 1)
                queue.close()
                tg.cancel_scope.cancel()  # the fetch waits for more events
        await sub.close()
    assert [h.attempt for h in taken] == [1] * 600
    assert sorted(h.event.id for h in again) == sorted(e.id for e in events)
    assert {h.attempt for h in again} == {2}
    sweeps = [r for r in caplog.records if "not acked within" in r.getMessage()]
    assert 1 <= len(sweeps) <= -(-600 // sweep) + 1
