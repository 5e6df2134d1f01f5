"""`eventmesh run` loads the config's functions; `eventmesh functions` lists them."""

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

HERE = Path(__file__).resolve().parent

CONFIG = """
functions:
  - name: enrich
    trigger: {topic: orders}
    handler: "fn_workers:enrich"
    reply_to: orders.enriched
  - name: isolated
    trigger: {topic: orders}
    handler: "fn_workers:enrich"
    isolation: process
    reply_to: orders.isolated
"""


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the eventmesh CLI."""
    return subprocess.run(
        [sys.executable, "-m", "eventmesh.cli", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def test_run_loads_functions_and_the_cli_lists_them(tmp_path: Path) -> None:
    """A sidecar started from a config with functions runs them; /functions and
    'eventmesh functions' (JSON lines when piped) list them with their state."""
    config = tmp_path / "mesh.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    ports = ["--set", "server.http.port=0", "--set", "server.grpc.port=0",
             "--set", "server.admin.port=0"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventmesh.cli", "run", "-c", str(config), *ports],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        line = ""
        while "running" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            if not line and proc.poll() is not None:
                break
        record: dict[str, Any] = json.loads(line)
        assert "2 functions" in record["message"]
        admin = re.search(r"admin (http://\S+?);", record["message"])
        http = re.search(r"http (http://\S+?),", record["message"])
        assert admin is not None
        assert http is not None
        published = cli("publish", "orders", "--type", "t", "--source", "/cli", "--data",
                        '{"n": 1}', "--url", http.group(1), env=env)  # fmt: skip
        assert published.returncode == 0, published.stderr
        listed: list[dict[str, Any]] = []
        for _ in range(200):  # bounded: until both functions were invoked
            result = cli("functions", "--admin-url", admin.group(1), env=env)
            assert result.returncode == 0, result.stderr
            listed = [json.loads(x) for x in result.stdout.splitlines()]
            if all(f["invocations"] == 1 and f["state"] != "running" for f in listed):
                break
            time.sleep(0.1)
        by_name = {f["name"]: f for f in listed}
        assert by_name["enrich"]["kind"] == "thread"
        assert by_name["enrich"]["state"] == "idle"
        assert by_name["isolated"]["kind"] == "process"
        assert by_name["isolated"]["invocations"] == 1
        assert by_name["isolated"]["cold_starts"] == 1
        assert len(by_name["isolated"]["workers"]) == 1
        with urllib.request.urlopen(admin.group(1) + "/functions", timeout=10) as response:
            assert {f["name"] for f in json.load(response)["functions"]} == {"enrich", "isolated"}
        refused = cli("functions", "--admin-url", "http://127.0.0.1:9", env=env)
        assert refused.returncode == 1
        assert "cannot reach the admin API" in refused.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait(timeout=30)
