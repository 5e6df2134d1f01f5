"""Principals from tokens, JWTs and client certificates, and ACL verdicts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from eventmesh.auth import (
    Acl,
    AclRule,
    AuthConfig,
    Authenticator,
    CertIdentity,
    ClientCertConfig,
    Guard,
    JwtConfig,
    Principal,
    TokenSpec,
    glob_match,
    resolve_tokens,
)
from eventmesh.errors import ConfigError, PermissionDeniedError, UnauthenticatedError
from eventmesh.testing.certs import CertAuthority

SECRET = "s3cret-token-for-billing"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens(**principals: str) -> Authenticator:
    specs = [TokenSpec(principal=p, sha256=digest(t)) for p, t in principals.items()]
    return Authenticator(AuthConfig(tokens=specs))


class Signer:
    """An RSA key with its JWKS, signing tokens as an identity provider would."""

    def __init__(self, kid: str = "k1") -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [{**public, "kid": kid, "alg": "RS256", "use": "sig"}]}

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        body = {"sub": "billing", "iss": "https://idp", "aud": "eventmesh", "exp": now + 60}
        body.update(claims)
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None},
            self.key,
            algorithm="RS256",
            headers={"kid": self.kid},
        )


def hs256(claims: dict[str, Any], *, kid: str, secret: bytes) -> str:
    """A token MACed with ``secret`` (the algorithm-confusion attack on RS256 keys)."""

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, head + b"." + body, hashlib.sha256).digest()
    return (head + b"." + body + b"." + b64(mac)).decode()


def jwt_auth(signer: Signer, **options: Any) -> Authenticator:
    config = JwtConfig(jwks_url="https://idp/jwks", issuer="https://idp", audience=["eventmesh"])
    config = msgspec.structs.replace(config, **options)
    return Authenticator(AuthConfig(jwt=config), jwks=signer.jwks)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def test_without_auth_every_call_is_anonymous() -> None:
    """With nothing configured no credentials are asked for."""
    principal = Authenticator(AuthConfig()).authenticate(None)
    assert principal.via == "anonymous"


def test_a_static_token_names_its_principal() -> None:
    """The bearer token whose digest is configured authenticates its principal."""
    auth = tokens(billing=SECRET, shipping="other-token")
    assert auth.authenticate(f"Bearer {SECRET}").name == "billing"
    assert auth.authenticate("bearer other-token").name == "shipping"


@pytest.mark.parametrize(
    ("header", "said"),
    [
        (None, "no credentials"),
        ("", "no credentials"),
        ("Basic dXNlcjpwYXNz", "'Bearer <token>'"),
        ("Bearer", "'Bearer <token>'"),
        ("Bearer wrong-token", "not accepted"),
        (f"Bearer {SECRET}x", "not accepted"),
        ("Bearer " + "x" * 10_000, "not accepted"),
    ],
)
def test_a_call_without_a_good_token_is_refused(header: str | None, said: str) -> None:
    """Missing, malformed and wrong tokens are refused, saying what was missing only."""
    with pytest.raises(UnauthenticatedError, match=said) as caught:
        tokens(billing=SECRET).authenticate(header)
    assert SECRET not in str(caught.value)


def test_tokens_from_a_file_and_the_environment_are_kept_as_digests(tmp_path: Path) -> None:
    """resolve_tokens reads file: and env: tokens once and keeps only their digests."""
    (tmp_path / "token").write_text("from-a-file\n")
    config = AuthConfig(
        tokens=[
            TokenSpec(principal="a", file=str(tmp_path / "token")),
            TokenSpec(principal="b", env="B_TOKEN"),
            TokenSpec(principal="c", sha256=digest("plain").upper()),
        ]
    )
    resolved = resolve_tokens(config, {"B_TOKEN": "from-the-env"})
    assert all(t.file is None and t.env is None for t in resolved.tokens)
    assert "from-a-file" not in repr(resolved)
    assert "from-the-env" not in repr(resolved)
    auth = Authenticator(resolved)
    assert auth.authenticate("Bearer from-a-file").name == "a"
    assert auth.authenticate("Bearer from-the-env").name == "b"
    assert auth.authenticate("Bearer plain").name == "c"


def test_a_missing_token_source_names_the_token(tmp_path: Path) -> None:
    """An unset variable or an unreadable file is a ConfigError naming the token."""
    config = AuthConfig(tokens=[TokenSpec(principal="a", sha256=digest("x"))] * 1)
    config = AuthConfig(tokens=[*config.tokens, TokenSpec(principal="b", env="NOPE")])
    with pytest.raises(ConfigError, match=r"auth\.tokens\[1\].*NOPE"):
        resolve_tokens(config, {})
    missing = AuthConfig(tokens=[TokenSpec(principal="a", file=str(tmp_path / "none"))])
    with pytest.raises(ConfigError, match=r"auth\.tokens\[0\].*cannot read"):
        resolve_tokens(missing, {})


@pytest.mark.parametrize(
    "fields",
    [
        {"principal": "a"},
        {"principal": "a", "sha256": digest("x"), "env": "X"},
        {"principal": "a", "sha256": "not-hex"},
        {"principal": "", "env": "X"},
    ],
)
def test_a_token_spec_needs_one_source_and_a_digest_of_the_right_form(
    fields: dict[str, str],
) -> None:
    """A token spec with no source, two sources, a bad digest or no principal is refused."""
    with pytest.raises(ValueError, match=r"sha256|principal|exactly one"):
        TokenSpec(**fields)


def test_a_valid_jwt_names_its_principal(signer: Signer) -> None:
    """A JWT signed by a JWKS key, in date, for our issuer and audience, is accepted."""
    auth = jwt_auth(signer)
    assert auth.authenticate(f"Bearer {signer.token()}").name == "billing"
    assert auth.authenticate(f"Bearer {signer.token(sub='ops')}").name == "ops"


def test_the_principal_can_come_from_another_claim(signer: Signer) -> None:
    """principal_claim picks the claim that names the caller."""
    auth = jwt_auth(signer, principal_claim="client_id")
    assert auth.authenticate(f"Bearer {signer.token(client_id='svc-a')}").name == "svc-a"
    with pytest.raises(UnauthenticatedError):
        auth.authenticate(f"Bearer {signer.token()}")  # no client_id claim


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) - 120},
        {"exp": None},
        {"nbf": int(time.time()) + 600},
        {"iss": "https://elsewhere"},
        {"iss": None},
        {"aud": "someone-else"},
        {"aud": None},
        {"sub": None},
        {"sub": ""},
    ],
)
def test_a_jwt_out_of_date_or_for_someone_else_is_refused(
    signer: Signer, claims: dict[str, Any]
) -> None:
    """Expired, not yet valid, wrong issuer or audience, or no principal: refused."""
    with pytest.raises(UnauthenticatedError, match="not accepted"):
        jwt_auth(signer).authenticate(f"Bearer {signer.token(**claims)}")


def test_a_jwt_not_signed_by_the_jwks_is_refused(signer: Signer) -> None:
    """Another key, an unknown kid, alg none and an HMAC forged with the public key fail."""
    auth = jwt_auth(signer)
    forged = Signer(kid=signer.kid).token()
    unknown = Signer(kid="k2").token()
    claims = {"sub": "billing", "iss": "https://idp", "aud": "eventmesh", "exp": 2**40}
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": signer.kid})
    hmac_forged = hs256(claims, kid=signer.kid, secret=signer.public_pem())
    for token in (forged, unknown, unsigned, hmac_forged, "a.b.c"):
        with pytest.raises(UnauthenticatedError, match="not accepted"):
            auth.authenticate(f"Bearer {token}")
    assert not auth.knows_key("k2")
    assert auth.knows_key(signer.kid)


def test_a_new_jwks_forgets_tokens_verified_with_the_old_one(signer: Signer) -> None:
    """Verified JWTs are cached, but not across a change of keys (a rotated JWKS)."""
    auth = jwt_auth(signer)
    token = signer.token()
    assert auth.authenticate(f"Bearer {token}").name == "billing"
    auth.set_jwks(Signer(kid=signer.kid).jwks)
    with pytest.raises(UnauthenticatedError):
        auth.authenticate(f"Bearer {token}")


def test_an_elliptic_curve_jwks_works_too() -> None:
    """ES256 keys from a JWKS verify ES256 tokens."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    auth = Authenticator(
        AuthConfig(jwt=JwtConfig(jwks_file="unused")), jwks={"keys": [{**public, "kid": "e"}]}
    )
    token = jwt.encode(
        {"sub": "edge", "exp": int(time.time()) + 60}, key, algorithm="ES256", headers={"kid": "e"}
    )
    assert auth.authenticate(f"Bearer {token}").name == "edge"


def test_jwt_config_refuses_symmetric_and_none_algorithms() -> None:
    """Only asymmetric algorithms may be configured, and one JWKS source."""
    with pytest.raises(ValueError, match="not accepted"):
        JwtConfig(jwks_file="k.json", algorithms=["HS256"])
    with pytest.raises(ValueError, match="not accepted"):
        JwtConfig(jwks_file="k.json", algorithms=["none"])
    with pytest.raises(ValueError, match="exactly one"):
        JwtConfig()


def test_a_client_certificate_names_its_principal() -> None:
    """mTLS: the subject's common name, or the first SAN, as configured."""
    peercert = {
        "subject": ((("organizationName", "Shop"),), (("commonName", "billing"),)),
        "subjectAltName": (("email", "x@y"), ("URI", "spiffe://shop/billing"), ("DNS", "b")),
    }
    identity = CertIdentity.from_peercert(peercert)
    assert identity == CertIdentity("billing", ("spiffe://shop/billing", "b"))
    by_subject = Authenticator(AuthConfig(client_certs=ClientCertConfig()))
    by_san = Authenticator(AuthConfig(client_certs=ClientCertConfig(principal="san")))
    assert by_subject.authenticate(None, cert=identity).name == "billing"
    assert by_san.authenticate(None, cert=identity).name == "spiffe://shop/billing"
    with pytest.raises(UnauthenticatedError, match="TLS client certificate"):
        by_subject.authenticate(None)
    with pytest.raises(UnauthenticatedError, match="SAN"):
        by_san.authenticate(None, cert=CertIdentity("only-cn"))
    assert CertIdentity.from_grpc({}) is None
    assert CertIdentity.from_peercert(None) is None


def test_a_token_still_works_beside_client_certificates() -> None:
    """A bearer token, when sent, decides; a certificate is used when no token is."""
    config = AuthConfig(
        tokens=[TokenSpec(principal="cli", sha256=digest(SECRET))],
        client_certs=ClientCertConfig(),
    )
    auth = Authenticator(config)
    assert auth.authenticate(f"Bearer {SECRET}", cert=CertIdentity("svc")).name == "cli"
    assert auth.authenticate(None, cert=CertIdentity("svc")).name == "svc"
    with pytest.raises(UnauthenticatedError, match="Bearer"):
        auth.authenticate(None)


RULES = [
    AclRule(
        principal="billing",
        allow=["publish", "subscribe"],
        topics=["orders", "orders.*"],
        groups=["billing*"],
    ),
    AclRule(principal="ops-*", allow=["manage", "admin"], topics=["*"]),
    AclRule(principal="*", allow=["publish"], topics=["public.*"]),
]


@pytest.mark.parametrize(
    ("principal", "action", "topic", "group", "allowed"),
    [
        ("billing", "publish", "orders", None, True),
        ("billing", "publish", "orders.eu", None, True),
        ("billing", "publish", "ordersx", None, False),
        ("billing", "subscribe", "orders", "billing-eu", True),
        ("billing", "subscribe", "orders", "shipping", False),
        ("billing", "manage", "orders", None, False),
        ("billing", "admin", None, None, False),
        ("ops-1", "manage", "anything", None, True),
        ("ops-1", "admin", None, None, True),
        ("ops-1", "publish", "orders", None, False),
        ("shipping", "publish", "public.news", None, True),
        ("shipping", "publish", "orders", None, False),
        ("shipping", "subscribe", "public.news", "shipping", False),
    ],
)
def test_acl_grants_only_what_a_rule_names(
    principal: str, action: Any, topic: str | None, group: str | None, allowed: bool
) -> None:
    """A call is allowed only when one rule matches principal, action, topic and group."""
    acl = Acl(RULES, enforce=True)
    assert acl.allows(principal, action, topic=topic, group=group) is allowed
    assert acl.allows(principal, action, topic=topic, group=group) is allowed  # cached
    if not allowed:
        with pytest.raises(PermissionDeniedError, match=repr(principal)):
            acl.check(principal, action, topic=topic, group=group)


def test_verdicts_on_names_too_long_to_exist_are_not_cached_or_echoed_whole() -> None:
    """A caller sending denied calls with huge topic or group names cannot pin them in
    the verdict cache (they were kept, up to 4,096 of them, at any size), and the refusal
    quotes only the start of such a name; the verdict is the same as for a short one."""
    acl = Acl(RULES, enforce=True)
    huge = "x" * 1_000_000
    for n in range(50):
        assert not acl.allows("billing", "publish", topic=f"{n}{huge}")
        assert not acl.allows("billing", "subscribe", topic="orders", group=f"{n}{huge}")
    assert acl.allows("ops-1", "manage", topic=huge)
    assert acl.allows("shipping", "publish", topic=f"public.{huge}")
    assert sum(len(key[2] or "") + len(key[3] or "") for key in acl._cache) < 10_000
    with pytest.raises(PermissionDeniedError) as refused:
        acl.check("billing", "publish", topic=huge)
    assert len(str(refused.value)) < 500
    assert "1000000 characters" in str(refused.value)
    assert acl.allows("billing", "publish", topic="orders")  # short names: cached as before
    assert ("billing", "publish", "orders", None) in acl._cache


def test_without_auth_the_acl_allows_everything() -> None:
    """With auth off no rule is needed."""
    assert Acl([], enforce=False).allows("anonymous", "admin")
    assert not Acl([], enforce=True).allows("anonymous", "publish", topic="t")


def test_acl_rules_must_say_where_they_apply() -> None:
    """Topic actions need topics, subscribe needs groups, and allow is not empty."""
    with pytest.raises(ValueError, match="topics"):
        AclRule(principal="a", allow=["publish"])
    with pytest.raises(ValueError, match="groups"):
        AclRule(principal="a", allow=["subscribe"], topics=["t"])
    with pytest.raises(ValueError, match="allow"):
        AclRule(principal="a", allow=[])
    assert AclRule(principal="a", allow=["admin"]).topics == []


@pytest.mark.parametrize(
    ("pattern", "text", "matched"),
    [
        ("orders", "orders", True),
        ("orders", "orders.eu", False),
        ("orders.*", "orders.eu.west", True),
        ("orders.*", "orders", False),
        ("*", "", True),
        ("*.dlq", "orders.dlq", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "acb", False),
        ("ab*ba", "aba", False),
        ("*a*a*a*a*a*a*a*a*a*a*a*a*b", "a" * 10_000, False),
    ],
)
def test_glob_match(pattern: str, text: str, matched: bool) -> None:
    """'*' matches any run, prefix and suffix may not overlap, no backtracking blow-up."""
    assert glob_match(pattern, text) is matched


def test_an_unresolved_token_source_cannot_be_used() -> None:
    """A file:/env: token that load_config did not resolve is a ConfigError, not a
    token that silently never matches."""
    with pytest.raises(ConfigError, match=r"auth\.tokens\[0\]"):
        Authenticator(AuthConfig(tokens=[TokenSpec(principal="a", env="X")]))


def test_the_guard_lets_owners_and_managers_at_a_subscription() -> None:
    """With auth on, a subscription is its owner's or a manager's; with auth off, anyone's."""
    config = AuthConfig(tokens=[TokenSpec(principal="billing", sha256=digest(SECRET))])
    guard = Guard(config, RULES)
    billing = guard.principal(f"Bearer {SECRET}")
    assert guard.may_manage(billing, "billing", "orders")
    assert not guard.may_manage(billing, "shipping", "orders")
    assert not guard.may_manage(billing, None, "orders")  # the config file's
    assert guard.may_manage(Principal("ops-1", "token"), "shipping", "orders")
    guard.check(billing, "publish", topic="orders")
    with pytest.raises(PermissionDeniedError):
        guard.check(billing, "publish", topic="payments")
    open_guard = Guard()
    assert not open_guard.enabled
    anyone = open_guard.principal(None)
    assert open_guard.may_manage(anyone, "billing", "orders")
    open_guard.check(anyone, "admin")


def test_grpc_reads_the_same_names_from_the_certificate_as_http(tmp_path: Path) -> None:
    """From gRPC's auth context the certificate itself is read: its CN, and only its DNS
    and URI names in order (gRPC's own name list would put an IP address first)."""
    issued = CertAuthority(tmp_path).issue(
        "svc", dns=(), ips=("127.0.0.1",), uris=("spiffe://shop/svc",), client=True
    )
    context = {
        "x509_pem_cert": [issued.cert_file.read_bytes()],
        "x509_common_name": [b"svc"],
        "x509_subject_alternative_name": [b"127.0.0.1", b"spiffe://shop/svc"],
    }
    identity = CertIdentity.from_grpc(context)
    assert identity == CertIdentity("svc", ("spiffe://shop/svc",))
    by_san = Authenticator(AuthConfig(client_certs=ClientCertConfig(principal="san")))
    assert by_san.authenticate(None, cert=identity).name == "spiffe://shop/svc"
    assert CertIdentity.from_grpc({"x509_pem_cert": [b"not a certificate"]}) is None
