"""A program that starts a mesh with a process function and no ``__main__`` guard is
told so, instead of hanging: the spawned worker, which imports the program's main
module, refuses to start a second mesh there."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eventmesh import LifecycleError
from eventmesh.functions.process import check_not_bootstrapping

_PROGRAM = textwrap.dedent(
    """
    import anyio
    from eventmesh import Event, Mesh

    mesh = Mesh()


    @mesh.function(topic="orders", isolation="process", delivery={"max_attempts": 1})
    def enrich(event: Event) -> None:
        pass


    async def main() -> None:
        async with mesh, mesh.subscribe("orders.dlq", "ops", start="earliest") as dead:
            await mesh.publish("orders", Event(type="order", source="/shop", data=1))
            with anyio.fail_after(60):
                async for delivery in dead:
                    print("DEAD", delivery.event.extensions["deadlettererror"], flush=True)
                    await delivery.ack()
                    break


    anyio.run(main)
    """
)


def test_a_program_without_the_main_guard_is_told_to_add_it(tmp_path: Path) -> None:
    """The worker's start fails with a LifecycleError naming the guard (on stderr), and
    the event's dead letter says the worker exited while starting and why it may have.
    Without the check the worker ran a second mesh, whose own function could not spawn,
    and the program's first invocation waited for it."""
    script = tmp_path / "noguard.py"
    script.write_text(_PROGRAM)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert "LifecycleError: a Mesh was started while this worker process" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("DEAD")]
    assert "exited while starting" in line
    assert 'if __name__ == "__main__":' in line


def test_the_check_passes_outside_a_worker_start() -> None:
    """In a program's own process (and in a started worker) a mesh may start."""
    check_not_bootstrapping("a Mesh")


def test_the_check_names_what_was_started(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(LifecycleError, match=r"a Mesh was started .*docs/functions\.md"):
        check_not_bootstrapping("a Mesh")


def _process_examples() -> list[str]:
    text = (Path(__file__).parents[2] / "docs" / "functions.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return [b for b in blocks if "isolation=" in b and '"process"' in b]


def test_every_process_example_in_the_docs_has_the_guard_and_runs(tmp_path: Path) -> None:
    """docs/functions.md shows the guard in each process example, and the example runs."""
    examples = _process_examples()
    assert examples
    for n, example in enumerate(examples):
        assert 'if __name__ == "__main__":' in example
        script = tmp_path / f"example{n}.py"
        script.write_text(example)
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert "order.enriched 7" in done.stdout
