"""The sidecar's listeners under TLS and mTLS, and its refusal to serve beyond loopback
unprotected."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from cryptography import x509

import eventmesh
from eventmesh.server import sidecar as sidecar_module
from eventmesh.server.sidecar import Sidecar
from eventmesh.testing.certs import CertAuthority
from eventmesh.tls import client_context

pytestmark = pytest.mark.anyio

FREE = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}


def tls_server(ca: CertAuthority, *, mutual: bool = False, stem: str = "sidecar") -> dict[str, Any]:
    issued = ca.issue("sidecar", stem=stem)
    tls: dict[str, Any] = {"cert_file": str(issued.cert_file), "key_file": str(issued.key_file)}
    if mutual:
        tls["client_ca_file"] = str(ca.cert_file)
    return {name: {"port": 0, "tls": tls} for name in ("http", "grpc", "admin")}


async def get(url: str, context: ssl.SSLContext | None) -> tuple[int, None]:
    """The status of GET url."""
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as response:
        return response.status, None


async def served_serial(url: str, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a new TLS connection to ``url`` is shown."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(
        host, int(port), ssl=context, server_hostname="localhost"
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return int(x509.load_der_x509_certificate(der).serial_number)


async def test_the_listeners_serve_tls_with_the_configured_certificate(tmp_path: Path) -> None:
    """With server.<name>.tls, HTTP and admin are https and gRPC needs TLS credentials."""
    ca = CertAuthority(tmp_path)
    config = {"server": tls_server(ca)}
    trust = client_context(str(ca.cert_file))
    async with Sidecar(config) as sidecar:
        assert sidecar.http_url.startswith("https://")
        assert sidecar.admin_url.startswith("https://")
        status, _ = await get(f"{sidecar.admin_url}/healthz", trust)
        assert status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(f"{sidecar.admin_url}/healthz", client_context(None))
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to a TLS port
            await get(sidecar.admin_url.replace("https://", "http://") + "/healthz", None)
        import grpc

        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_file.read_bytes())
        target = sidecar.grpc_target.replace("127.0.0.1", "localhost")
        async with grpc.aio.secure_channel(target, credentials) as channel:
            await channel.channel_ready()
        async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
            with pytest.raises(TimeoutError), anyio.fail_after(1):
                await channel.channel_ready()


async def test_mtls_listeners_refuse_clients_without_a_certificate(tmp_path: Path) -> None:
    """With client_ca_file, a client without a certificate from that CA is refused."""
    ca = CertAuthority(tmp_path)
    config = {"server": tls_server(ca, mutual=True)}
    client = ca.issue("billing", client=True)
    with_cert = client_context(
        str(ca.cert_file), cert_file=str(client.cert_file), key_file=str(client.key_file)
    )
    async with Sidecar(config) as sidecar:
        status, _ = await get(f"{sidecar.admin_url}/healthz", with_cert)
        assert status == 200
        with pytest.raises(aiohttp.ClientError):
            await get(f"{sidecar.admin_url}/healthz", client_context(str(ca.cert_file)))


async def test_a_renewed_certificate_is_served_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidecar notices rewritten certificate files and serves the new one."""
    monkeypatch.setattr(sidecar_module, "_TLS_CHECK_EVERY", 0.05)
    ca = CertAuthority(tmp_path)
    config = {"server": tls_server(ca, stem="server")}
    trust = client_context(str(ca.cert_file))
    async with Sidecar(config) as sidecar:
        first = await served_serial(sidecar.admin_url, trust)
        renewed = ca.issue("sidecar", stem="server")
        assert renewed.serial != first
        with anyio.fail_after(10):
            while await served_serial(sidecar.admin_url, trust) != renewed.serial:
                await anyio.sleep(0.05)
        status, _ = await get(f"{sidecar.admin_url}/healthz", trust)
        assert status == 200


@pytest.mark.parametrize("listener", ["http", "grpc", "admin"])
async def test_serving_beyond_loopback_unprotected_is_refused(listener: str) -> None:
    """A non-loopback listener without auth and TLS stops the start, naming the key."""
    server: dict[str, Any] = {name: {"port": 0} for name in FREE}
    server[listener] = {"host": "192.0.2.1", "port": 0}
    sidecar = Sidecar({"server": server})
    with pytest.raises(eventmesh.ConfigError, match=rf"server\.{listener}\.host.*insecure"):
        await sidecar.__aenter__()


# Tests listen on 127.0.0.1 only: a non-loopback host below is TEST-NET-1 (RFC 5737),
# which is on no interface here, so the refusal is checked before binding and a start
# that gets past it fails to bind instead, without listening anywhere.
ELSEWHERE = "192.0.2.1"


async def test_server_insecure_gets_past_the_refusal_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """server.insecure: true accepts the risk and says so; the start goes on to bind."""
    server: dict[str, Any] = {**FREE, "admin": {"host": ELSEWHERE, "port": 0}, "insecure": True}
    sidecar = Sidecar({"server": server})
    with (
        caplog.at_level(logging.WARNING, logger="eventmesh.server.sidecar"),
        pytest.raises(eventmesh.ConfigError, match="cannot listen"),
    ):
        await sidecar.__aenter__()
    assert "admin listen beyond this host without auth and TLS" in caplog.text


async def test_auth_and_tls_together_get_past_the_refusal(tmp_path: Path) -> None:
    """With auth on and TLS on the listener, a non-loopback address is not refused."""
    ca = CertAuthority(tmp_path)
    server = tls_server(ca)
    server["admin"]["host"] = ELSEWHERE
    config = {"server": server, "auth": {"tokens": [{"principal": "a", "sha256": "0" * 64}]}}
    sidecar = Sidecar(config)
    with pytest.raises(eventmesh.ConfigError, match="cannot listen") as caught:
        await sidecar.__aenter__()
    assert "insecure" not in str(caught.value)
    without_tls = {**config, "server": {**FREE, "admin": {"host": ELSEWHERE, "port": 0}}}
    with pytest.raises(eventmesh.ConfigError, match="insecure"):
        await Sidecar(without_tls).__aenter__()
