"""The controls before a function: a batch whose leader was cancelled."""

from __future__ import annotations

import anyio
import pytest

from eventmesh import Event
from eventmesh.errors import DeliveryError
from eventmesh.functions.limits import Batcher

pytestmark = pytest.mark.anyio


def ev(n: int) -> Event:
    """An event with data {"n": n}."""
    return Event(type="t", source="/s", data={"n": n})


async def test_a_batch_whose_leader_was_cancelled_is_not_joined_again() -> None:
    """When the call that opened a batch is cancelled before the batch filled, the
    callers that joined it fail (to be retried) and the next event opens a new batch."""
    ran: list[list[int]] = []
    failed: list[int] = []

    async def run(events: list[Event]) -> None:
        ran.append([e.data["n"] for e in events])

    batcher = Batcher(3, 60.0, run)
    leader = anyio.CancelScope()

    async def lead() -> None:
        with leader:
            await batcher(ev(1))

    async def call(n: int) -> None:
        try:
            await batcher(ev(n))
        except DeliveryError:
            failed.append(n)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lead)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(call, 2)
            await anyio.wait_all_tasks_blocked()
            leader.cancel()
        async with anyio.create_task_group() as tg:
            for n in (3, 4, 5):
                tg.start_soon(call, n)
    assert failed == [2]
    assert ran == [[3, 4, 5]]
