"""The HTTP API and the admin port with auth on: who gets 401, 403 and 2xx for every
route, subscription ownership, consumer groups and per-principal webhook networks."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from eventmesh import Event
from eventmesh.bindings.http import to_binary
from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio

FREE = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}
TOKENS = {
    "billing": "tok-billing-0123456789",
    "other": "tok-other-0123456789",
    "manager": "tok-manager-0123456789",
    "ops": "tok-ops-0123456789",
    "nobody": "tok-nobody-0123456789",
    "narrow": "tok-narrow-0123456789",
}
ACL: list[dict[str, Any]] = [
    {
        "principal": "billing",
        "allow": ["publish", "subscribe"],
        "topics": ["orders", "orders.*"],
        "groups": ["billing*"],
    },
    {
        "principal": "other",
        "allow": ["publish", "subscribe"],
        "topics": ["orders", "orders.*"],
        "groups": ["other*"],
    },
    {"principal": "manager", "allow": ["manage"], "topics": ["orders"]},
    {"principal": "ops", "allow": ["admin"]},
    {
        "principal": "narrow",
        "allow": ["subscribe"],
        "topics": ["orders"],
        "groups": ["narrow*"],
        "webhook_networks": ["127.0.0.2/32"],
    },
]


class Idp:
    """An identity provider: an RSA key, its JWKS file, and tokens it signs."""

    def __init__(self, folder: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks_file = folder / "jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [{**public, "kid": "k1", "alg": "RS256"}]}))

    def token(self, sub: str, *, expires_in: float = 300) -> str:
        claims = {
            "sub": sub,
            "iss": "https://idp.test",
            "aud": "eventmesh",
            "exp": int(time.time() + expires_in),
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})


def secured(idp: Idp, **extra: Any) -> dict[str, Any]:
    """A sidecar config with static tokens, JWTs from ``idp`` and the ACL above."""
    tokens = [
        {"principal": p, "sha256": hashlib.sha256(t.encode()).hexdigest()}
        for p, t in TOKENS.items()
    ]
    jwt_config = {
        "jwks_file": str(idp.jwks_file),
        "issuer": "https://idp.test",
        "audience": ["eventmesh"],
    }
    return {
        "server": FREE,
        "auth": {"tokens": tokens, "jwt": jwt_config},
        "acl": ACL,
        **extra,
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Client:
    """Calls one running sidecar as someone (``headers``)."""

    sidecar: Sidecar
    session: aiohttp.ClientSession

    async def call(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        json: Any = None,
        data: bytes | None = None,
        admin: bool = False,
    ) -> tuple[int, Any, Any]:
        """The status, the decoded body (None unless JSON) and the headers."""
        base = self.sidecar.admin_url if admin else self.sidecar.http_url
        if json is not None:
            data = msgspec.json.encode(json)
            headers = {**headers, "Content-Type": "application/json"}
        async with self.session.request(
            method, base + path, data=data, headers=headers
        ) as response:
            if response.content_type == "text/event-stream":
                return response.status, None, response.headers  # leave the stream at once
            raw = await response.read()
            decoded = None
            if raw and response.content_type.endswith("json"):
                decoded = msgspec.json.decode(raw)
            return response.status, decoded, response.headers

    async def create(self, who: str, spec: dict[str, Any]) -> dict[str, Any]:
        status, body, _ = await self.call("POST", "/subscriptions", bearer(TOKENS[who]), json=spec)
        assert status == 201, body
        assert isinstance(body, dict)
        return body


@asynccontextmanager
async def running(tmp_path: Path, **extra: Any) -> AsyncIterator[tuple[Client, Idp]]:
    idp = Idp(tmp_path)
    with anyio.fail_after(30):
        async with Sidecar(secured(idp, **extra)) as sidecar, aiohttp.ClientSession() as session:
            yield Client(sidecar, session), idp


def credentials(idp: Idp, granted: str, denied: str) -> dict[str, dict[str, str]]:
    """The five kinds of caller of the matrix (the granted one by token and by JWT)."""
    return {
        "none": {},
        "wrong token": bearer("not-a-token-anyone-has"),
        "expired jwt": bearer(idp.token(granted, expires_in=-3600)),
        "denied": bearer(TOKENS[denied]),
        "granted token": bearer(TOKENS[granted]),
        "granted jwt": bearer(idp.token(granted)),
    }


Operation = Callable[[Client, dict[str, str], int], Awaitable[int]]
"""Runs one call with these headers (``n`` numbers the attempt); returns the status."""

EVENT_HEADERS, EVENT_BODY = to_binary(Event(type="t", source="/s", id="e1", data={"n": 1}))


async def publish(client: Client, headers: dict[str, str], n: int) -> int:
    return (
        await client.call(
            "POST", "/topics/orders/events", {**headers, **EVENT_HEADERS}, data=EVENT_BODY
        )
    )[0]


async def publish_eventmesh_path(client: Client, headers: dict[str, str], n: int) -> int:
    return (
        await client.call(
            "POST", "/eventmesh/publish/orders", {**headers, **EVENT_HEADERS}, data=EVENT_BODY
        )
    )[0]


async def create_pull(client: Client, headers: dict[str, str], n: int) -> int:
    spec = {"id": f"billing-pull-{n}", "topic": "orders"}
    return (await client.call("POST", "/subscriptions", headers, json=spec))[0]


async def create_webhook(client: Client, headers: dict[str, str], n: int) -> int:
    spec = {"id": f"billing-hook-{n}", "topic": "orders", "sink": "http://127.0.0.1:9/hook"}
    return (await client.call("POST", "/subscriptions", headers, json=spec))[0]


async def list_subscriptions(client: Client, headers: dict[str, str], n: int) -> int:
    status, body, _ = await client.call("GET", "/subscriptions", headers)
    if status == 200 and "billing-sub" not in [s["id"] for s in body["subscriptions"]]:
        return 299  # answered, but without the subscription: as for one who may not see it
    return status


async def get_subscription(client: Client, headers: dict[str, str], n: int) -> int:
    return (await client.call("GET", "/subscriptions/billing-sub", headers))[0]


async def delete_subscription(client: Client, headers: dict[str, str], n: int) -> int:
    await client.create("billing", {"id": f"billing-gone-{n}", "topic": "orders"})
    return (await client.call("DELETE", f"/subscriptions/billing-gone-{n}", headers))[0]


async def pull(client: Client, headers: dict[str, str], n: int) -> int:
    return (await client.call("GET", "/subscriptions/billing-sub/events?wait=0", headers))[0]


async def ack(client: Client, headers: dict[str, str], n: int) -> int:
    body = {"delivery_ids": ["unknown"]}
    return (await client.call("POST", "/subscriptions/billing-sub/ack", headers, json=body))[0]


async def nack(client: Client, headers: dict[str, str], n: int) -> int:
    body = {"delivery_ids": ["unknown"]}
    return (await client.call("POST", "/subscriptions/billing-sub/nack", headers, json=body))[0]


async def stream(client: Client, headers: dict[str, str], n: int) -> int:
    return (await client.call("GET", "/subscriptions/billing-sub/stream", headers))[0]


def expected(granted: int, denied: int = 403) -> dict[str, int]:
    return {
        "none": 401,
        "wrong token": 401,
        "expired jwt": 401,
        "denied": denied,
        "granted token": granted,
        "granted jwt": granted,
    }


MATRIX: dict[str, tuple[Operation, dict[str, int]]] = {
    "publish": (publish, expected(202)),
    "publish (Apache EventMesh path)": (publish_eventmesh_path, expected(202)),
    "create pull subscription": (create_pull, expected(201)),
    "create webhook subscription": (create_webhook, expected(201)),
    "list subscriptions": (list_subscriptions, expected(200, denied=299)),
    "get subscription": (get_subscription, expected(200)),
    "delete subscription": (delete_subscription, expected(204)),
    "pull": (pull, expected(200)),
    "ack": (ack, expected(200)),
    "nack": (nack, expected(200)),
    "SSE stream": (stream, expected(200)),
}


@pytest.mark.parametrize("operation", list(MATRIX))
async def test_every_http_route_answers_401_403_or_2xx_by_credentials(
    tmp_path: Path, operation: str
) -> None:
    """No credentials, a wrong token or an expired JWT is 401 (with WWW-Authenticate:
    Bearer); a principal without the grant is 403 (a listing leaves out what it may not
    see); the granted principal, by token or by JWT, gets the route's 2xx."""
    run, want = MATRIX[operation]
    async with running(tmp_path) as (client, idp):
        await client.create("billing", {"id": "billing-sub", "topic": "orders"})
        got = {}
        for n, (kind, headers) in enumerate(credentials(idp, "billing", "nobody").items()):
            got[kind] = await run(client, headers, n)
        assert got == want


@pytest.mark.parametrize(
    "path", ["/topics", "/subscriptions", "/connectors", "/functions", "/metrics"]
)
async def test_every_admin_route_but_the_probes_needs_the_admin_grant(
    tmp_path: Path, path: str
) -> None:
    """Each admin route, /metrics included, is 401 without good credentials, 403 for a
    principal without admin (even one with every other grant) and 200 for ops."""
    async with running(tmp_path) as (client, idp):
        got = {}
        for kind, headers in credentials(idp, "ops", "billing").items():
            status, body, answer_headers = await client.call("GET", path, headers, admin=True)
            got[kind] = status
            if status == 401:
                assert answer_headers["WWW-Authenticate"] == "Bearer"
                assert body["type"] == "UnauthenticatedError"
            elif status == 403:
                assert body["type"] == "PermissionDeniedError"
        assert got == expected(200)


async def test_the_probes_stay_open(tmp_path: Path) -> None:
    """/healthz and /readyz answer 200 whoever asks, with or without credentials."""
    async with running(tmp_path) as (client, idp):
        for path in ("/healthz", "/readyz"):
            for headers in credentials(idp, "ops", "billing").values():
                assert (await client.call("GET", path, headers, admin=True))[0] == 200


async def test_a_401_says_what_was_missing_and_asks_for_a_bearer_token(tmp_path: Path) -> None:
    """The problem body of a 401 names what to send, never why a token was wrong; an
    unknown path is 401 too, so nothing can be probed without credentials."""
    async with running(tmp_path) as (client, _):
        status, body, headers = await client.call("GET", "/subscriptions", {})
        assert (status, body["type"], headers["WWW-Authenticate"]) == (
            401,
            "UnauthenticatedError",
            "Bearer",
        )
        assert "Authorization: Bearer" in body["detail"]
        status, body, _ = await client.call("GET", "/subscriptions", bearer("x.y.z"))
        assert (status, body["detail"]) == (401, "the bearer token was not accepted")
        assert (await client.call("GET", "/no/such/path", {}))[0] == 401


async def test_an_unauthenticated_publish_with_expect_continue_is_refused_before_its_body(
    tmp_path: Path,
) -> None:
    """Expect: 100-continue without credentials is answered 401 at once, so the client
    never sends the body."""
    async with running(tmp_path) as (client, _):
        host, port = client.sidecar.http_url.removeprefix("http://").rsplit(":", 1)
        with anyio.fail_after(5):
            stream = await anyio.connect_tcp(host, int(port))
            async with stream:
                await stream.send(
                    b"POST /topics/orders/events HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/cloudevents+json\r\nContent-Length: 100\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                head = await stream.receive()
        assert head.startswith(b"HTTP/1.1 401"), head


async def test_nobody_joins_another_services_group_by_naming_it(tmp_path: Path) -> None:
    """A subscription in a group the principal is not granted is 403, whatever the
    protocol; the default group is the id, so an id outside the grant is refused too.
    In its own group it is made, and nothing was started for the refused ones."""
    async with running(tmp_path) as (client, _):
        await client.create("other", {"id": "other-sub", "topic": "orders"})
        attempts = [
            {"topic": "orders", "group": "other-sub"},
            {"topic": "orders", "group": "other-sub", "sink": "http://127.0.0.1:9/"},
            {"id": "other-sub-2", "topic": "orders"},
            {"topic": "orders"},  # a generated id: the group is not billing*
        ]
        for spec in attempts:
            status, body, _ = await client.call(
                "POST", "/subscriptions", bearer(TOKENS["billing"]), json=spec
            )
            assert (status, body["type"]) == (403, "PermissionDeniedError"), spec
            assert "billing" in body["detail"]
        assert [s.name for s in client.sidecar.mesh.subscriptions] == ["other-sub"]
        await client.create("billing", {"topic": "orders", "group": "billing-workers"})


async def test_a_reply_topic_needs_the_publish_grant(tmp_path: Path) -> None:
    """A webhook whose replies would go to a topic the principal may not publish to is
    403; to one it may, 201."""
    async with running(tmp_path) as (client, _):
        spec = {"id": "billing-r", "topic": "orders", "sink": "http://127.0.0.1:9/"}
        status, body, _ = await client.call(
            "POST",
            "/subscriptions",
            bearer(TOKENS["billing"]),
            json={**spec, "reply_to": "payments"},
        )
        assert (status, body["type"]) == (403, "PermissionDeniedError")
        assert "publish on topic 'payments'" in body["detail"]
        await client.create("billing", {**spec, "reply_to": "orders.replies"})


async def test_only_the_owner_or_a_manager_sees_reads_and_deletes_a_subscription(
    tmp_path: Path,
) -> None:
    """Another principal does not see billing's subscription in the listing, cannot
    read, pull from or delete it (403); a principal with manage on the topic can, and
    billing sees its own with its owner."""
    async with running(tmp_path) as (client, _):
        created = await client.create("billing", {"id": "billing-sub", "topic": "orders"})
        assert created["owner"] == "billing"
        other, manager = bearer(TOKENS["other"]), bearer(TOKENS["manager"])
        _, listed, _ = await client.call("GET", "/subscriptions", other)
        assert listed == {"subscriptions": []}
        for method, path in [
            ("GET", "/subscriptions/billing-sub"),
            ("GET", "/subscriptions/billing-sub/events?wait=0"),
            ("DELETE", "/subscriptions/billing-sub"),
        ]:
            status, body, _ = await client.call(method, path, other)
            assert (status, body["type"]) == (403, "PermissionDeniedError"), path
            assert "belongs to principal 'billing'" in body["detail"]
        _, listed, _ = await client.call("GET", "/subscriptions", bearer(TOKENS["billing"]))
        assert [(s["id"], s["owner"]) for s in listed["subscriptions"]] == [
            ("billing-sub", "billing")
        ]
        _, listed, _ = await client.call("GET", "/subscriptions", manager)
        assert [s["id"] for s in listed["subscriptions"]] == ["billing-sub"]
        assert (await client.call("GET", "/subscriptions/billing-sub", manager))[0] == 200
        assert (await client.call("DELETE", "/subscriptions/billing-sub", manager))[0] == 204
        assert client.sidecar.mesh.subscriptions == []


async def test_a_principal_cannot_receive_events_of_a_group_it_is_not_granted(
    tmp_path: Path,
) -> None:
    """Events published to other's group go to other's subscription only: billing can
    neither join the group nor pull from the subscription, so it receives none."""
    async with running(tmp_path) as (client, _):
        await client.create("other", {"id": "other-sub", "topic": "orders", "start": "earliest"})
        billing = bearer(TOKENS["billing"])
        spec = {"topic": "orders", "group": "other-sub", "start": "earliest"}
        assert (await client.call("POST", "/subscriptions", billing, json=spec))[0] == 403
        await publish(client, billing, 0)
        status, _, _ = await client.call(
            "GET", "/subscriptions/other-sub/events?wait=1&max=10", billing
        )
        assert status == 403
        status, body, _ = await client.call(
            "GET", "/subscriptions/other-sub/events?wait=5&max=10", bearer(TOKENS["other"])
        )
        assert status == 200
        assert [d["event"]["id"] for d in body["deliveries"]] == ["e1"]


async def test_webhooks_of_a_narrowed_principal_go_only_into_its_networks(
    tmp_path: Path,
) -> None:
    """A principal whose rule sets webhook_networks gets 403 naming the rule for a sink
    outside them (though inside the server's own networks), and 201 for one inside; a
    principal without such a rule is not narrowed; outside the server's networks stays
    400 for everyone."""
    async with running(tmp_path) as (client, _):
        narrow = bearer(TOKENS["narrow"])
        for sink in ("http://127.0.0.1:9/hook", "http://localhost:9/hook"):
            spec = {"id": "narrow-a", "topic": "orders", "sink": sink}
            status, body, _ = await client.call("POST", "/subscriptions", narrow, json=spec)
            assert (status, body["type"]) == (403, "PermissionDeniedError"), sink
            assert "acl[4].webhook_networks" in body["detail"]
            assert "127.0.0.2/32" in body["detail"]
        spec = {"id": "narrow-b", "topic": "orders", "sink": "http://127.0.0.2:9/hook"}
        assert (await client.call("POST", "/subscriptions", narrow, json=spec))[0] == 201
        await client.create(
            "billing", {"id": "billing-w", "topic": "orders", "sink": "http://127.0.0.1:9/"}
        )
        for who in ("narrow", "billing"):
            spec = {"id": f"{who}-far", "topic": "orders", "sink": "http://10.1.2.3:9/"}
            status, body, _ = await client.call(
                "POST", "/subscriptions", bearer(TOKENS[who]), json=spec
            )
            assert (status, body["type"], body["key"]) == (400, "ConfigError", "sink")


async def test_a_narrowed_session_refuses_addresses_outside_its_networks_at_connect() -> None:
    """The narrowed session's resolver, not only the creation check, keeps its webhooks
    inside both network lists (a name that resolves elsewhere later is refused)."""
    import ipaddress

    from eventmesh.delivery.webhook import WebhookSession

    async with WebhookSession() as session:
        narrowed = session.narrowed([ipaddress.ip_network("127.0.0.2/32")])
        assert narrowed is session.narrowed([ipaddress.ip_network("127.0.0.2/32")])
        assert narrowed.allow.allows_address("127.0.0.2")
        assert not narrowed.allow.allows_address("127.0.0.1")
        assert not narrowed.allow.filter("localhost", ["127.0.0.1", "::1"])
        wide = session.narrowed([ipaddress.ip_network("10.0.0.0/8")])
        assert not wide.allow.allows_address("10.1.2.3")  # not in the server's networks
    assert narrowed.closed


async def test_a_client_certificate_names_the_principal_over_https(tmp_path: Path) -> None:
    """Under mTLS with auth.client_certs, the certificate's subject is the principal:
    billing's certificate may publish to orders, nobody's gets 403, and a bearer token
    sent along takes precedence over the certificate."""
    from eventmesh.testing.certs import CertAuthority
    from eventmesh.tls import client_context

    ca = CertAuthority(tmp_path)
    issued = ca.issue("sidecar")
    tls = {
        "cert_file": str(issued.cert_file),
        "key_file": str(issued.key_file),
        "client_ca_file": str(ca.cert_file),
    }
    tokens = [{"principal": "ops", "sha256": hashlib.sha256(TOKENS["ops"].encode()).hexdigest()}]
    config = {
        "server": {**FREE, "http": {"port": 0, "tls": tls}},
        "auth": {"tokens": tokens, "client_certs": {"principal": "subject"}},
        "acl": ACL,
    }

    async def publish_as(name: str, headers: dict[str, str]) -> tuple[int, Any]:
        cert = ca.issue(name, client=True)
        context = client_context(
            str(ca.cert_file), cert_file=str(cert.cert_file), key_file=str(cert.key_file)
        )
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                sidecar.http_url + "/topics/orders/events",
                data=EVENT_BODY,
                headers={**headers, **EVENT_HEADERS},
                ssl=context,
            ) as response,
        ):
            return response.status, msgspec.json.decode(await response.read())

    with anyio.fail_after(30):
        async with Sidecar(config) as sidecar:
            assert (await publish_as("billing", {}))[0] == 202
            status, body = await publish_as("nobody", {})
            assert (status, body["type"]) == (403, "PermissionDeniedError")
            assert "'nobody'" in body["detail"]
            status, body = await publish_as("billing", bearer(TOKENS["ops"]))
            assert (status, body["type"]) == (403, "PermissionDeniedError")
            assert "'ops'" in body["detail"]


async def test_a_principal_cannot_see_another_principals_webhook_secrets(tmp_path: Path) -> None:
    """billing's webhook credentials reach no other caller: other gets 403 and an empty
    listing, and even a manager, who may read it, sees the header value as ***."""
    secret = "Bearer billing-receiver-credential"
    async with running(tmp_path) as (client, _):
        await client.create(
            "billing",
            {
                "id": "billing-hook",
                "topic": "orders",
                "sink": "http://127.0.0.1:9/hook",
                "protocolsettings": {"headers": {"Authorization": secret}},
            },
        )
        for who in ("other", "manager", "billing"):
            headers = bearer(TOKENS[who])
            status, body, _ = await client.call("GET", "/subscriptions/billing-hook", headers)
            _, listed, _ = await client.call("GET", "/subscriptions", headers)
            assert secret not in json.dumps([body, listed])
            if who == "other":
                assert status == 403
                assert listed == {"subscriptions": []}
            else:
                assert status == 200
                assert body["protocolsettings"]["headers"] == {"Authorization": "***"}
