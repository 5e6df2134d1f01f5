"""The eventmesh command and the examples, run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

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


FREE_PORTS = [
    "--set",
    "server.http.port=0",
    "--set",
    "server.grpc.port=0",
    "--set",
    "server.admin.port=0",
]


def start_sidecar(*extra: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """'eventmesh run' on free ports; returns the process and its 'running' log record."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventmesh.cli", "run", *FREE_PORTS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    line = ""
    while "running" not in line and time.monotonic() < deadline:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        if not line and proc.poll() is not None:
            break
    assert '"message":"eventmesh' in line, line
    record: dict[str, Any] = json.loads(line)
    return proc, record


def test_run_serves_and_stops_cleanly_on_sigterm() -> None:
    """'eventmesh run' logs its addresses as JSON, answers /healthz, and exits 0 on
    SIGTERM."""
    proc, record = start_sidecar()
    try:
        admin = re.search(r"admin (http://\S+?);", record["message"])
        assert admin is not None
        with urllib.request.urlopen(admin.group(1) + "/healthz", timeout=10) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


def test_publish_and_subscribe_commands_talk_to_a_running_sidecar() -> None:
    """'eventmesh publish' stores an event that 'eventmesh subscribe' prints as a JSON
    line when piped."""
    proc, record = start_sidecar()
    try:
        http = re.search(r"http (http://\S+?),", record["message"])
        assert http is not None
        url = http.group(1)
        published = run(
            "publish", "orders", "--type", "order.created", "--source", "/cli",
            "--data", '{"n": 7}', "--key", "k1", "--url", url,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
        event_id = published.stdout.strip()
        watched = run("subscribe", "orders", "--start", "earliest", "--count", "1", "--url", url)
        assert watched.returncode == 0, watched.stderr
        event = json.loads(watched.stdout.strip())
        assert (event["id"], event["type"], event["data"]) == (event_id, "order.created", {"n": 7})
        assert event["partitionkey"] == "k1"
        refused = run(
            "publish", "orders", "--type", "t", "--source", "s", "--url", "http://127.0.0.1:9"
        )
        assert refused.returncode == 1
        assert "eventmesh publish:" in refused.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
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


def test_functions_example_runs() -> None:
    """examples/functions_enrich.py enriches each real order onto the reply topic and
    drops the test order."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "functions_enrich.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"},
    )
    assert result.returncode == 0, result.stderr
    assert "enriched order 1: tier gold (caused by order 1)" in result.stdout
    assert "enriched order 4: tier standard (caused by order 4)" in result.stdout
    assert "enrich: 4 invocations, 3 replies, 1 dropped" in result.stdout
