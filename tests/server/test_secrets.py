"""Secrets never leave the sidecar: webhook headers, URL credentials and token query
parameters, signing secrets and connector passwords are ``***`` in every API answer,
admin listing, log line and error body."""

from __future__ import annotations

import base64
import logging
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest

from eventmesh import Event
from eventmesh._redact import redact_config, redact_url
from eventmesh.config import load_config
from eventmesh.connectors.memory import MemoryConnector
from eventmesh.errors import ConfigError
from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio

FREE = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}
BEARER = "S3CR3T-bearer-4f1a"
QUERY = "S3CR3T-query-77c2"
USERPW = "S3CR3T-userpw-9d0e"
SIGNING = "whsec_" + base64.b64encode(b"S3CR3T-signing-key-32-bytes-long").decode()
SASL = "S3CR3T-sasl-5b6c"
NATS = "S3CR3T-nats-0a1b"
SECRETS = (BEARER, QUERY, USERPW, SIGNING, SIGNING.removeprefix("whsec_"), SASL, NATS)
FAIL_FAST = {"max_attempts": 1, "dead_letter": None}


def config() -> dict[str, Any]:
    """Config-file webhooks with each kind of secret, and connectors with passwords."""
    return {
        "server": FREE,
        "connectors": {
            "default": {"type": "memory"},
            "kafka": {
                "type": "kafka",
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "mesh",
                "sasl_plain_password": SASL,
            },
            "nats": {"type": "nats", "token": NATS},
        },
        "subscriptions": [
            {
                "name": "bearer-hook",
                "topic": "orders",
                "sink": {
                    "webhook": "http://127.0.0.1:9/a",
                    "headers": {"Authorization": f"Bearer {BEARER}"},
                    "signing_secret": SIGNING,
                },
                "delivery": FAIL_FAST,
            },
            {
                "name": "query-hook",
                "topic": "orders",
                "sink": {"webhook": f"http://127.0.0.1:9/b?tenant=t1&token={QUERY}"},
                "delivery": FAIL_FAST,
            },
            {
                "name": "userinfo-hook",
                "topic": "orders",
                "sink": {"webhook": f"http://hook:{USERPW}@127.0.0.1:9/c"},
                "delivery": FAIL_FAST,
            },
        ],
    }


API_SUBSCRIPTIONS: list[dict[str, Any]] = [
    {
        "id": "api-bearer",
        "topic": "orders",
        "sink": "http://127.0.0.1:9/a",
        "protocolsettings": {
            "headers": {"Authorization": f"Bearer {BEARER}", "X-Api-Key": QUERY},
            "signing_secret": SIGNING,
        },
        "delivery": FAIL_FAST,
    },
    {
        "id": "api-query",
        "topic": "orders",
        "sink": f"http://127.0.0.1:9/b?access_token={QUERY}&x=1",
        "delivery": FAIL_FAST,
    },
    {
        "id": "api-userinfo",
        "topic": "orders",
        "sink": f"http://hook:{USERPW}@127.0.0.1:9/c",
        "delivery": FAIL_FAST,
    },
]

BAD_SPECS: list[dict[str, Any]] = [
    {"topic": "orders", "sink": f"ftp://hook:{USERPW}@127.0.0.1/?token={QUERY}"},
    {"topic": "orders", "sink": f"http://10.9.9.9/?token={QUERY}"},
    {"topic": "orders", "sink": f"http://hook:{USERPW}@127.0.0.1:9/?token={QUERY}", "x": 1},
    {
        "topic": "orders",
        "sink": f"http://hook:{USERPW}@127.0.0.1:9/",
        "protocolsettings": {"headers": {"Authorization": f"Bearer {BEARER}"}},
    },
    {
        "topic": "orders",
        "sink": "http://127.0.0.1:9/",
        "protocolsettings": {"headers": {"X-Key": f"{BEARER}\r\nX: y"}},
    },
    {
        "topic": "orders",
        "sink": "http://127.0.0.1:9/",
        "protocolsettings": {"signing_secret": f"whsec_{QUERY}"},
    },
]


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a secret"


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, Any]:
    async with session.get(url) as response:
        text = await response.text()
        return response.status, text, msgspec.json.decode(text)


async def test_no_answer_log_line_or_error_body_carries_a_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Listings, one subscription, the admin port's subscriptions and connectors, the
    logs of creating, failing to deliver and deleting, and the error bodies of bad
    specs all show every secret as *** (and say that something is there)."""
    caplog.set_level(logging.DEBUG)
    connectors = {"kafka": MemoryConnector(name="kafka"), "nats": MemoryConnector(name="nats")}
    with anyio.fail_after(30):
        async with (
            Sidecar(config(), connectors=connectors) as sidecar,
            aiohttp.ClientSession() as session,
        ):
            http, admin = sidecar.http_url, sidecar.admin_url
            for spec in API_SUBSCRIPTIONS:
                async with session.post(http + "/subscriptions", json=spec) as response:
                    text = await response.text()
                    assert response.status == 201, text
                    assert_no_secret(text, f"POST /subscriptions {spec['id']}")
            for spec in BAD_SPECS:
                async with session.post(http + "/subscriptions", json=spec) as response:
                    text = await response.text()
                    assert response.status == 400, text
                    assert_no_secret(text, f"the error body for {spec}")
            status, text, listed = await get(session, http + "/subscriptions")
            assert status == 200
            assert_no_secret(text, "GET /subscriptions")
            shown = {s["id"]: s for s in listed["subscriptions"]}
            assert shown["bearer-hook"]["protocolsettings"]["headers"] == {"Authorization": "***"}
            assert shown["bearer-hook"]["protocolsettings"]["signing_secret"] == "***"
            assert shown["query-hook"]["sink"] == "http://127.0.0.1:9/b?tenant=t1&token=***"
            assert shown["userinfo-hook"]["sink"] == "http://hook:***@127.0.0.1:9/c"
            assert shown["api-bearer"]["protocolsettings"]["headers"] == {
                "Authorization": "***",
                "X-Api-Key": "***",
            }
            assert shown["api-query"]["sink"] == "http://127.0.0.1:9/b?access_token=***&x=1"
            for name in shown:
                status, text, _ = await get(session, f"{http}/subscriptions/{name}")
                assert status == 200
                assert_no_secret(text, f"GET /subscriptions/{name}")
            status, text, _ = await get(session, admin + "/subscriptions")
            assert status == 200
            assert_no_secret(text, "admin /subscriptions")
            status, text, body = await get(session, admin + "/connectors")
            assert status == 200
            assert_no_secret(text, "admin /connectors")
            configs = {c["name"]: c["config"] for c in body["connectors"]}
            assert configs["kafka"]["sasl_plain_password"] == "***"
            assert configs["kafka"]["sasl_plain_username"] == "mesh"
            assert configs["nats"]["token"] == "***"

            await sidecar.mesh.publish("orders", Event(type="t", source="/s", id="e1"))
            with anyio.fail_after(10):  # every webhook fails once and drops the event
                while sum(s.stats.dead_lettered + s.stats.dropped for s in subs(sidecar)) < 6:
                    await anyio.sleep(0.01)
            for spec in API_SUBSCRIPTIONS:
                async with session.delete(f"{http}/subscriptions/{spec['id']}") as response:
                    assert response.status == 204
    assert "S3CR3T" not in caplog.text
    assert "dropped event e1" in caplog.text
    assert "hook:***@127.0.0.1:9/c" in caplog.text


def subs(sidecar: Sidecar) -> list[Any]:
    return list(sidecar.mesh.subscriptions)


def test_a_config_error_does_not_echo_the_url() -> None:
    """A config webhook that is not http(s) is refused without its credentials."""
    bad = {
        "subscriptions": [
            {"name": "s", "topic": "t", "sink": {"webhook": f"ftp://u:{USERPW}@h/?token={QUERY}"}}
        ]
    }
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    assert "ftp://u:***@h/?token=***" in str(caught.value)
    assert_no_secret(str(caught.value), "the config error")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@h:1/x?token=t&a=b", "http://u:***@h:1/x?token=***&a=b"),
        (
            "https://h/x?API_KEY=k&Signature=s&code=c",
            "https://h/x?API_KEY=***&Signature=***&code=***",
        ),
        ("https://h/x?client_secret=s&mytoken=t", "https://h/x?client_secret=***&mytoken=***"),
        ("https://u@h/x?a=b c", "https://***@h/x?a=b c"),
        ("https://sk_live_1:@h/x", "https://***@h/x"),
        ("http://h:notaport/", "***"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    """Passwords and token-ish query values are masked; the rest of the URL stays. A user
    name with no password, or an empty one (curl -u TOKEN: writes it so), is the
    credential itself, masked whole."""
    assert redact_url(url) == shown


def test_redact_config_masks_secret_fields_headers_and_urls() -> None:
    """Fields named as secrets, every header value and URL credentials are masked,
    however deep."""
    config = {
        "password": "p",
        "nkeys_seed": "s",
        "user_credentials": "c",
        "db": {"my_token": "t", "servers": ["nats://u:pw@h:4222"], "user": "u"},
        "headers": {"X-Anything": "v"},
        "signing_secret": None,
    }
    assert redact_config(config) == {
        "password": "***",
        "nkeys_seed": "***",
        "user_credentials": "***",
        "db": {"my_token": "***", "servers": ["nats://u:***@h:4222"], "user": "u"},
        "headers": {"X-Anything": "***"},
        "signing_secret": None,
    }


def test_a_printed_config_shows_no_webhook_secret() -> None:
    """The repr of a loaded config (as a debug line or a traceback would print it) masks
    the webhook's credentials, header values and signing secret."""
    conf = config()
    del conf["connectors"]["nats"]  # its plugin's config (not the sidecar's) prints its token
    shown = repr(load_config(conf))
    assert_no_secret(shown, "repr(MeshConfig)")
    assert "'Authorization': '***'" in shown
