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
from eventmesh.testing.certs import CertAuthority, IssuedCert
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


async def reloading(
    serve: tuple[CertAuthority, list[asyncio.Server]],
) -> tuple[IssuedCert, CertReloader, int]:
    """A server certificate as server.pem/server.key, a listener serving it with a
    reloader watching the files: (the certificate, the reloader, the port)."""
    ca, servers = serve
    first = ca.issue("sidecar", stem="server")
    config = TlsConfig(cert_file=str(first.cert_file), key_file=str(first.key_file))
    context = server_context(config)
    reloader = CertReloader(config, context)
    return first, reloader, await start(context, servers)


async def test_a_renewed_certificate_is_served_without_a_restart(
    serve: tuple[CertAuthority, list[asyncio.Server]],
) -> None:
    """After the files change, check() reloads them and new handshakes get the new one;
    a broken file is logged and the old certificate kept."""
    ca, _ = serve
    first, reloader, port = await reloading(serve)
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


async def test_a_certificate_renewed_before_its_key_leaves_the_served_one_whole(
    serve: tuple[CertAuthority, list[asyncio.Server]],
) -> None:
    """A look that catches a rotation between writing the certificate and writing its
    key fails to load, and handshakes go on with the old pair; once the key is written
    too, the new pair is served. Before, the new certificate went into the serving
    context and the key check then failed, leaving it with no usable key: every new
    handshake failed."""
    ca, _ = serve
    first, reloader, port = await reloading(serve)
    trust = client_context(str(ca.cert_file))
    old_key = first.key_file.read_bytes()
    second = ca.issue("sidecar", stem="server")
    new_key = second.key_file.read_bytes()
    first.key_file.write_bytes(old_key)  # the certificate is new, the key not yet
    assert not reloader.check()
    assert (await ask(port, trust))[1] == first.serial
    second.key_file.write_bytes(new_key + b"\n")  # the key arrives (its size changes)
    assert reloader.check()
    assert (await ask(port, trust))[1] == second.serial


async def test_a_ca_taken_out_of_client_ca_file_is_no_longer_trusted(
    serve: tuple[CertAuthority, list[asyncio.Server]],
) -> None:
    """Replacing client_ca_file with another CA refuses clients of the old one from the
    next handshake on, and accepts the new one's. Before, the reload loaded the new file
    into the serving context, which only adds CAs: the old one stayed trusted until a
    restart."""
    ca, servers = serve
    issued = ca.issue("sidecar")
    clients = ca.folder / "clients"
    old_ca = CertAuthority(clients / "old", name="old client CA")
    new_ca = CertAuthority(clients / "new", name="new client CA")
    trusted = ca.folder / "client-ca.pem"
    trusted.write_bytes(old_ca.cert_file.read_bytes())
    config = TlsConfig(
        cert_file=str(issued.cert_file), key_file=str(issued.key_file), client_ca_file=str(trusted)
    )
    context = server_context(config)
    reloader = CertReloader(config, context)
    port = await start(context, servers)

    def presenting(authority: CertAuthority) -> ssl.SSLContext:
        cert = authority.issue("billing", client=True)
        return client_context(
            str(ca.cert_file), cert_file=str(cert.cert_file), key_file=str(cert.key_file)
        )

    assert (await ask(port, presenting(old_ca)))[0] == "billing"
    trusted.write_bytes(new_ca.cert_file.read_bytes())
    assert reloader.check()
    assert await refused(port, presenting(old_ca))
    assert (await ask(port, presenting(new_ca)))[0] == "billing"


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
