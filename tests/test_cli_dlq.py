"""'eventmesh dlq list|show|replay' against a running sidecar, as a user runs them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The eventmesh CLI in a subprocess (its output piped: JSON lines)."""
    return subprocess.run(
        [sys.executable, "-m", "eventmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def sidecar_url() -> Iterator[str]:
    """'eventmesh run' on free ports; its HTTP address."""
    free = ["--set", "server.http.port=0", "--set", "server.grpc.port=0"]
    free += ["--set", "server.admin.port=0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventmesh.cli", "run", *free],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        line = ""
        while "running" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            if not line and proc.poll() is not None:
                break
        found = re.search(r"http (http://\S+?),", line)
        assert found is not None, line
        yield found.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            proc.kill()
            proc.wait()


def lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_list_show_and_replay_a_dead_letter_topic(sidecar_url: str) -> None:
    """list prints one JSON object per stored event, show finds one by id, replay
    republishes once (a dry run publishes nothing), and mistakes exit non-zero saying
    what was wrong."""
    url = ["--url", sidecar_url]
    for n, reason in enumerate(("failed", "expired")):
        published = run(
            "publish", "orders.dlq", "--type", "t", "--source", "/shop", "--id", f"dead-{n}",
            "--ext", f"deadletterreason={reason}", "--ext", "deadlettertopic=orders",
            "--ext", "deadlettergroup=billing", *url,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr

    listed = lines(run("dlq", "list", "orders.dlq", *url))
    assert [item["event"]["id"] for item in listed] == ["dead-0", "dead-1"]
    assert {"partition", "offset", "timestamp"} <= set(listed[0])
    assert len(lines(run("dlq", "list", "orders.dlq", "--limit", "1", *url))) == 1

    [shown] = lines(run("dlq", "show", "orders.dlq", "dead-1", *url))
    assert shown["event"]["deadletterreason"] == "expired"
    missing = run("dlq", "show", "orders.dlq", "nope", *url)
    assert missing.returncode == 1
    assert "eventmesh dlq: no event with id 'nope'" in missing.stderr

    [dry] = lines(run("dlq", "replay", "orders.dlq", "--dry-run", *url))
    assert (dry["replayed"], dry["dry_run"]) == (2, True)
    assert lines(run("dlq", "list", "orders", *url)) == []

    [done] = lines(run("dlq", "replay", "orders.dlq", "--reason", "failed", *url))
    assert (done["replayed"], done["ids"]) == (1, ["dead-0"])
    [again] = lines(run("dlq", "replay", "orders.dlq", "--reason", "failed", *url))
    assert (again["replayed"], again["skipped"]) == (0, 1)
    [replayed] = lines(run("dlq", "list", "orders", *url))
    assert replayed["event"]["id"] == "dead-0"
    assert not [k for k in replayed["event"] if k.startswith("deadletter")]

    bad = run("dlq", "replay", "orders.dlq", "--since", "yesterday", *url)
    assert bad.returncode == 2
    assert "RFC 3339" in bad.stderr
