"""auth.jwt.jwks_url: keys fetched at start and again when a token names a new one."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

import eventmesh
from eventmesh.server import _jwks
from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio

EVENT = {"specversion": "1.0", "id": "1", "type": "t", "source": "/s"}


class Key:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        self.jwk = {**public, "kid": kid, "use": "sig", "alg": "RS256"}

    def token(self) -> str:
        claims = {"sub": "billing", "exp": int(time.time()) + 300}
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture
async def idp() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A JWKS endpoint on 127.0.0.1 serving whatever keys the test puts in the dict."""
    served: dict[str, Any] = {"status": 200, "keys": []}

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": served["keys"]}, status=served["status"])

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/jwks", served
    await runner.cleanup()


def config(url: str) -> dict[str, Any]:
    return {
        "server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}},
        "auth": {"jwt": {"jwks_url": url}},
        "acl": [{"principal": "billing", "allow": ["publish"], "topics": ["orders"]}],
    }


async def publish(sidecar: Sidecar, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/cloudevents+json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sidecar.http_url}/topics/orders/events", data=json.dumps(EVENT), headers=headers
        ) as response,
    ):
        return response.status


async def test_a_rotated_key_is_fetched_when_a_token_names_it(
    idp: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token signed by a key the sidecar has not seen makes it fetch the set again,
    and once the set has the key the token is accepted, with no restart."""
    monkeypatch.setattr(_jwks, "MIN_INTERVAL", 0.0)
    url, served = idp
    old, new = Key("old"), Key("new")
    served["keys"] = [old.jwk]
    async with Sidecar(config(url)) as sidecar:
        assert await publish(sidecar, old.token()) == 202
        served["keys"] = [old.jwk, new.jwk]
        assert await publish(sidecar, new.token()) == 401  # unknown until fetched
        with anyio.fail_after(10):
            while await publish(sidecar, new.token()) != 202:
                await anyio.sleep(0.05)


async def test_a_jwks_url_that_does_not_answer_stops_the_start(
    idp: tuple[str, dict[str, Any]],
) -> None:
    """Without its keys the sidecar would refuse every token: it does not start."""
    url, served = idp
    served["status"] = 404
    with pytest.raises(eventmesh.ConfigError, match=r"auth\.jwt.*HTTP 404"):
        await Sidecar(config(url)).__aenter__()
