"""The eventmesh command and the examples, run as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run the eventmesh CLI in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "eventmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kw,  # type: ignore[call-overload]
    )


def test_version_prints_the_version() -> None:
    """'eventmesh version' prints the package version."""
    import eventmesh

    assert run("version").stdout.strip() == f"eventmesh {eventmesh.__version__}"


def test_check_config_reports_the_line(tmp_path: Path) -> None:
    """'check-config' exits 2 with the key and line of a mistake, 0 for a good file."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("connectors:\n  default: {type: memory, partitons: 3}\n", encoding="utf-8")
    result = run("check-config", str(bad))
    assert result.returncode == 2
    assert "line 2: connectors.default.partitons: unknown key" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text("connectors:\n  default: {type: memory, partitions: 3}\n", encoding="utf-8")
    assert run("check-config", str(good)).returncode == 0


def test_run_stops_cleanly_on_sigterm() -> None:
    """'eventmesh run' starts an in-memory mesh and exits 0 on SIGTERM, logging JSON."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventmesh.cli", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        line = ""
        while "running" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
        assert '"message":"eventmesh' in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


def test_embedded_example_runs() -> None:
    """examples/embedded_pubsub.py runs to completion and bills every order."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embedded_pubsub.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"},
    )
    assert result.returncode == 0, result.stderr
    assert "billed orders: [1, 2, 3]" in result.stdout
    assert result.stdout.count("audit saw") == 3
