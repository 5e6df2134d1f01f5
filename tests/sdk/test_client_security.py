"""The remote SDK's credentials: a bearer token on every HTTP request and gRPC call,
``https://`` and ``grpcs://`` (with mTLS) against a real sidecar, and a token that no
repr, log line or error message shows."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import grpc
import grpc.aio
import pytest
from aiohttp import web

import eventmesh
from eventmesh import Event
from eventmesh._client import Client
from eventmesh.client.grpc import GrpcClient
from eventmesh.client.http import HttpClient
from eventmesh.config import HttpListener
from eventmesh.errors import (
    ConfigError,
    ConnectError,
    PermissionDeniedError,
    PublishError,
    UnauthenticatedError,
)
from eventmesh.server.grpc import add_to_server
from eventmesh.server.http import create_app
from eventmesh.server.sidecar import Sidecar
from eventmesh.server.subscriptions import Registry
from eventmesh.testing.certs import CertAuthority

pytestmark = pytest.mark.anyio

TOKEN = "billing-0123456789-s3cr3t"


async def roundtrip(client: Client, topic: str = "orders", group: str = "billing-1") -> None:
    """Subscribe, publish one event and one batch, and receive all three (after what
    the topic held before)."""
    sent = [Event(type="order.created", source="/shop", data={"n": n}) for n in range(3)]
    missing = {event.id for event in sent}
    with anyio.fail_after(10):
        async with client.subscribe(topic, group, start="earliest") as sub:
            await client.publish(topic, sent[0])
            await client.publish(topic, sent[1:])
            async for delivery in sub:
                missing.discard(delivery.event.id)
                await delivery.ack()
                if not missing:
                    break
    assert not missing


# -- the token travels on every request ---------------------------------------------------------


@asynccontextmanager
async def recording_http() -> AsyncIterator[tuple[str, list[tuple[str, str, str | None]]]]:
    """The sidecar's HTTP API on 127.0.0.1, recording (method, path, Authorization) of
    every request it answers."""
    seen: list[tuple[str, str, str | None]] = []

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        seen.append((request.method, request.path, request.headers.get("Authorization")))

    async with eventmesh.Mesh() as mesh, Registry(mesh) as registry:
        app = create_app(mesh, registry, HttpListener())
        app.on_response_prepare.append(record)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            yield f"http://{host}:{port}", seen
        finally:
            await registry.close()
            await runner.cleanup()


async def test_http_sends_the_token_on_every_request() -> None:
    """Publish (one and a batch), create, long-poll, ack, nack and delete a subscription:
    each request carries 'Authorization: Bearer <token>'."""
    async with recording_http() as (url, seen), eventmesh.connect(url, token=TOKEN) as client:
        await roundtrip(client)
        async with client.subscribe("orders", "again", start="earliest") as sub:
            with anyio.fail_after(10):
                async for delivery in sub:
                    await delivery.nack()
                    break
    kinds = {(method, path.rsplit("/", 1)[-1] if "/subscriptions/" in path else path)
             for method, path, _ in seen}  # fmt: skip
    assert kinds >= {
        ("POST", "/topics/orders/events"),
        ("POST", "/subscriptions"),
        ("GET", "events"),
        ("POST", "ack"),
        ("POST", "nack"),
    }
    assert any(method == "DELETE" for method, _, _ in seen)
    assert {auth for _, _, auth in seen} == {f"Bearer {TOKEN}"}


async def test_the_blocking_facade_passes_the_credentials_on() -> None:
    """connect_blocking(url, token=...) sends the token as connect() does."""
    async with recording_http() as (url, seen):

        def publish() -> None:
            with eventmesh.connect_blocking(url, token=TOKEN) as client:
                client.publish("orders", Event(type="t", source="/s"))

        await anyio.to_thread.run_sync(publish)
    assert seen == [("POST", "/topics/orders/events", f"Bearer {TOKEN}")]


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]  # generic in the stubs only
else:
    _Interceptor = grpc.aio.ServerInterceptor


class _Recorder(_Interceptor):
    """Records the method and the metadata of every call the server receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.calls.append((details.method, dict(details.invocation_metadata or ())))
        return await continuation(details)


async def test_grpc_sends_the_token_on_every_call_and_stream() -> None:
    """Publish, PublishBatch and the Subscribe stream each carry 'authorization: Bearer
    <token>' metadata."""
    recorder = _Recorder()
    async with eventmesh.Mesh() as mesh:
        server = grpc.aio.server(interceptors=[recorder])
        add_to_server(server, mesh)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with eventmesh.connect(f"grpc://127.0.0.1:{port}", token=TOKEN) as client:
                await roundtrip(client)
        finally:
            await server.stop(grace=None)
    methods = {method.rsplit("/", 1)[-1] for method, _ in recorder.calls}
    assert methods == {"Publish", "PublishBatch", "Subscribe"}
    assert {md.get("authorization") for _, md in recorder.calls} == {f"Bearer {TOKEN}"}


# -- the token never shows -----------------------------------------------------------------------


def test_a_token_sent_in_clear_text_beyond_loopback_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """http:// and grpc:// with a token to another host log one warning that names the
    host, never the token; loopback, TLS and no token log nothing."""
    caplog.set_level(logging.DEBUG)
    quiet = [
        HttpClient("http://127.0.0.1:10105", token=TOKEN),
        HttpClient("http://localhost:10105", token=TOKEN),
        HttpClient("http://[::1]:10105", token=TOKEN),
        HttpClient("https://192.0.2.10:10105", token=TOKEN),
        HttpClient("http://192.0.2.10:10105"),
        GrpcClient("grpc://127.0.0.1:10205", token=TOKEN),
        GrpcClient("grpcs://192.0.2.10:10205", token=TOKEN),
    ]
    assert [r.getMessage() for r in caplog.records] == []
    loud = [
        HttpClient("http://192.0.2.10:10105", token=TOKEN),
        GrpcClient("grpc://192.0.2.10:10205", token=TOKEN),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(loud)
    assert all("clear text" in w and "192.0.2.10" in w for w in warnings)
    for client in quiet + loud:
        assert TOKEN not in repr(client)
    assert TOKEN not in caplog.text


def test_credentials_are_checked_when_the_client_is_made(tmp_path: Path) -> None:
    """Bad credentials are a ConfigError from connect(), whose message never holds the
    token or a password: for an embedded mesh, a plain address with TLS files, a key
    without its certificate, a missing file, a token that cannot be a header, or a
    password in the address."""
    ca = CertAuthority(tmp_path)
    cases: list[tuple[str | None, dict[str, Any], str]] = [
        (None, {"token": TOKEN}, "token= is only for a sidecar address"),
        ("http://127.0.0.1:1", {"ca_file": ca.cert_file}, "ca_file applies to TLS addresses"),
        ("grpc://127.0.0.1:1", {"cert_file": ca.cert_file}, "cert_file applies to TLS"),
        ("https://127.0.0.1:1", {"key_file": ca.cert_file}, "key_file needs cert_file"),
        ("grpcs://127.0.0.1:1", {"ca_file": tmp_path / "none.pem"}, "ca_file '"),
        ("https://127.0.0.1:1", {"token": TOKEN + "\nX-Evil: 1"}, "without spaces, line breaks"),
        ("grpc://127.0.0.1:1", {"token": f"Bearer {TOKEN}"}, "without 'Bearer '"),
        ("http://billing:hunter2@127.0.0.1:1", {}, "carries a user or password"),
    ]
    for target, options, expected in cases:
        with pytest.raises(ConfigError) as caught:
            eventmesh.connect(target, **options)
        message = str(caught.value)
        assert expected in message, (target, options, message)
        assert TOKEN not in message
        assert "hunter2" not in message


# -- TLS and mTLS against a sidecar ---------------------------------------------------------------


def tls_sidecar(ca: CertAuthority, *, mutual: bool = False) -> dict[str, Any]:
    """A sidecar config whose HTTP and gRPC listeners serve TLS with a certificate of
    ``ca`` (and require a client certificate of ``ca`` when ``mutual``)."""
    issued = ca.issue("sidecar")
    tls = {"cert_file": str(issued.cert_file), "key_file": str(issued.key_file)}
    if mutual:
        tls["client_ca_file"] = str(ca.cert_file)
    return {
        "server": {
            "http": {"port": 0, "tls": tls},
            "grpc": {"port": 0, "tls": tls},
            "admin": {"port": 0},
        },
        "logging": {"enabled": False},
    }


async def test_https_and_grpcs_reach_a_sidecar_that_serves_tls(tmp_path: Path) -> None:
    """With the CA that signed the sidecar's certificate, https:// and grpcs:// publish
    and subscribe; without it the certificate is refused with a ConnectError that says
    to pass ca_file."""
    ca = CertAuthority(tmp_path / "ca")
    other = CertAuthority(tmp_path / "other")
    async with Sidecar(tls_sidecar(ca)) as sidecar:
        assert sidecar.http_url.startswith("https://")
        grpcs = f"grpcs://{sidecar.grpc_target}"
        for target in (sidecar.http_url, grpcs):
            async with eventmesh.connect(target, ca_file=ca.cert_file) as client:
                await roundtrip(client, group=f"g-{target[:5]}")
        async with HttpClient(sidecar.http_url, ca_file=other.cert_file) as untrusting:
            with pytest.raises(ConnectError, match=r"does not trust.*ca_file"):
                await untrusting.publish("orders", Event(type="t", source="/s"))
        with pytest.raises(ConnectError, match="TLS"):
            async with GrpcClient(grpcs, ca_file=other.cert_file, connect_timeout=1):
                pass


async def test_mtls_needs_the_client_certificate(tmp_path: Path) -> None:
    """A sidecar that requires client certificates serves clients that pass cert_file and
    key_file, over https:// and grpcs://, and turns away those that do not."""
    ca = CertAuthority(tmp_path / "ca")
    mine = ca.issue("billing", client=True)
    async with Sidecar(tls_sidecar(ca, mutual=True)) as sidecar:
        grpcs = f"grpcs://{sidecar.grpc_target}"
        for target in (sidecar.http_url, grpcs):
            async with eventmesh.connect(
                target, ca_file=ca.cert_file, cert_file=mine.cert_file, key_file=mine.key_file
            ) as client:
                await roundtrip(client, group=f"g-{target[:5]}")
        event = Event(type="t", source="/s")
        with pytest.raises((ConnectError, PublishError)):
            async with HttpClient(sidecar.http_url, ca_file=ca.cert_file) as client:
                await client.publish("orders", event)
        with pytest.raises(ConnectError):
            async with GrpcClient(grpcs, ca_file=ca.cert_file, connect_timeout=1) as client:
                await client.publish("orders", event)


# -- against a sidecar that checks tokens and the ACL ---------------------------------------------

INTRUDER = "intruder-0123456789-s3cr3t"
WRONG = "wrong-0123456789-s3cr3t"


def guarded(ca: CertAuthority | None = None) -> dict[str, Any]:
    """A sidecar config with two tokens: billing, which may publish and subscribe on
    orders* in groups billing*, and intruder, which no rule grants anything; with ``ca``,
    TLS on the HTTP and gRPC listeners."""
    config = tls_sidecar(ca) if ca is not None else {
        "server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}},
        "logging": {"enabled": False},
    }  # fmt: skip
    config["auth"] = {
        "tokens": [
            {"principal": "billing", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()},
            {"principal": "intruder", "sha256": hashlib.sha256(INTRUDER.encode()).hexdigest()},
        ]
    }
    config["acl"] = [
        {
            "principal": "billing",
            "allow": ["publish", "subscribe"],
            "topics": ["orders", "orders.*"],
            "groups": ["billing*"],
        }
    ]
    return config


def address(sidecar: Sidecar, scheme: str) -> str:
    return sidecar.http_url if scheme.startswith("http") else f"{scheme}://{sidecar.grpc_target}"


@pytest.mark.parametrize("scheme", ["http", "https", "grpc", "grpcs"])
async def test_a_granted_token_publishes_and_subscribes(scheme: str, tmp_path: Path) -> None:
    """With auth and an ACL on, connect(url, token=...) publishes and subscribes over
    HTTP and gRPC, plain and TLS."""
    tls = scheme.endswith("s")
    ca = CertAuthority(tmp_path) if tls else None
    async with Sidecar(guarded(ca)) as sidecar:
        options: dict[str, Any] = {"token": TOKEN}
        if ca is not None:
            options["ca_file"] = ca.cert_file
        async with eventmesh.connect(address(sidecar, scheme), **options) as client:
            await roundtrip(client)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
async def test_refusals_raise_their_error_and_never_show_a_token(
    scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No token or an unknown one raises UnauthenticatedError; a token whose principal
    lacks the grant (no rule, another topic, another group) PermissionDeniedError, from
    publish and from starting a subscription; no message or log line holds a token."""
    caplog.set_level(logging.DEBUG)
    event = Event(type="t", source="/s")
    cases: list[tuple[str | None, str, str, type[Exception]]] = [
        (None, "orders", "billing-1", UnauthenticatedError),
        (WRONG, "orders", "billing-1", UnauthenticatedError),
        (INTRUDER, "orders", "billing-1", PermissionDeniedError),
        (TOKEN, "payments", "billing-1", PermissionDeniedError),
        (TOKEN, "orders", "shipping", PermissionDeniedError),
    ]
    messages: list[str] = []
    async with Sidecar(guarded()) as sidecar:
        for token, topic, group, error in cases:
            async with eventmesh.connect(address(sidecar, scheme), token=token) as client:
                if group == "billing-1":  # the group plays no part in publishing
                    with pytest.raises(error) as published:
                        await client.publish(topic, event)
                    messages.append(str(published.value))
                with pytest.raises(error) as subscribed:
                    async with client.subscribe(topic, group):
                        pass
                messages.append(str(subscribed.value))
    assert len(messages) == 9
    for secret in (TOKEN, INTRUDER, WRONG):
        assert all(secret not in message for message in messages)
        assert secret not in caplog.text
