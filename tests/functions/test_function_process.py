"""Process isolation: a worker pool that starts on the first event and scales to zero."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fn_support import FAST, eventually, order, read

from eventmesh import ConfigError, Event, Function, Mesh
from eventmesh.functions.process import WorkerPool

pytestmark = [pytest.mark.anyio, pytest.mark.core]  # core: CI runs these on the core alone


def alive(pid: int) -> bool:
    """True while a process with this id exists (and is not a zombie of ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # the process may end, and its entry go, between the two looks
        return ") Z " not in Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


def process_function(handler: str, **extra: object) -> dict[str, object]:
    """A config with one process-isolated function on topic 'orders'."""
    spec = {
        "name": "worker",
        "trigger": {"topic": "orders", "delivery": FAST},
        "handler": handler,
        "isolation": "process",
        "reply_to": "out",
        **extra,
    }
    return {"functions": [spec]}


async def test_scale_to_zero_and_back() -> None:
    """The pool starts on the first event (a measured cold start), its worker is gone
    after the idle timeout, and the next event starts a new one."""
    async with Mesh(process_function("fn_workers:enrich", idle_timeout="300ms")) as mesh:
        runner = mesh.functions[0]
        assert runner.state == "cold"
        assert runner.stats.workers_alive == 0
        await mesh.publish("orders", order(1))
        (first,) = await read(mesh, "out", 1)
        pid = first.data["pid"]
        assert pid != os.getpid()
        assert runner.stats.cold_starts == 1
        assert runner.stats.last_cold_start is not None
        assert runner.stats.last_cold_start > 0
        assert runner.describe()["workers"] == [pid]
        await eventually(lambda: runner.state == "cold")
        await eventually(lambda: not alive(pid))
        await eventually(
            lambda: runner.stats.workers_alive == 0 and not runner.describe()["workers"]
        )
        await mesh.publish("orders", order(2))
        (second,) = await read(mesh, "out", 1)
        assert second.data == {"n": 2, "pid": second.data["pid"]}
        assert second.data["pid"] != pid
        assert runner.stats.cold_starts == 2
        new_pid = second.data["pid"]
    await eventually(lambda: not alive(new_pid))  # closing the mesh stops the workers


async def test_async_handlers_and_drop_run_in_workers() -> None:
    """An async handler in a worker returns a list of replies; Drop from a worker acks."""
    config = process_function("fn_workers:enrich_async")
    config["functions"].append(  # type: ignore[attr-defined]
        {
            "name": "dropper",
            "trigger": {"topic": "orders"},
            "handler": "fn_workers:drop",
            "isolation": "process",
        }
    )
    async with Mesh(config) as mesh:
        await mesh.publish("orders", order(1))
        replies = await read(mesh, "out", 2)
        dropper = mesh.functions[1]
        await eventually(lambda: dropper.stats.dropped == 1)
        assert dropper.stats.failures == 0
    assert sorted(r.type for r in replies) == ["a", "b"]


async def test_a_dead_worker_is_a_failed_invocation_that_is_retried(tmp_path: Path) -> None:
    """A worker that dies mid-invocation fails that invocation (retried under the policy)
    and a new worker handles the retry; the mesh is not hung."""
    marker = tmp_path / "died"
    async with Mesh(process_function("fn_workers:die_once")) as mesh:
        await mesh.publish("orders", Event(type="t", source="/s", data={"marker": str(marker)}))
        (reply,) = await read(mesh, "out", 1)
        stats = mesh.functions[0].stats
        assert stats.failures == 1
        assert stats.cold_starts == 2
    assert marker.read_text() == "died"
    assert reply.type == "survived"


async def test_batches_cross_to_workers() -> None:
    """A batched process function receives the list, encoded, in its worker."""
    config = process_function("fn_workers:total", batch={"max": 4, "window": "100ms"})
    async with Mesh(config) as mesh:
        await mesh.publish("orders", [order(i) for i in range(4)])
        sub = next(s for s in mesh.subscriptions if s.name == "function.worker")
        await eventually(lambda: sub.stats.delivered == 4)
        count = mesh.functions[0].stats.invocations
        replies = await read(mesh, "out", count)
    assert sum(r.data["sum"] for r in replies) == 0 + 1 + 2 + 3


async def test_a_pool_started_by_hand_reports_its_cold_start() -> None:
    """WorkerPool used on its own starts at the first run and stops on close."""
    async with WorkerPool("fn_workers:noop", name="noop", idle_timeout=60) as pool:  # no watch()
        assert pool.state == "cold"
        kind, _ = await pool.run(False, b'{"specversion":"1.0","id":"1","source":"/s","type":"t"}')
        assert kind == "none"
        assert pool.state == "warm"
        (pid,) = pool.pids
    await eventually(lambda: not alive(pid))


async def test_process_isolation_needs_an_importable_handler() -> None:
    """A process function declared with a local function, or a module that cannot be
    found, is refused with a ConfigError saying what to do."""

    def local(event: Event) -> None:
        pass

    with pytest.raises(ConfigError, match="module level"):
        async with Mesh(functions=[Function.declare(local, topic="t", isolation="process")]):
            pass
    with pytest.raises(ConfigError, match="cannot find module 'no_such_module'"):
        async with Mesh(process_function("no_such_module:f")):
            pass


@pytest.mark.parametrize("kind", ["exit", "interrupt", "cancelled"])
async def test_a_handler_raising_a_base_exception_is_a_failed_attempt(
    kind: str, tmp_path: Path
) -> None:
    """SystemExit, KeyboardInterrupt or CancelledError from a handler in a worker is a
    failed attempt like any error: retried, then replied to. Before, SystemExit and
    KeyboardInterrupt crossed into the mesh and ended it, and CancelledError read as the
    mesh's own cancellation, leaving the event unsettled and its lane gone."""
    async with Mesh(process_function("fn_workers:exit_once")) as mesh:
        data = {"marker": str(tmp_path / "marker"), "kind": kind}
        await mesh.publish("orders", Event(type="t", source="/s", data=data))
        (reply,) = await read(mesh, "out", 1)
        assert reply.data == {"kind": kind}
        runner = mesh.functions[0]
        assert runner.stats.failures == 1


async def test_a_process_timeout_counts_only_the_invocation_not_its_wait() -> None:
    """With one worker and several events at once, each invocation's timeout starts
    when the worker takes it: 0.4 s calls under a 1 s timeout all succeed. Before, calls
    waiting behind others in the executor timed out, recycled the pool and ended in the
    dead-letter topic although none ran for a second."""
    config = process_function("fn_workers:slow", timeout="1s", workers=1)
    async with Mesh(config) as mesh:
        await mesh.publish("orders", [order(n) for n in range(6)])
        replies = await read(mesh, "out", 6, timeout=30)
        runner = mesh.functions[0]
        assert sorted(r.data["n"] for r in replies) == list(range(6))
        assert runner.stats.timeouts == 0


async def test_a_worker_that_ignores_sigterm_is_killed_when_the_mesh_closes(
    tmp_path: Path,
) -> None:
    """A hung worker that ignores SIGTERM is killed (SIGKILL) when its pool stops,
    rather than outliving the mesh (and holding up the interpreter's exit)."""
    marker = tmp_path / "pid"
    async with Mesh(process_function("fn_workers:ignore_sigterm_and_hang")) as mesh:
        await mesh.publish("orders", Event(type="t", source="/s", data={"marker": str(marker)}))
        await eventually(lambda: marker.exists() and marker.read_text() != "")
        pid = int(marker.read_text())
        assert alive(pid)
        await mesh.close(timeout=0.5)  # the invocation is given up after half a second
    await eventually(lambda: not alive(pid))


@pytest.mark.parametrize("handler", ["exit_always", "exit_always_async"])
async def test_a_handler_calling_sys_exit_in_the_mesh_process_is_a_failed_attempt(
    handler: str,
) -> None:
    """A plain function (in a thread, or on the loop) that calls sys.exit fails its
    attempts and its event is dead-lettered; the mesh goes on. Before, the SystemExit
    was raised again in the mesh's task and ended the mesh."""
    spec = {
        "name": "quitter",
        "trigger": {"topic": "orders", "delivery": FAST},
        "handler": f"fn_workers:{handler}",
    }
    async with Mesh({"functions": [spec]}) as mesh:
        await mesh.publish("orders", order(1))
        (dead,) = await read(mesh, "orders.dlq", 1)
        assert dead.data == {"n": 1}
        assert mesh.functions[0].stats.failures == FAST["max_attempts"]
