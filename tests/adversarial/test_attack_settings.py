"""Numbers and headers a client sets on a subscription: out-of-range delivery settings
and unsafe webhook headers are refused at creation with a 400 naming the key, before
the sidecar allocates anything for them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from adversary import Sidecar

pytestmark = pytest.mark.anyio

SINK = "http://127.0.0.1:9/events"  # loopback, allowed; never called (creation fails)

OUT_OF_RANGE: dict[str, tuple[str, dict[str, Any]]] = {
    "delivery.concurrency 1000000": (
        "concurrency",
        {"sink": SINK, "delivery": {"concurrency": 1_000_000}},
    ),
    "delivery.prefetch 10^9": ("prefetch", {"delivery": {"prefetch": 10**9}}),
    "delivery.max_attempts 10^12": ("max_attempts", {"delivery": {"max_attempts": 10**12}}),
    "delivery.backoff.max 1e308": ("max", {"delivery": {"backoff": {"max": 1e308}}}),
    "protocolsettings.timeout 1e308": (
        "timeout",
        {"sink": SINK, "protocolsettings": {"timeout": 1e308}},
    ),
    "protocolsettings.max_batch 10^9": (
        "max_batch",
        {"sink": SINK, "protocolsettings": {"mode": "batch", "max_batch": 10**9}},
    ),
    "ack_deadline 1e308": ("ack_deadline", {"ack_deadline": 1e308}),
}


async def test_out_of_range_delivery_settings_are_refused(sidecar: Sidecar) -> None:
    """concurrency 1e6, timeouts of 1e308 s, batches of 1e9 and the like: each is a 400
    ConfigError naming its key, answered at once with memory flat."""
    wrong: list[str] = []
    with sidecar.watch() as watch:
        for n, (case, (key, fields)) in enumerate(sorted(OUT_OF_RANGE.items())):
            answer = await sidecar.subscribe("t", f"range-{n}", **fields)
            if answer.status != 400 or answer.type != "ConfigError" or key not in str(answer.body):
                wrong.append(f"{case}: {answer!r}")
    watch.check()
    assert not wrong, "accepted or wrongly refused:\n" + "\n".join(wrong)
    await sidecar.assert_serves()


async def test_webhook_with_userinfo_and_authorization_is_refused(sidecar: Sidecar) -> None:
    """A sink URL with user:password@ and an Authorization header as well is a 400: which
    credential would be sent is not the client's guess to make."""
    answer = await sidecar.subscribe(
        "t",
        "both-credentials",
        sink="http://user:secret@127.0.0.1:9/events",
        protocolsettings={"headers": {"Authorization": "Bearer token"}},
    )
    assert answer.status == 400, answer
    assert answer.type == "ConfigError", answer
    await sidecar.assert_serves()


@pytest.mark.parametrize(
    "header",
    [
        {"X-Tenant": "acme\r\nX-Injected: 1"},
        {"X-Tenant": "acme\nX-Injected: 1"},
        {"X-Tenant": "acme\r"},
        {"X-Bad\r\nName": "v"},
    ],
    ids=["crlf-value", "lf-value", "cr-value", "crlf-name"],
)
async def test_webhook_header_with_cr_or_lf_is_refused(
    sidecar: Sidecar, header: dict[str, str]
) -> None:
    """A webhook header name or value holding CR or LF (request splitting) is a 400 at
    creation, not an error at every delivery."""
    answer = await sidecar.subscribe("t", "crlf", sink=SINK, protocolsettings={"headers": header})
    assert answer.status == 400, answer
    assert answer.type == "ConfigError", answer
    assert "headers" in str(answer.body), answer
    await sidecar.assert_serves()


def test_config_webhook_with_userinfo_and_authorization_fails_check_config(
    tmp_path: Path,
) -> None:
    """The same webhook in the config file fails 'eventmesh check-config' (load time)."""
    path = tmp_path / "mesh.yaml"
    config = {
        "subscriptions": [
            {
                "name": "billing",
                "topic": "orders",
                "sink": {
                    "webhook": "http://user:secret@127.0.0.1:9/events",
                    "headers": {"Authorization": "Bearer token"},
                },
            }
        ]
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "eventmesh.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "subscriptions[0].sink" in result.stderr, result.stderr
