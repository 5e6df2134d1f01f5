"""TLS and mTLS contexts for the listeners, with certificates that reload, on real sockets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from eventmesh.auth import CertIdentity
from eventmesh.errors import ConfigError
from eventmesh.testing.certs import CertAuthority
from eventmesh.tls import CertReloader, TlsConfig, client_context, server_context

pytestmark = pytest.mark.anyio


async def echo_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one line: the common name of the client's certificate, or '-'."""
    identity = CertIdentity.from_peercert(writer.get_extra_info("peercert"))
    await reader.readline()
    writer.write(((identity.subject_cn if identity else None) or "-").encode() + b"\n")
    await writer.drain()
    writer.close()


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[tuple[CertAuthority, list[asyncio.Server]]]:
    """A CA, and the servers a test starts (closed at the end)."""
    servers: list[asyncio.Server] = []
    yield CertAuthority(tmp_path / "ca"), servers
    for server in servers:
        server.close()
        await server.wait_closed()


async def start(context: ssl.SSLContext, servers: list[asyncio.Server]) -> int:
    server = await asyncio.start_server(echo_peer, "127.0.0.1", 0, ssl=context)
    servers.append(server)
    return int(server.sockets[0].getsockname()[1])


async def ask(port: int, context: ssl.SSLContext) -> tuple[str, int]:
    """The server's answer and the serial number of the certificate it presented."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.write(b"hello\n")
    answer = (await reader.readline()).decode().strip()
    writer.close()
    return answer, x509.load_der_x509_certificate(der).serial_number


async def refused(port: int, context: ssl.SSLContext) -> bool:
    """Whether the server ended the connection without answering (under TLS 1.3 the
    client learns that its certificate was refused only when it reads)."""
    try:
        answer, _ = await ask(port, context)
    except (ssl.SSLError, ConnectionError):
        return True
    return answer == ""


async def test_a_tls_listener_serves_clients_that_trust_its_ca(
    serve: tuple[CertAuthority, list[asyncio.Server]],
) -> None:
    """A server certificate from the config is presented and verified by the client."""
    ca, servers = serve
    issued = ca.issue("sidecar")
    config = TlsConfig(cert_file=str(issued.cert_file), key_file=str(issued.key_file))
    port = await start(server_context(config), servers)
    answer, serial = await ask(port, client_context(str(ca.cert_file)))
    assert (answer, serial) == ("-", issued.serial)
    with pytest.raises(ssl.SSLCertVerificationError):
        await ask(port, client_context(str(CertAuthority(ca.folder / "other").cert_file)))


async def test_mtls_requires_a_client_certificate_from_the_ca(
    serve: tuple[CertAuthority, list[asyncio.Server]],
) -> None:
    """With client_ca_file, a client without a certificate (or with a stranger's) fails,
    and one with a certificate from the CA is seen by its common name."""
    ca, servers = serve
    issued = ca.issue("sidecar")
    config = TlsConfig(
        cert_file=str(issued.cert_file),
        key_file=str(issued.key_file),
        client_ca_file=str(ca.cert_file),
    )
    assert config.mutual
    port = await start(server_context(config), servers)
    billing = ca.issue("billing", client=True)
    answer, _ = await ask(
        port,
        client_context(
            str(ca.cert_file), cert_file=str(billing.cert_file), key_file=str(billing.key_file)
        ),
    )
    assert answer == "billing"
    stranger = CertAuthority(ca.folder / "stranger").issue("billing", client=True)
    for context in (
        client_context(str(ca.cert_file)),
        client_context(
            str(ca.cert_file), cert_file=str(stranger.cert_file), key_file=str(stranger.key_file)
        ),
    ):
        assert await refused(port, context)


async def test_a_renewed_certificate_is_served_without_a_restart(
    serve: tuple[CertAuthority, list[asyncio.Server]],
) -> None:
    """After the files change, check() reloads them and new handshakes get the new one;
    a broken file is logged and the old certificate kept."""
    ca, servers = serve
    first = ca.issue("sidecar", stem="server")
    config = TlsConfig(cert_file=str(first.cert_file), key_file=str(first.key_file))
    context = server_context(config)
    reloader = CertReloader(config, context)
    port = await start(context, servers)
    trust = client_context(str(ca.cert_file))
    assert (await ask(port, trust))[1] == first.serial
    assert not reloader.check()  # nothing changed
    second = ca.issue("sidecar", stem="server")  # the same files, rewritten
    assert reloader.check()
    assert reloader.reloads == 1
    assert (await ask(port, trust))[1] == second.serial
    first.cert_file.write_text("not a certificate")
    assert not reloader.check()
    assert (await ask(port, trust))[1] == second.serial


def test_unloadable_files_are_a_config_error_that_names_them(tmp_path: Path) -> None:
    """A missing file, or a key that does not belong to the certificate, is a ConfigError."""
    ca = CertAuthority(tmp_path)
    one, two = ca.issue("a"), ca.issue("b")
    with pytest.raises(ConfigError, match="does not exist"):
        server_context(TlsConfig(cert_file=str(tmp_path / "none.pem"), key_file="x"))
    with pytest.raises(ConfigError, match=r"server\.http\.tls.*key belongs"):
        server_context(
            TlsConfig(cert_file=str(one.cert_file), key_file=str(two.key_file)),
            key="server.http.tls",
        )
    with pytest.raises(ValueError, match="min_version"):
        TlsConfig(cert_file="a", key_file="b", min_version="1.0")
