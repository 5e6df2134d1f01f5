"""The gRPC API with ``auth:`` and ``acl:``: who may publish and open streams, over plain
connections, TLS and mTLS, against an in-process Sidecar on 127.0.0.1.

The credentials are real: static tokens (kept as digests), JWTs signed with an RSA key
whose public half is in a JWKS file, and client certificates from a throw-away CA.
Calls go through a raw ``grpc.aio`` channel with ``authorization`` metadata, and, where
the SDK is the point, through :class:`~eventmesh.client.grpc.GrpcClient`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import grpc
import grpc.aio
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import eventmesh
from eventmesh import Event
from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._generated.eventmesh.v1.eventmesh_pb2_grpc import EventMeshStub
from eventmesh.bindings.protobuf import to_proto, to_proto_batch
from eventmesh.client.grpc import GrpcClient
from eventmesh.errors import EventMeshError, UnauthenticatedError
from eventmesh.server.sidecar import Sidecar
from eventmesh.testing.certs import CertAuthority

pytestmark = pytest.mark.anyio

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED

ISSUER = "https://idp.test/"
AUDIENCE = "eventmesh"
KID = "test-key-1"
TOKENS = {"billing": "billing-secret-token", "intruder": "intruder-secret-token"}
ACL = [
    {
        "principal": "billing",
        "allow": ["publish", "subscribe"],
        "topics": ["orders", "orders.*"],
        "groups": ["billing*"],
    },
    {"principal": "shipping", "allow": ["subscribe"], "topics": ["orders"], "groups": ["shipping"]},
    {
        "principal": "intruder",
        "allow": ["publish", "subscribe"],
        "topics": ["other"],
        "groups": ["*"],
    },
]
FREE = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}


@pytest.fixture(scope="module")
def anyio_backend() -> Any:
    """asyncio with uvloop, as in conftest.py, but one loop for the whole module (below)."""
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture(scope="module", autouse=True)
async def one_loop() -> AsyncIterator[None]:
    """Runs every test of the module on one event loop (grpc.aio completes operations on
    the loop that started them; see tests/server/test_grpc.py)."""
    yield  # noqa: PT022  # anyio keeps its runner, so the loop, until this fixture ends


class Issuer:
    """An identity provider: an RSA key, its JWKS file, and the JWTs it signs."""

    def __init__(self, folder: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.jwks_file = folder / "jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [{**jwk, "kid": KID, "use": "sig"}]}))

    def token(self, subject: str, *, expires_in: float = 600.0) -> str:
        """A JWT for ``subject`` that expires ``expires_in`` seconds from now (past if < 0)."""
        now = int(time.time())
        claims = {
            "sub": subject,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now - 3600,
            "exp": now + int(expires_in),
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})


def auth_config(issuer: Issuer, **more: Any) -> dict[str, Any]:
    """``auth:`` with the static tokens of TOKENS and JWTs of ``issuer``."""
    tokens = [
        {"principal": name, "sha256": hashlib.sha256(secret.encode()).hexdigest()}
        for name, secret in TOKENS.items()
    ]
    jwt_config = {"jwks_file": str(issuer.jwks_file), "issuer": ISSUER, "audience": [AUDIENCE]}
    return {"tokens": tokens, "jwt": jwt_config, **more}


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    """The identity provider of the module's sidecar."""
    return Issuer(tmp_path_factory.mktemp("idp"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    """Another identity provider, whose keys the sidecar does not know."""
    return Issuer(tmp_path_factory.mktemp("elsewhere"))


@pytest.fixture(scope="module")
async def sidecar(issuer: Issuer) -> AsyncIterator[Sidecar]:
    """A sidecar with static tokens, JWTs and ACL rules, gRPC in plain text on 127.0.0.1."""
    config = {"server": FREE, "auth": auth_config(issuer), "acl": ACL}
    async with Sidecar(config) as running:
        yield running


@pytest.fixture
async def channel(sidecar: Sidecar) -> AsyncIterator[grpc.aio.Channel]:
    """A new plain-text channel to the module's sidecar."""
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as opened:
        yield opened


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> EventMeshStub:
    """The generated stub on :func:`channel`."""
    return EventMeshStub(channel)


Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def credentials(issuer: Issuer, stranger: Issuer) -> dict[str, Metadata]:
    """Each kind of credential of the matrix, as call metadata; ``stranger`` signs with
    a key the sidecar does not know."""
    return {
        "none": (),
        "wrong token": bearer("not-a-token-anyone-has"),
        "not bearer": (("authorization", "Basic YmlsbGluZzpzZWNyZXQ="),),
        "expired jwt": bearer(issuer.token("billing", expires_in=-3600)),
        "jwt of an unknown key": bearer(stranger.token("billing")),
        "token without the grant": bearer(TOKENS["intruder"]),
        "jwt without the grant": bearer(issuer.token("shipping")),
        "token with the grant": bearer(TOKENS["billing"]),
        "jwt with the grant": bearer(issuer.token("billing")),
    }


EXPECTED = {
    "none": UNAUTHENTICATED,
    "wrong token": UNAUTHENTICATED,
    "not bearer": UNAUTHENTICATED,
    "expired jwt": UNAUTHENTICATED,
    "jwt of an unknown key": UNAUTHENTICATED,
    "token without the grant": DENIED,
    "jwt without the grant": DENIED,
    "token with the grant": OK,
    "jwt with the grant": OK,
}
ERROR_CLASS = {UNAUTHENTICATED: "UnauthenticatedError", DENIED: "PermissionDeniedError"}


def event() -> Event:
    return Event(type="order.created", source="/shop", data={"total": 42})


async def outcome(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str | None]:
    """The status of a call and the error class the sidecar named in its trailers."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        metadata: Any = exc.trailing_metadata() or ()
        return exc.code(), dict(metadata).get("eventmesh-error")
    return OK, None


async def open_stream(
    stub: EventMeshStub, metadata: Metadata, topic: str, group: str, delivery: Any = None
) -> None:
    """Open a Subscribe stream and wait for ``subscribed`` (or the error), then leave."""
    call = stub.Subscribe(metadata=metadata)
    try:
        with anyio.fail_after(10):
            await call.initial_metadata()  # let in, or refused: then the read raises
            if call.done():
                await call.read()
            await call.write(
                pb.SubscribeRequest(
                    open=pb.Open(
                        topic=topic,
                        group=group,
                        credits=1,
                        delivery_json=json.dumps(delivery) if delivery is not None else "",
                    )
                )
            )
            first = await call.read()
            assert first.WhichOneof("response") == "subscribed"
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:  # type: ignore[attr-defined]
                pass
    finally:
        call.cancel()


Operation = Callable[[EventMeshStub, Metadata], Awaitable[Any]]
OPERATIONS: dict[str, Operation] = {
    "Publish": lambda stub, md: stub.Publish(
        pb.PublishRequest(topic="orders", event=to_proto(event())), metadata=md
    ),
    "PublishBatch": lambda stub, md: stub.PublishBatch(
        pb.PublishBatchRequest(topic="orders", batch=to_proto_batch([event(), event()])),
        metadata=md,
    ),
    "Subscribe": lambda stub, md: open_stream(stub, md, "orders", "billing"),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_each_credential_gets_its_status(
    stub: EventMeshStub, issuer: Issuer, stranger: Issuer, operation: str
) -> None:
    """Every RPC: no or bad credentials are UNAUTHENTICATED, a principal without the grant
    PERMISSION_DENIED, one with it OK; the trailers name the error class for the SDK."""
    got = {}
    for name, metadata in credentials(issuer, stranger).items():
        got[name] = await outcome(OPERATIONS[operation](stub, metadata))
    assert {name: code for name, (code, _) in got.items()} == EXPECTED
    assert {name: kind for name, (_, kind) in got.items()} == {
        name: ERROR_CLASS.get(code) for name, code in EXPECTED.items()
    }


async def test_a_stream_without_credentials_is_refused_before_it_opens(
    stub: EventMeshStub,
) -> None:
    """Subscribe authenticates when the stream starts: no message needs to arrive first."""
    call = stub.Subscribe()
    try:
        with anyio.fail_after(10):
            code, kind = await outcome(call.read())
    finally:
        call.cancel()
    assert (code, kind) == (UNAUTHENTICATED, "UnauthenticatedError")


async def test_credentials_are_checked_before_the_request_is_read(
    channel: grpc.aio.Channel,
) -> None:
    """Bytes that are no request get UNAUTHENTICATED without credentials, so a caller
    without them learns nothing of how the body is read; with them, INVALID_ARGUMENT."""
    raw = channel.unary_unary("/eventmesh.v1.EventMesh/Publish")
    garbage = b"\xff\xfe\x00not a protocol buffer"
    assert await outcome(raw(garbage)) == (UNAUTHENTICATED, "UnauthenticatedError")
    code, kind = await outcome(raw(garbage, metadata=bearer(TOKENS["billing"])))
    assert (code, kind) == (grpc.StatusCode.INVALID_ARGUMENT, "EventValidationError")


def as_principal(who: str, issuer: Issuer) -> Metadata:
    """Credentials of ``who``: its static token, or else a JWT for it."""
    return bearer(TOKENS[who]) if who in TOKENS else bearer(issuer.token(who))


async def test_a_principal_cannot_join_another_services_group(
    stub: EventMeshStub, issuer: Issuer
) -> None:
    """Opening a stream in a consumer group needs the group's grant: nobody takes another
    service's events by naming its group."""
    expected = {
        ("shipping", "billing"): DENIED,
        ("shipping", "billing-2"): DENIED,
        ("billing", "shipping"): DENIED,
        ("intruder", "billing"): DENIED,  # any group, but not on this topic
        ("shipping", "shipping"): OK,
        ("billing", "billing-2"): OK,
    }
    got = {}
    for who, group in expected:
        metadata = as_principal(who, issuer)
        got[who, group] = (await outcome(open_stream(stub, metadata, "orders", group)))[0]
    assert got == expected


async def test_a_denied_stream_takes_nothing_from_the_group(
    stub: EventMeshStub, issuer: Issuer
) -> None:
    """Another principal is refused the group, and the events published next all reach
    the group's own member."""
    owner = stub.Subscribe(metadata=bearer(TOKENS["billing"]))
    thief = stub.Subscribe(metadata=bearer(issuer.token("shipping")))
    opening = pb.Open(topic="orders", group="billing-only", credits=10)
    try:
        with anyio.fail_after(10):
            await owner.write(pb.SubscribeRequest(open=opening))
            assert (await owner.read()).WhichOneof("response") == "subscribed"
            await thief.write(pb.SubscribeRequest(open=opening))
            assert await outcome(thief.read()) == (DENIED, "PermissionDeniedError")
            sent = [event() for _ in range(5)]
            await stub.PublishBatch(
                pb.PublishBatchRequest(topic="orders", batch=to_proto_batch(sent)),
                metadata=bearer(TOKENS["billing"]),
            )
            got = []
            while len(got) < len(sent):
                reply = await owner.read()
                got.append(reply.delivery.event.id)
                ack = pb.Ack(delivery_ids=[reply.delivery.delivery_id])
                await owner.write(pb.SubscribeRequest(ack=ack))
            assert sorted(got) == sorted(e.id for e in sent)
    finally:
        owner.cancel()
        thief.cancel()


async def test_a_dead_letter_topic_of_ones_own_needs_publish(
    stub: EventMeshStub, issuer: Issuer
) -> None:
    """A stream whose delivery policy names a dead-letter topic other than the default
    publishes there by nacking, so it needs ``publish`` on it."""
    expected = {
        ("billing", "payments"): DENIED,  # a nack would publish where billing may not
        ("billing", "{group}.failed"): DENIED,
        ("billing", "orders.billing-failed"): OK,  # billing may publish to orders.*
        ("billing", "{topic}.dlq"): OK,  # the default goes with the subscription
        ("billing", None): OK,
        ("shipping", "orders.dlq"): OK,
        ("shipping", "orders.shipping-failed"): DENIED,  # shipping publishes nowhere
    }
    got = {}
    for who, dead_letter in expected:
        group = "billing-dl" if who == "billing" else "shipping"
        delivery = {"dead_letter": dead_letter}
        opened = open_stream(stub, as_principal(who, issuer), "orders", group, delivery)
        got[who, dead_letter] = (await outcome(opened))[0]
    assert got == expected


async def test_the_group_is_checked_as_sent(stub: EventMeshStub) -> None:
    """An empty group is checked as empty (denied where no glob grants it) and, where
    one does, refused by the mesh: no default group is joined unchecked."""
    code, _ = await outcome(open_stream(stub, bearer(TOKENS["billing"]), "orders", ""))
    assert code == DENIED
    code, kind = await outcome(open_stream(stub, bearer(TOKENS["intruder"]), "other", ""))
    assert (code, kind) == (grpc.StatusCode.INVALID_ARGUMENT, "ConfigError")


async def sdk_outcome(target: str, token: str | None, operation: str) -> str:
    """What the remote SDK does with ``token``: "ok" or the class name of its error."""
    try:
        async with eventmesh.connect(f"grpc://{target}", token=token) as client:
            if operation == "publish":
                await client.publish("orders", [event(), event()])
            else:
                await client.subscribe("orders", "billing-sdk").start()
    except EventMeshError as exc:
        return type(exc).__name__
    return "ok"


@pytest.mark.parametrize("operation", ["publish", "subscribe"])
async def test_the_sdk_raises_the_error_each_credential_gets(
    sidecar: Sidecar, issuer: Issuer, stranger: Issuer, operation: str
) -> None:
    """Through ``connect("grpc://...", token=...)``, each kind of credential raises the
    error class its status stands for, or works."""
    tokens = {
        "none": None,
        "wrong token": "not-a-token-anyone-has",
        "expired jwt": issuer.token("billing", expires_in=-3600),
        "jwt of an unknown key": stranger.token("billing"),
        "token without the grant": TOKENS["intruder"],
        "jwt without the grant": issuer.token("shipping"),
        "token with the grant": TOKENS["billing"],
        "jwt with the grant": issuer.token("billing"),
    }
    got = {
        name: await sdk_outcome(sidecar.grpc_target, token, operation)
        for name, token in tokens.items()
    }
    assert got == {name: ERROR_CLASS.get(EXPECTED[name], "ok") for name in tokens}


async def test_the_sdk_raises_unauthenticated_error(sidecar: Sidecar) -> None:
    """The remote SDK without credentials raises UnauthenticatedError on publish and on
    starting a subscription, from the trailers the sidecar sends."""
    async with GrpcClient(sidecar.grpc_target) as client:
        with pytest.raises(UnauthenticatedError, match="no credentials"):
            await client.publish("orders", event())
        with pytest.raises(UnauthenticatedError):
            await client.subscribe("orders", "billing").start()


# -- TLS and mTLS ---------------------------------------------------------------------------

LOCAL_POOL = ("grpc.use_local_subchannel_pool", 1)
"""Each channel connects on its own: a handshake per channel, none shared in the process."""


def tls_listener(issued: Any, client_ca: CertAuthority | None = None) -> dict[str, Any]:
    tls = {"cert_file": str(issued.cert_file), "key_file": str(issued.key_file)}
    if client_ca is not None:
        tls["client_ca_file"] = str(client_ca.cert_file)
    return {**FREE, "grpc": {"port": 0, "tls": tls}}


def secure(sidecar: Sidecar, ca: CertAuthority, client: Any = None) -> grpc.aio.Channel:
    """A TLS channel to the sidecar that trusts only ``ca``, presenting ``client``'s
    certificate when given. The server certificate names localhost and 127.0.0.1."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_file.read_bytes(),
        private_key=client.key_file.read_bytes() if client is not None else None,
        certificate_chain=client.cert_file.read_bytes() if client is not None else None,
    )
    options = [LOCAL_POOL, ("grpc.ssl_target_name_override", "localhost")]
    return grpc.aio.secure_channel(sidecar.grpc_target, creds, options=options)


async def publish(channel: grpc.aio.Channel, metadata: Metadata = ()) -> tuple[Any, Any]:
    """The outcome of one Publish to ``orders`` on ``channel``."""
    request = pb.PublishRequest(topic="orders", event=to_proto(event()))
    return await outcome(EventMeshStub(channel).Publish(request, metadata=metadata, timeout=10))


async def test_tls_carries_tokens(tmp_path: Path, issuer: Issuer) -> None:
    """With server.grpc.tls, a client that trusts the CA publishes with its token, and is
    refused without one."""
    ca = CertAuthority(tmp_path)
    config = {
        "server": tls_listener(ca.issue("sidecar")),
        "auth": auth_config(issuer),
        "acl": ACL,
    }
    async with Sidecar(config) as sidecar, secure(sidecar, ca) as channel:
        assert await publish(channel, bearer(TOKENS["billing"])) == (OK, None)
        assert await publish(channel) == (UNAUTHENTICATED, "UnauthenticatedError")


async def test_mtls_client_certificates_are_principals(tmp_path: Path, issuer: Issuer) -> None:
    """Under mTLS with client_certs, a client certificate's common name is the principal:
    allowed by its ACL rule, denied without one; a client without a certificate never
    gets a call through; a bearer token, when sent, takes precedence."""
    ca = CertAuthority(tmp_path)
    config = {
        "server": tls_listener(ca.issue("sidecar"), client_ca=ca),
        "auth": auth_config(issuer, client_certs={"principal": "subject"}),
        "acl": ACL,
    }
    billing = ca.issue("billing", client=True)
    stranger = ca.issue("stranger", client=True)
    async with Sidecar(config) as sidecar:
        async with secure(sidecar, ca, billing) as channel:
            assert await publish(channel) == (OK, None)
            stub = EventMeshStub(channel)
            assert await outcome(open_stream(stub, (), "orders", "billing")) == (OK, None)
            assert (await outcome(open_stream(stub, (), "orders", "shipping")))[0] == DENIED
            assert await publish(channel, bearer(TOKENS["intruder"])) == (
                DENIED,
                "PermissionDeniedError",
            )
        async with secure(sidecar, ca, stranger) as channel:
            assert await publish(channel) == (DENIED, "PermissionDeniedError")
            assert await publish(channel, bearer(TOKENS["billing"])) == (OK, None)
        async with secure(sidecar, ca) as channel:
            code, kind = await publish(channel, bearer(TOKENS["billing"]))
            assert (code, kind) == (grpc.StatusCode.UNAVAILABLE, None)


async def test_a_renewed_grpc_certificate_is_served_without_a_restart(
    tmp_path: Path, issuer: Issuer
) -> None:
    """Certificate files rewritten with one from a new CA are served to new connections
    at once: a channel that trusts only the new CA fails before and works after."""
    old, new = CertAuthority(tmp_path / "old", "old CA"), CertAuthority(tmp_path / "new", "new CA")
    served = old.issue("sidecar", stem="server")
    config = {"server": tls_listener(served), "auth": auth_config(issuer), "acl": ACL}
    token = bearer(TOKENS["billing"])
    async with Sidecar(config) as sidecar:
        async with secure(sidecar, new) as channel:
            assert (await publish(channel, token))[0] == grpc.StatusCode.UNAVAILABLE
        renewed = new.issue("sidecar", stem="renewed")
        served.key_file.write_bytes(renewed.key_file.read_bytes())
        served.cert_file.write_bytes(renewed.cert_file.read_bytes())
        async with secure(sidecar, new) as channel:
            assert await publish(channel, token) == (OK, None)
            assert await publish(channel) == (UNAUTHENTICATED, "UnauthenticatedError")
        async with secure(sidecar, old) as channel:
            assert (await publish(channel, token))[0] == grpc.StatusCode.UNAVAILABLE
