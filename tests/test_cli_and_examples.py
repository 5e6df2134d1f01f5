"""The eventmesh command and the examples, run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
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


def start_sidecar(
    *extra: str, cwd: Path | None = None
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """'eventmesh run' on free ports; returns the process and its 'running' log record."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventmesh.cli", "run", *FREE_PORTS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
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


def example_config_beside_its_module(tmp_path: Path) -> Path:
    """The mesh.yaml that examples/functions_enrich.py's docstring shows, written next to
    a copy of the module in a folder that is not the working directory."""
    source = (ROOT / "examples" / "functions_enrich.py").read_text(encoding="utf-8")
    block = source.split("mesh.yaml::\n\n", 1)[1].split('\n"""', 1)[0]
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "functions_enrich.py").write_text(source, encoding="utf-8")
    config = folder / "mesh.yaml"
    config.write_text(textwrap.dedent(block), encoding="utf-8")
    return config


def test_the_functions_examples_yaml_imports_its_handler_from_beside_the_config(
    tmp_path: Path,
) -> None:
    """'check-config' and 'run' of the example's YAML, from another folder, import the
    handler module that sits next to the config file."""
    config = example_config_beside_its_module(tmp_path)
    checked = run("check-config", str(config), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "1 functions" in checked.stdout
    proc, record = start_sidecar("-c", str(config), cwd=tmp_path)
    try:
        assert "1 functions" in record["message"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


def test_check_config_fails_as_run_would_on_a_handler_that_does_not_import(
    tmp_path: Path,
) -> None:
    """A subscription or function handler that cannot be imported makes 'check-config'
    exit 2 with its key, its line and the import error, as 'run' fails to start."""
    config = tmp_path / "mesh.yaml"
    config.write_text(
        "subscriptions:\n"
        "  - name: billing\n"
        "    topic: orders\n"
        '    sink: {handler: "nosuchmodule:handle"}\n',
        encoding="utf-8",
    )
    checked = run("check-config", str(config))
    assert checked.returncode == 2
    assert "line 4: subscriptions[0].sink.handler:" in checked.stderr
    assert "No module named 'nosuchmodule'" in checked.stderr
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    config.write_text(
        'functions:\n  - {name: f, trigger: {topic: t}, handler: "broken:handle"}\n',
        encoding="utf-8",
    )
    checked = run("check-config", str(config))
    assert checked.returncode == 2
    assert "line 2: functions[0].handler:" in checked.stderr
    assert "boom at import" in checked.stderr
    assert "Traceback" not in checked.stderr
