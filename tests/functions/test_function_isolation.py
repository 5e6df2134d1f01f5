"""Process and thread isolation under timeouts: cold starts, hung calls, worker errors."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import anyio
import pytest
from fn_support import FAST, eventually, order, read

from eventmesh import DeliveryError, Event, Mesh
from eventmesh.functions.invoker import process_invoker
from eventmesh.functions.process import WorkerPool

pytestmark = pytest.mark.anyio

_EVENT = b'{"specversion":"1.0","id":"1","source":"/s","type":"t"}'


def imports(log: Path) -> list[str]:
    """The process ids that imported fn_slowstart, one per import."""
    return log.read_text(encoding="utf-8").split() if log.exists() else []


async def test_a_cold_start_longer_than_the_timeout_does_not_count_against_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler whose import takes longer than the function's timeout still starts
    (once) and handles the event: the cold start is not part of the invocation."""
    log = tmp_path / "imports"
    monkeypatch.setenv("FN_SLOWSTART_LOG", str(log))
    spec = {
        "name": "slow",
        "trigger": {"topic": "orders", "delivery": FAST},
        "handler": "fn_slowstart:handle",
        "isolation": "process",
        "timeout": "300ms",
        "reply_to": "out",
    }
    async with Mesh({"functions": [spec]}) as mesh:
        await mesh.publish("orders", order(1))
        (reply,) = await read(mesh, "out", 1)
        stats = mesh.functions[0].stats
        assert (stats.cold_starts, stats.timeouts, stats.failures) == (1, 0, 0)
    assert reply.type == "handled"
    assert len(imports(log)) == 1


async def test_a_caller_giving_up_does_not_tear_down_a_starting_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller cancelled during the cold start leaves the start running; the next
    caller gets the same worker, and the handler was imported once."""
    log = tmp_path / "imports"
    monkeypatch.setenv("FN_SLOWSTART_LOG", str(log))
    async with WorkerPool("fn_slowstart:handle", name="slow") as pool:
        with anyio.move_on_after(0.2) as scope:
            await pool.run(False, _EVENT)
        assert scope.cancelled_caught
        assert pool.state == "starting"
        with anyio.fail_after(30):
            kind, _ = await pool.run(False, _EVENT)
        assert kind == "events"
        assert pool.stats.cold_starts == 1
        assert imports(log) == [str(pid) for pid in pool.pids]


async def test_threads_abandoned_at_a_timeout_keep_their_concurrency_slot() -> None:
    """A plain function that hangs has at most `concurrency` threads alive however
    often it times out and is retried; once they end, the slots serve new events."""
    release = threading.Event()
    lock = threading.Lock()
    entered = 0
    mesh = Mesh()

    @mesh.function(
        topic="orders",
        timeout="50ms",
        concurrency=2,
        delivery={**FAST, "dead_letter": None, "ordering": "none"},
    )
    def hang(event: Event) -> None:
        nonlocal entered
        with lock:
            entered += 1
        if event.data["n"] < 10:
            release.wait(timeout=30)

    try:
        async with mesh:
            sub = next(s for s in mesh.subscriptions if s.name == "function.hang")
            await mesh.publish("orders", [order(i) for i in range(10)])
            await eventually(lambda: sub.stats.dead_lettered == 10)
            assert entered == 2  # the two first calls still hold both threads
            release.set()
            await mesh.publish("orders", order(10))
            await eventually(lambda: sub.stats.delivered == 1)
            assert entered == 3
    finally:
        release.set()


async def test_a_worker_whose_call_timed_out_is_recycled(tmp_path: Path) -> None:
    """A process call past its timeout recycles the worker: the retry runs in a fresh
    worker instead of queueing behind the hung call, and the hung one is terminated."""
    marker = tmp_path / "hung"
    spec = {
        "name": "hang",
        "trigger": {"topic": "orders", "delivery": FAST},
        "handler": "fn_isolation:hang_once",
        "isolation": "process",
        "timeout": "500ms",
        "reply_to": "out",
    }
    async with Mesh({"functions": [spec]}) as mesh:
        await mesh.publish("orders", Event(type="t", source="/s", data={"marker": str(marker)}))
        (reply,) = await read(mesh, "out", 1)
        hung = int(marker.read_text(encoding="utf-8"))
        assert reply.data["pid"] != hung
        stats = mesh.functions[0].stats
        assert (stats.timeouts, stats.cold_starts) == (1, 2)
        await eventually(lambda: not alive(hung))


def alive(pid: int) -> bool:
    """True while a process with this id exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # the process may end, and its entry go, between the two looks
        return ") Z " not in Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


async def test_a_delivery_error_from_a_worker_keeps_retryable_and_retry_after() -> None:
    """DeliveryError raised in a worker process reaches the dispatcher with its
    retryable and retry_after: retryable=False is dead-lettered after one attempt."""
    spec = {
        "name": "refuse",
        "trigger": {"topic": "orders", "delivery": FAST},
        "handler": "fn_isolation:refuse",
        "isolation": "process",
    }
    async with Mesh({"functions": [spec]}) as mesh:
        await mesh.publish("orders", Event(type="t", source="/s", data={"retryable": False}))
        (dead,) = await read(mesh, "orders.dlq", 1)
        assert mesh.functions[0].stats.invocations == 1
    assert "cannot handle this order" in dead.extensions["deadlettererror"]
    assert dead.extensions["deadletterattempts"] == 1
    async with WorkerPool("fn_isolation:refuse", name="refuse") as pool:
        call = process_invoker(pool, "refuse")
        event = Event(type="t", source="/s", data={"retryable": True, "retry_after": 2.5})
        with pytest.raises(DeliveryError) as raised:
            await call(event)
    assert (raised.value.retryable, raised.value.retry_after) == (True, 2.5)


async def test_stuck_worker_pools_stop_together_on_close(tmp_path: Path) -> None:
    """Closing a mesh whose process functions are stuck in calls ends within one grace
    period: the pools stop together and the stuck workers are terminated."""
    markers = [tmp_path / f"hung{i}" for i in range(2)]
    specs = [
        {
            "name": f"stuck{i}",
            "trigger": {"topic": f"orders{i}"},
            "handler": "fn_isolation:hang_once",
            "isolation": "process",
        }
        for i in range(2)
    ]
    with anyio.fail_after(90):
        async with Mesh({"functions": specs}) as mesh:
            for i, marker in enumerate(markers):
                event = Event(type="t", source="/s", data={"marker": str(marker)})
                await mesh.publish(f"orders{i}", event)
            await eventually(lambda: all(m.exists() for m in markers), timeout=60)
            # Only the close is timed (the workers' cold start is not): one 10 s grace
            # in all, where stopping the pools one after the other takes 20.
            began = time.monotonic()
            await mesh.close(timeout=0.1)  # the calls still hang: the pools stop them
            took = time.monotonic() - began
    assert took < 17
    for marker in markers:
        assert not alive(int(marker.read_text(encoding="utf-8")))
