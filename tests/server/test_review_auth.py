"""Review of the sidecar's authentication against hostile credentials: a caller without
a valid credential gets 401 / UNAUTHENTICATED whatever it sends (never a 500, an
INTERNAL or a traceback in the log), and a JWKS endpoint that answers garbage or hangs
up never takes the sidecar down."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import grpc
import grpc.aio
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._generated.eventmesh.v1.eventmesh_pb2_grpc import EventMeshStub
from eventmesh.server import _jwks
from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio

FREE = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}
TOKEN = "tok-billing-0123456789"
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()
DEEP = b"[" * 100_000 + b"]" * 100_000
"""JSON nested deeper than the decoder recurses."""
EVENT = {"specversion": "1.0", "id": "1", "type": "t", "source": "/s"}


class Key:
    """An RSA signing key of the identity provider, as a JWK and as tokens."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        self.jwk = {**public, "kid": kid, "alg": "RS256"}

    def token(self) -> str:
        claims = {"sub": "billing", "exp": int(time.time()) + 300}
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid})


def config(jwt_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": FREE,
        "auth": {
            "tokens": [
                {"principal": "billing", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
            ],
            "jwt": jwt_config,
        },
        "acl": [
            {"principal": "billing", "allow": ["publish", "admin"], "topics": ["orders"]},
        ],
    }


def es256_token_naming(kid: str) -> str:
    """A token whose header says ES256 and names an RSA key of the JWKS: anyone can make
    one, no signature of the identity provider needed."""
    claims = {"sub": "billing", "exp": int(time.time()) + 300}
    other = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims, other, algorithm="ES256", headers={"kid": kid})


@pytest.fixture
async def sidecar(tmp_path: Any) -> AsyncIterator[Sidecar]:
    key = Key("k1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.jwk]}))
    with anyio.fail_after(30):
        async with Sidecar(config({"jwks_file": str(jwks)})) as running:
            yield running


async def raw_status(url: str, request: bytes) -> bytes:
    """The status line the server at ``url`` answers a raw HTTP/1.1 ``request`` with."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        with anyio.fail_after(5):
            answer = await reader.readuntil(b"\r\n")
    finally:
        writer.close()
    return answer.strip()


@pytest.mark.parametrize("port", ["http", "admin"])
async def test_a_jwt_whose_algorithm_does_not_fit_its_key_is_401(
    sidecar: Sidecar, port: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A token that says ES256 but names the JWKS's RSA key (an algorithm the config
    allows, of another key type) is a token not accepted: 401, not a 500 whose
    traceback lands in the log (the admin port's unthrottled)."""
    caplog.set_level(logging.WARNING)
    base = sidecar.http_url if port == "http" else sidecar.admin_url
    headers = {"Authorization": f"Bearer {es256_token_naming('k1')}"}
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(base + "/subscriptions", headers=headers) as response:
                assert response.status == 401, await response.text()
                assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_jwt_whose_algorithm_does_not_fit_its_key_is_unauthenticated_over_grpc(
    sidecar: Sidecar,
) -> None:
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await EventMeshStub(channel).Publish(
                pb.PublishRequest(topic="orders"),
                metadata=[("authorization", f"Bearer {es256_token_naming('k1')}")],
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("port", ["http", "admin"])
@pytest.mark.parametrize("token", [b"\xff\xfe", b"a.\xff.b", b"\xc3\x28"])
async def test_an_authorization_header_that_is_not_utf8_is_401(
    sidecar: Sidecar, port: str, token: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes that are not UTF-8 in the header (as a static token and as a JWT) are a
    token not accepted: 401, not a 500 with a traceback."""
    caplog.set_level(logging.WARNING)
    base = sidecar.http_url if port == "http" else sidecar.admin_url
    request = (
        b"GET /subscriptions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer " + token + b"\r\n\r\n"
    )
    assert await raw_status(base, request) == b"HTTP/1.1 401 Unauthorized"
    assert "Traceback" not in caplog.text


async def test_a_valid_token_still_works_after_the_hostile_ones(sidecar: Sidecar) -> None:
    """The same checks still let the configured static token in."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            sidecar.admin_url + "/topics", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response,
    ):
        assert response.status == 200


# -- the JWKS URL ----------------------------------------------------------------------------


@pytest.fixture
async def idp() -> AsyncIterator[dict[str, Any]]:
    """A JWKS endpoint on 127.0.0.1 that answers as ``served["answer"]`` says, and
    counts its requests."""
    served: dict[str, Any] = {"answer": "keys", "keys": [], "hits": 0}

    async def jwks(request: web.Request) -> web.StreamResponse:
        served["hits"] += 1
        answer = served["answer"]
        if answer == "keys":
            return web.json_response({"keys": served["keys"]})
        if answer == "hang up":  # the connection drops before an answer
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if answer == "truncated":  # a Content-Length the body never reaches
            response = web.StreamResponse(headers={"Content-Length": "1000"})
            await response.prepare(request)
            await response.write(b'{"keys": [')
            assert request.transport is not None
            request.transport.abort()
            return response
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    served["url"] = f"http://{host}:{port}/jwks"
    yield served
    await runner.cleanup()


async def status_of(session: aiohttp.ClientSession, sidecar: Sidecar, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/cloudevents+json"}
    async with session.post(
        f"{sidecar.http_url}/topics/orders/events", data=json.dumps(EVENT), headers=headers
    ) as response:
        return response.status


@pytest.mark.parametrize(
    "answer", [b"[1, 2]", b"5", b'"keys"', b"null", "hang up", "truncated", b"{}", DEEP]
)
async def test_a_jwks_refresh_that_fails_keeps_the_sidecar_serving(
    idp: dict[str, Any], answer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh that gets a JSON that is not a key set, or a connection that drops,
    is logged and the old keys kept: the sidecar goes on serving, and a later refresh
    that gets the new key lets its tokens in."""
    monkeypatch.setattr(_jwks, "MIN_INTERVAL", 0.0)
    old, new = Key("old"), Key("new")
    idp["keys"] = [old.jwk]
    with anyio.fail_after(30):
        async with (
            Sidecar(config({"jwks_url": idp["url"]})) as sidecar,
            aiohttp.ClientSession() as session,
        ):
            assert await status_of(session, sidecar, old.token()) == 202
            idp["answer"] = answer
            hits = idp["hits"]
            assert await status_of(session, sidecar, new.token()) == 401  # asks for a refresh
            while idp["hits"] == hits:
                await anyio.sleep(0.01)
            # The refresh failed; the sidecar still serves with the keys it had (a crash
            # of the refresh task would cancel this very task).
            assert await status_of(session, sidecar, old.token()) == 202
            async with session.get(sidecar.admin_url + "/healthz") as response:
                assert response.status == 200
            idp["answer"], idp["keys"] = "keys", [old.jwk, new.jwk]
            while await status_of(session, sidecar, new.token()) != 202:
                await anyio.sleep(0.05)


async def test_a_jwks_larger_than_one_read_loads(idp: dict[str, Any]) -> None:
    """A key set of half a megabyte (under the 1 MiB bound) arrives in several pieces;
    all of them are read, not only the first (which is not JSON on its own)."""
    key = Key("k1")
    idp["answer"] = json.dumps({"keys": [key.jwk], "padding": "x" * 500_000}).encode()
    with anyio.fail_after(30):
        async with (
            Sidecar(config({"jwks_url": idp["url"]})) as sidecar,
            aiohttp.ClientSession() as session,
        ):
            assert await status_of(session, sidecar, key.token()) == 202


@pytest.mark.parametrize("answer", [b"[1, 2]", DEEP, "hang up"])
async def test_a_jwks_url_that_answers_garbage_at_start_is_a_config_error(
    idp: dict[str, Any], answer: Any
) -> None:
    """The first load says what is wrong in one ConfigError naming auth.jwt."""
    import eventmesh

    idp["answer"] = answer
    with anyio.fail_after(30), pytest.raises(eventmesh.ConfigError, match=r"auth\.jwt"):
        await Sidecar(config({"jwks_url": idp["url"]})).__aenter__()
