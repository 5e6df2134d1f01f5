"""Review of secret redaction: a URL whose userinfo is a user name alone carries a
credential too (a NATS token is written ``nats://TOKEN@host``, and aiohttp sends a
webhook's ``https://TOKEN@host`` as Basic credentials), and the NATS connector's log
line and connection errors name its servers: none of these may show a secret."""

from __future__ import annotations

import logging
import os

import pytest

from eventmesh._redact import redact_config, redact_url

SECRET = "S3CR3T-review-6e1d"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"nats://{SECRET}@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        (f"https://{SECRET}@hooks.example/x", "https://***@hooks.example/x"),
        (f"http://user:{SECRET}@h/x", "http://user:***@h/x"),
        ("http://h/x?a=1", "http://h/x?a=1"),
    ],
)
def test_a_user_name_alone_is_shown_as_a_secret(url: str, shown: str) -> None:
    """Userinfo without a password is the credential itself (a token), so it is
    masked whole; with a password, the user name stays and the password is masked."""
    assert redact_url(url) == shown


def test_admin_connectors_mask_a_nats_token_in_a_server_url() -> None:
    """What the admin port's /connectors shows of a NATS connector's servers."""
    shown = redact_config({"servers": [f"nats://{SECRET}@127.0.0.1:4222"]})
    assert SECRET not in repr(shown)


def test_a_printed_nats_config_masks_a_token_in_a_server_url() -> None:
    nats_config = pytest.importorskip("eventmesh_nats.config")
    config = nats_config.NatsConfig(
        servers=[f"nats://{SECRET}@127.0.0.1:4222", f"tls://u:{SECRET}@127.0.0.1:4223"]
    )
    assert SECRET not in repr(config)
    assert "127.0.0.1:4222" in repr(config)


@pytest.mark.anyio
async def test_a_nats_connection_error_does_not_show_the_servers_credentials() -> None:
    """A server that does not answer: the ConnectError names where it connected, with
    the URL's password and token masked."""
    nats_connector = pytest.importorskip("eventmesh_nats.connector")
    nats_config = pytest.importorskip("eventmesh_nats.config")
    from eventmesh.errors import ConnectError

    config = nats_config.NatsConfig(
        servers=[f"nats://u:{SECRET}@127.0.0.1:1", f"nats://{SECRET}@127.0.0.1:2"],
        connect_timeout=0.5,
        connect_attempts=1,
    )
    connector = nats_connector.NatsConnector(config)
    with pytest.raises(ConnectError) as caught:
        await connector.open()
    assert SECRET not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)


@pytest.mark.anyio
async def test_the_nats_connected_log_line_does_not_show_the_servers_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The info line of a successful connection names the servers without the password
    (nats-server without auth of its own ignores the credentials the client sends)."""
    url = os.environ.get("NATS_URL")
    if not url:
        pytest.skip("NATS_URL is not set (export $(scripts/nats.sh env))")
    nats_connector = pytest.importorskip("eventmesh_nats.connector")
    nats_config = pytest.importorskip("eventmesh_nats.config")
    host = url.removeprefix("nats://")
    caplog.set_level(logging.INFO)
    config = nats_config.NatsConfig(
        servers=[f"nats://u:{SECRET}@{host}"], mode="core", connect_attempts=1
    )
    connector = nats_connector.NatsConnector(config)
    await connector.open()
    try:
        assert "connected to" in caplog.text
    finally:
        await connector.close()
    assert SECRET not in caplog.text


FUNCTION = {
    "name": "f",
    "trigger": {"topic": "t"},
    "url": f"http://u:{SECRET}@127.0.0.1:9/x?token={SECRET}",
    "headers": {"Authorization": f"Bearer {SECRET}"},
}


def test_a_printed_config_shows_no_http_function_secret() -> None:
    """An HTTP function's URL credentials and header values are masked in the repr of a
    loaded config, as a webhook sink's are."""
    from eventmesh.config import load_config

    shown = repr(load_config({"functions": [FUNCTION]}))
    assert SECRET not in shown
    assert "'Authorization': '***'" in shown
    assert "u:***@127.0.0.1:9" in shown


def test_a_function_url_config_error_does_not_echo_its_credentials() -> None:
    from eventmesh.config import load_config
    from eventmesh.errors import ConfigError

    bad = {**FUNCTION, "url": f"ftp://u:{SECRET}@127.0.0.1/?token={SECRET}"}
    with pytest.raises(ConfigError) as caught:
        load_config({"functions": [bad]})
    assert SECRET not in str(caught.value)
    assert "ftp://u:***@127.0.0.1/" in str(caught.value)
