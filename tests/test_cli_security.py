"""The eventmesh command's credentials: ``--token`` / ``EVENTMESH_TOKEN`` on every
command that talks to a sidecar, ``--ca-file`` (and mTLS files) for ``https://`` and
``grpcs://``, and a refusal told in one line."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web

import eventmesh
from eventmesh.config import HttpListener
from eventmesh.server.http import create_app
from eventmesh.server.sidecar import Sidecar
from eventmesh.server.subscriptions import Registry
from eventmesh.testing.certs import CertAuthority

pytestmark = pytest.mark.anyio

TOKEN = "cli-0123456789-s3cr3t"


async def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``eventmesh ARGS`` in a subprocess with no EVENTMESH_* variables but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVENTMESH")}
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "eventmesh.cli", *args], env={**clean, **env}, check=False
        )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


Seen = list[tuple[str, str, str | None]]


@asynccontextmanager
async def recording(app: web.Application) -> AsyncIterator[tuple[str, Seen]]:
    """``app`` on 127.0.0.1, recording (method, path, Authorization) of each request."""
    seen: Seen = []

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        seen.append((request.method, request.path, request.headers.get("Authorization")))

    app.on_response_prepare.append(record)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


async def test_every_command_that_talks_to_a_sidecar_sends_the_token() -> None:
    """publish (--token, or EVENTMESH_TOKEN), subscribe and functions send 'Authorization:
    Bearer <token>' on each request; --help names --token and never shows its value."""
    admin = web.Application()

    async def functions(request: web.Request) -> web.Response:
        return web.json_response({"functions": []})

    admin.router.add_get("/functions", functions)
    async with (
        eventmesh.Mesh() as mesh,
        Registry(mesh) as registry,
        recording(create_app(mesh, registry, HttpListener())) as (url, seen),
        recording(admin) as (admin_url, admin_seen),
    ):
        event = ["orders", "--type", "t", "--source", "/cli", "--url", url]
        by_flag = await cli("publish", *event, "--token", TOKEN)
        by_env = await cli("publish", *event, EVENTMESH_TOKEN=TOKEN)
        assert (by_flag.returncode, by_env.returncode) == (0, 0), by_flag.stderr + by_env.stderr
        watched = await cli(
            "subscribe", "orders", "--start", "earliest", "--count", "2", "--url", url,
            EVENTMESH_TOKEN=TOKEN,
        )  # fmt: skip
        assert watched.returncode == 0, watched.stderr
        ids = [msgspec.json.decode(line)["id"] for line in watched.stdout.splitlines()]
        assert sorted(ids) == sorted([by_flag.stdout.strip(), by_env.stdout.strip()])
        listed = await cli("functions", "--admin-url", admin_url, "--token", TOKEN)
        assert listed.returncode == 0, listed.stderr
        helped = await cli("publish", "--help", EVENTMESH_TOKEN=TOKEN)
        await registry.close()  # ends the long polls the runner would wait for
    methods = {method for method, _, _ in seen}
    assert methods == {"POST", "GET", "DELETE"}  # publish, subscribe, poll, ack, leave
    assert {auth for _, _, auth in seen + admin_seen} == {f"Bearer {TOKEN}"}
    assert admin_seen
    assert "--token" in helped.stdout
    assert TOKEN not in helped.stdout


def tls_sidecar(ca: CertAuthority, **extra: Any) -> dict[str, Any]:
    """A sidecar config with TLS on the HTTP and gRPC listeners, certificates from ``ca``."""
    issued = ca.issue("sidecar")
    tls = {"cert_file": str(issued.cert_file), "key_file": str(issued.key_file)}
    return {
        "server": {
            "http": {"port": 0, "tls": tls},
            "grpc": {"port": 0, "tls": tls},
            "admin": {"port": 0},
        },
        "logging": {"enabled": False},
        **extra,
    }


async def test_the_cli_speaks_https_and_grpcs_with_a_ca_file(tmp_path: Path) -> None:
    """--ca-file (or EVENTMESH_CA_FILE) lets publish and subscribe use https:// and
    grpcs://; without the CA the command fails in one line that says to pass it."""
    ca = CertAuthority(tmp_path)
    async with Sidecar(tls_sidecar(ca)) as sidecar:
        https, grpcs = sidecar.http_url, f"grpcs://{sidecar.grpc_target}"
        event = ["orders", "--type", "t", "--source", "/cli"]
        one = await cli("publish", *event, "--url", https, "--ca-file", str(ca.cert_file))
        two = await cli("publish", *event, "--url", grpcs, EVENTMESH_CA_FILE=str(ca.cert_file))
        assert (one.returncode, two.returncode) == (0, 0), one.stderr + two.stderr
        watched = await cli(
            "subscribe", "orders", "--start", "earliest", "--count", "2",
            EVENTMESH_URL=https, EVENTMESH_CA_FILE=str(ca.cert_file),
        )  # fmt: skip
        assert watched.returncode == 0, watched.stderr
        ids = [msgspec.json.decode(line)["id"] for line in watched.stdout.splitlines()]
        assert sorted(ids) == sorted([one.stdout.strip(), two.stdout.strip()])
        refused = await cli("publish", *event, "--url", https)
    assert refused.returncode == 1
    assert refused.stderr.startswith("eventmesh publish: ")
    assert refused.stderr.count("\n") == 1
    assert "ca_file" in refused.stderr


def guarded() -> dict[str, Any]:
    """A sidecar that checks tokens: billing may publish and subscribe on orders in
    groups billing*, ops may use the admin port."""
    digest = {name: hashlib.sha256(token.encode()).hexdigest() for name, token in TOKENS.items()}
    return {
        "server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}},
        "logging": {"enabled": False},
        "auth": {"tokens": [{"principal": name, "sha256": d} for name, d in digest.items()]},
        "acl": [
            {
                "principal": "billing",
                "allow": ["publish", "subscribe"],
                "topics": ["orders"],
                "groups": ["billing*"],
            },
            {"principal": "ops", "allow": ["admin"]},
        ],
    }


TOKENS = {"billing": TOKEN, "ops": "ops-0123456789-s3cr3t"}


def refused_in_one_line(done: subprocess.CompletedProcess[str], command: str) -> str:
    """The one line a refused command printed (exit status 1, no traceback)."""
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"eventmesh {command}: ")
    assert done.stderr.count("\n") == 1, done.stderr
    return done.stderr


async def test_a_sidecar_with_auth_takes_the_cli_token_and_refuses_without_it() -> None:
    """Against a sidecar that checks tokens, publish, subscribe and functions work with
    --token or EVENTMESH_TOKEN, over HTTP and gRPC; without a token, or with one that
    lacks the grant, they fail with one line and status 1, never showing the token."""
    async with Sidecar(guarded()) as sidecar:
        http, grpc_url = sidecar.http_url, f"grpc://{sidecar.grpc_target}"
        event = ["orders", "--type", "t", "--source", "/cli"]
        one = await cli("publish", *event, "--url", http, "--token", TOKEN)
        two = await cli("publish", *event, "--url", grpc_url, EVENTMESH_TOKEN=TOKEN)
        assert (one.returncode, two.returncode) == (0, 0), one.stderr + two.stderr
        watched = await cli(
            "subscribe", "orders", "--group", "billing-cli", "--start", "earliest",
            "--count", "2", "--url", http, EVENTMESH_TOKEN=TOKEN,
        )  # fmt: skip
        assert watched.returncode == 0, watched.stderr
        ids = [msgspec.json.decode(line)["id"] for line in watched.stdout.splitlines()]
        assert sorted(ids) == sorted([one.stdout.strip(), two.stdout.strip()])
        listed = await cli("functions", "--admin-url", sidecar.admin_url, "--token", TOKENS["ops"])
        assert listed.returncode == 0, listed.stderr
        lines = [
            refused_in_one_line(await cli("publish", *event, "--url", url), "publish")
            for url in (http, grpc_url)
        ]
        lines.append(
            refused_in_one_line(
                await cli("subscribe", "orders", "--url", http, "--token", TOKEN), "subscribe"
            )  # the default group, eventmesh-cli, is not billing's
        )
        lines.append(
            refused_in_one_line(
                await cli("functions", "--admin-url", sidecar.admin_url, "--token", TOKEN),
                "functions",
            )
        )
    assert "Authorization: Bearer" in lines[0]  # says what was missing
    assert all(TOKEN not in line for line in lines)
