"""Who a caller is and what it may do: principals and ACL rules (docs/security.md).

A caller proves who it is with a static bearer token, a JWT or a TLS client certificate;
the name it proves is its *principal*. ``acl:`` rules grant principals actions on topic
and consumer-group globs. The sidecar's servers ask :class:`Authenticator` and
:class:`Acl` once per request; nothing here knows HTTP or gRPC, and nothing here holds a
token in plain text (static tokens are kept as SHA-256 digests).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from eventmesh._duration import Duration
from eventmesh.errors import ConfigError, PermissionDeniedError, UnauthenticatedError

__all__ = [
    "ACTIONS",
    "ANONYMOUS",
    "Acl",
    "AclRule",
    "Action",
    "AuthConfig",
    "Authenticator",
    "CertIdentity",
    "ClientCertConfig",
    "Guard",
    "JwtConfig",
    "Principal",
    "TokenSpec",
    "glob_match",
    "read_secret",
    "resolve_tokens",
]

Action = Literal["publish", "subscribe", "manage", "admin"]
"""``publish`` and ``subscribe`` on topics (``subscribe`` also needs the group);
``manage``: read, change and delete other principals' subscriptions on the topics;
``admin``: the admin port (everything but ``/healthz`` and ``/readyz``)."""

ACTIONS: Final[tuple[Action, ...]] = ("publish", "subscribe", "manage", "admin")

# Asymmetric algorithms only: a JWKS holds public keys, and "none" is never accepted.
_JWT_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_MAX_TOKEN: Final = 8192  # characters of one bearer token; longer is refused unread
_CACHE_SIZE: Final = 4096  # verified JWTs and ACL verdicts kept; cleared when full
_CACHED_NAME: Final = 256
"""The longest topic or group whose ACL verdict is cached (limits.max_name_length is 249
by default): a caller naming longer ones, which the mesh refuses anyway, must not fill
the cache with them."""
_SHOWN_NAME: Final = 120
"""Characters of a topic or group a refusal quotes."""


class TokenSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One static bearer token: its principal and exactly one of ``sha256`` (the hex
    digest of the token), ``file`` (a file that holds the token) or ``env`` (an
    environment variable that holds it). The token itself never appears in the config."""

    principal: str
    sha256: str | None = None
    file: str | None = None
    env: str | None = None

    def __post_init__(self) -> None:
        if not self.principal:
            raise ValueError("a token needs a principal name")
        given = [k for k in ("sha256", "file", "env") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of sha256 (hex digest of the token), file or env, "
                f"got {given or 'none'}"
            )
        if self.sha256 is not None and not _is_digest(self.sha256):
            raise ValueError(
                "sha256 must be 64 hex digits: the output of `printf %s TOKEN | sha256sum`"
            )


class JwtConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """JWTs signed by keys of a JWKS: checked for signature, ``exp``, ``nbf``, and, when
    set here, ``iss`` and ``aud``. The principal is the ``principal_claim`` claim."""

    jwks_file: str | None = None
    """A JSON Web Key Set file (public keys)."""
    jwks_url: str | None = None
    """A JWKS URL, fetched at start and again when a token names a key not yet known."""
    issuer: str | None = None
    audience: list[str] = msgspec.field(default_factory=list)
    principal_claim: str = "sub"
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    leeway: Duration = Duration(30.0)
    """Clock skew allowed on ``exp`` and ``nbf``."""

    def __post_init__(self) -> None:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of jwks_file or jwks_url")
        wrong = sorted(set(self.algorithms) - _JWT_ALGORITHMS)
        if wrong or not self.algorithms:
            raise ValueError(
                f"algorithms {wrong or '[]'} are not accepted; "
                f"choose from {sorted(_JWT_ALGORITHMS)}"
            )


class ClientCertConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """TLS client certificates (mTLS) as credentials: the principal is the subject's
    common name, or the first DNS or URI subject alternative name."""

    principal: Literal["subject", "san"] = "subject"


class AuthConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How callers of the sidecar prove who they are (``auth:``)."""

    tokens: list[TokenSpec] = msgspec.field(default_factory=list)
    jwt: JwtConfig | None = None
    client_certs: ClientCertConfig | None = None

    @property
    def enabled(self) -> bool:
        """Whether any kind of credential is configured (then every call needs one)."""
        return bool(self.tokens) or self.jwt is not None or self.client_certs is not None


class AclRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Grants ``principal`` (a name, or a glob such as ``"*"``) the actions in ``allow``
    on the ``topics`` globs; ``subscribe`` also needs the consumer group to match one of
    ``groups``. ``*`` in a glob matches any run of characters, dots included."""

    principal: str
    allow: list[Action]
    topics: list[str] = msgspec.field(default_factory=list)
    groups: list[str] = msgspec.field(default_factory=list)
    webhook_networks: list[str] = msgspec.field(default_factory=list)
    """CIDRs the webhooks of a matching principal must point into, besides
    ``server.webhook.allowed_networks`` (empty: no narrowing)."""

    def __post_init__(self) -> None:
        for text in self.webhook_networks:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(
                    f"webhook_networks: {text!r} is not a network; write it in CIDR form, "
                    "such as '10.0.0.0/8' or '::1/128'"
                ) from None
        if not self.allow:
            raise ValueError("allow must name at least one of " + ", ".join(ACTIONS))
        if any(a in ("publish", "subscribe", "manage") for a in self.allow) and not self.topics:
            raise ValueError("publish, subscribe and manage need the topics they apply to")
        if "subscribe" in self.allow and not self.groups:
            raise ValueError("subscribe needs the consumer groups it may join (groups: [...])")


class Principal(msgspec.Struct, frozen=True):
    """An authenticated caller: its name and how it proved it."""

    name: str
    via: Literal["token", "jwt", "cert", "anonymous"]


ANONYMOUS: Final = Principal("anonymous", "anonymous")


class CertIdentity(msgspec.Struct, frozen=True):
    """What a verified client certificate says of its holder."""

    subject_cn: str | None = None
    sans: tuple[str, ...] = ()

    @classmethod
    def from_peercert(cls, cert: Mapping[str, Any] | None) -> CertIdentity | None:
        """From ``ssl.SSLSocket.getpeercert()`` of a verified peer (None: no certificate)."""
        if not cert:
            return None
        cn = next(
            (value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"),
            None,
        )
        sans = tuple(v for k, v in cert.get("subjectAltName", ()) if k in ("DNS", "URI"))
        return cls(cn, sans)

    @classmethod
    def from_grpc(cls, auth_context: Mapping[str, Iterable[bytes]]) -> CertIdentity | None:
        """From a gRPC server context's ``auth_context()`` (None: no client certificate).

        The certificate itself (``x509_pem_cert``) is read, so the names are taken exactly
        as :meth:`from_peercert` takes them over HTTP: the subject's common name, and the
        DNS and URI alternative names in the certificate's order (gRPC's own list mixes in
        e-mail addresses and IPs)."""
        pem = next(iter(auth_context.get("x509_pem_cert", ())), None)
        if pem is None:
            return None
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        try:
            cert = x509.load_pem_x509_certificate(pem)
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            cn = str(names[0].value) if names else None
            try:
                alternatives: x509.SubjectAlternativeName | None = (
                    cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                )
            except x509.ExtensionNotFound:
                alternatives = None
        except ValueError:
            return None  # not a certificate we can read: no identity from it
        sans = tuple(
            str(name.value)
            for name in (alternatives or ())
            if isinstance(name, x509.DNSName | x509.UniformResourceIdentifier)
        )
        return cls(cn, sans)


def read_secret(source: Literal["env", "file"], ref: str, env: Mapping[str, str]) -> str:
    """The secret that ``{env: ref}`` or ``{file: ref}`` names: the variable's value in
    ``env``, or the file's text without surrounding white space. ValueError, saying which
    source is missing, unreadable or empty, never with the secret in it."""
    if source == "env":
        secret = env.get(ref)
        if secret is None:
            raise ValueError(f"the environment variable {ref} is not set")
    else:
        try:
            secret = Path(ref).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read {ref!r} ({exc.strerror})") from exc
    if not secret:
        raise ValueError(f"the secret from {source} {ref} is empty")
    return secret


def resolve_tokens(auth: AuthConfig, env: Mapping[str, str], *, key: str = "auth") -> AuthConfig:
    """``auth`` with every token from a file or an environment variable replaced by its
    digest, so the token is read once, at load time, and not kept; ConfigError names the
    token whose source is missing or empty."""
    tokens = []
    for i, spec in enumerate(auth.tokens):
        if spec.sha256 is not None:
            tokens.append(msgspec.structs.replace(spec, sha256=spec.sha256.lower()))
            continue
        try:
            if spec.file is not None:
                secret = read_secret("file", spec.file, env)
            else:
                secret = read_secret("env", spec.env or "", env).strip()
                if not secret:
                    raise ValueError(f"the secret from env {spec.env} is empty")
        except ValueError as exc:
            raise ConfigError(str(exc), key=f"{key}.tokens[{i}]") from exc
        tokens.append(TokenSpec(principal=spec.principal, sha256=_digest(secret)))
    return msgspec.structs.replace(auth, tokens=tokens)


class Authenticator:
    """Turns the credentials of one call into a :class:`Principal`, or refuses it.

    With nothing configured every call is :data:`ANONYMOUS`. Refusals are
    UnauthenticatedError whose message says what was missing, never why a token was
    wrong. Comparisons of static tokens are constant-time; verified JWTs are cached
    until they expire.
    """

    def __init__(self, config: AuthConfig, *, jwks: Mapping[str, Any] | None = None) -> None:
        self.config = config
        for i, spec in enumerate(config.tokens):
            if spec.sha256 is None:
                raise ConfigError(
                    "a token from file: or env: is read by load_config (resolve_tokens) "
                    "before the sidecar uses it",
                    key=f"auth.tokens[{i}]",
                )
        self._digests = [(bytes.fromhex(t.sha256 or ""), t.principal) for t in config.tokens]
        self._jwt = config.jwt
        self._keys: dict[str | None, Any] = {}
        self._verified: dict[str, tuple[Principal, float]] = {}
        self.unknown_key: Callable[[str | None], None] | None = None
        """Called with the ``kid`` of a JWT signed by a key the JWKS in use lacks."""
        if jwks is not None:
            self.set_jwks(jwks)

    @property
    def enabled(self) -> bool:
        """Whether calls must carry credentials."""
        return self.config.enabled

    def set_jwks(self, jwks: Mapping[str, Any]) -> None:
        """Use the keys of this JSON Web Key Set from now on (a refreshed JWKS)."""
        import jwt

        try:
            keyset = jwt.PyJWKSet.from_dict(dict(jwks))
        except jwt.PyJWTError as exc:
            raise ConfigError(f"the JWKS holds no usable key ({exc})", key="auth.jwt") from exc
        self._keys = {key.key_id: key for key in keyset.keys}
        self._verified.clear()

    def knows_key(self, kid: str | None) -> bool:
        """Whether the JWKS in use has a key with this ``kid`` (to decide on a refetch)."""
        return self._key(kid) is not None

    def _key(self, kid: str | None) -> Any:
        """The JWKS key a token's ``kid`` names; a token without one may use the only
        key of a one-key set. None when there is no such key."""
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        return key

    def authenticate(
        self, authorization: str | None, *, cert: CertIdentity | None = None
    ) -> Principal:
        """The principal of a call from its ``Authorization`` header (or gRPC
        ``authorization`` metadata) and its verified client certificate."""
        if not self.enabled:
            return ANONYMOUS
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise UnauthenticatedError(
                    "the authorization must be 'Bearer <token>'; other schemes are not accepted"
                )
            if len(token) > _MAX_TOKEN:
                raise UnauthenticatedError("the bearer token was not accepted")
            if self._jwt is not None and token.count(".") == 2:
                return self._from_jwt(token)
            return self._from_token(token)
        if cert is not None and self.config.client_certs is not None:
            return self._from_cert(cert)
        wanted = []
        if self._digests or self._jwt is not None:
            wanted.append("an 'Authorization: Bearer <token>' header")
        if self.config.client_certs is not None:
            wanted.append("a TLS client certificate")
        raise UnauthenticatedError("no credentials: send " + " or ".join(wanted))

    def _from_token(self, token: str) -> Principal:
        # surrogateescape: a header's bytes that are not UTF-8 (aiohttp keeps them as
        # surrogates) are hashed as sent, so they are a token not accepted, not a crash.
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for expected, principal in self._digests:  # every one, so timing tells nothing
            if hmac.compare_digest(digest, expected):
                found = principal
        if found is None:
            raise UnauthenticatedError("the bearer token was not accepted")
        return Principal(found, "token")

    def _from_jwt(self, token: str) -> Principal:
        cached = self._verified.get(token)
        now = time.time()
        if cached is not None and cached[1] > now:
            return cached[0]
        import jwt

        assert self._jwt is not None
        config = self._jwt
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._key(kid)
            if key is None:
                if self.unknown_key is not None:
                    self.unknown_key(kid)  # a rotated JWKS: its owner may fetch it again
                raise UnauthenticatedError("the bearer token was not accepted")
            required = (
                ["exp"] + (["iss"] if config.issuer else []) + (["aud"] if config.audience else [])
            )
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=config.algorithms,
                audience=config.audience or None,
                issuer=config.issuer,
                leeway=config.leeway,
                options={"require": required},
            )
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            # TypeError: the header's alg is allowed but of another key type than the key
            # it names (ES256 on an RSA key); ValueError: bytes that are not UTF-8. Both
            # come from tokens anyone can write, so they are refusals, not crashes.
            raise UnauthenticatedError("the bearer token was not accepted") from exc
        name = claims.get(config.principal_claim)
        if not isinstance(name, str) or not name:
            raise UnauthenticatedError("the bearer token was not accepted")
        principal = Principal(name, "jwt")
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (principal, float(claims["exp"]))
        return principal

    def _from_cert(self, cert: CertIdentity) -> Principal:
        assert self.config.client_certs is not None
        if self.config.client_certs.principal == "subject":
            name = cert.subject_cn
        else:
            name = cert.sans[0] if cert.sans else None
        if not name:
            raise UnauthenticatedError(
                "the client certificate has no "
                + (
                    "subject common name"
                    if self.config.client_certs.principal == "subject"
                    else "DNS or URI SAN"
                )
            )
        return Principal(name, "cert")


class Acl:
    """The ``acl:`` rules, asked once per call: may this principal do this here?

    With auth off (no rules needed) every call is allowed; with auth on, what no rule
    grants is denied. Verdicts are cached per (principal, action, topic, group).
    """

    def __init__(self, rules: Sequence[AclRule], *, enforce: bool) -> None:
        self.rules = list(rules)
        self.enforce = enforce
        self._cache: dict[tuple[str, str, str | None, str | None], bool] = {}

    def allows(
        self, principal: str, action: Action, *, topic: str | None = None, group: str | None = None
    ) -> bool:
        """Whether some rule grants ``action`` to ``principal`` on ``topic`` (and, for
        ``subscribe`` with a group, on ``group``)."""
        if not self.enforce:
            return True
        key = (principal, action, topic, group)
        verdict = self._cache.get(key)
        if verdict is None:
            verdict = any(self._grants(rule, *key) for rule in self.rules)
            if len(topic or "") <= _CACHED_NAME and len(group or "") <= _CACHED_NAME:
                if len(self._cache) >= _CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = verdict
        return verdict

    def check(
        self, principal: str, action: Action, *, topic: str | None = None, group: str | None = None
    ) -> None:
        """Raise PermissionDeniedError unless :meth:`allows`."""
        if self.allows(principal, action, topic=topic, group=group):
            return
        what = f"{action} on topic {_shown(topic)}" if topic is not None else action
        if group is not None:
            what += f" in group {_shown(group)}"
        raise PermissionDeniedError(
            f"principal {principal!r} may not {what}: no acl rule grants it "
            "(add one to acl: in the sidecar's config)"
        )

    @staticmethod
    def _grants(
        rule: AclRule, principal: str, action: str, topic: str | None, group: str | None
    ) -> bool:
        if action not in rule.allow or not glob_match(rule.principal, principal):
            return False
        if topic is not None and not any(glob_match(t, topic) for t in rule.topics):
            return False
        return group is None or any(glob_match(g, group) for g in rule.groups)


def _shown(name: str) -> str:
    """``name`` quoted for a message, cut short when it is long."""
    if len(name) <= _SHOWN_NAME:
        return repr(name)
    return f"{name[:_SHOWN_NAME]!r}... ({len(name)} characters)"


def glob_match(pattern: str, text: str) -> bool:
    """Whether ``text`` matches ``pattern``, where ``*`` is any run of characters (and
    nothing else is special); linear in ``len(text)``, whatever the pattern."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern == text
    first, last = parts[0], parts[-1]
    if len(first) + len(last) > len(text) or not text.startswith(first) or not text.endswith(last):
        return False
    pos, end = len(first), len(text) - len(last)
    for part in parts[1:-1]:
        found = text.find(part, pos, end)
        if found < 0:
            return False
        pos = found + len(part)
    return True


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _is_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


class Guard:
    """What the sidecar's servers ask of every call: who is it (:meth:`principal`), and
    may it do this (:meth:`check`, :meth:`may_manage`). Built once from ``auth:`` and
    ``acl:``; with no ``auth:`` every call is :data:`ANONYMOUS` and allowed."""

    def __init__(
        self,
        auth: AuthConfig | None = None,
        acl: Sequence[AclRule] = (),
        *,
        jwks: Mapping[str, Any] | None = None,
    ) -> None:
        self.auth = auth or AuthConfig()
        self.authenticator = Authenticator(self.auth, jwks=jwks)
        self.acl = Acl(acl, enforce=self.auth.enabled)
        self._networks = [
            (rule.principal, [ipaddress.ip_network(n, strict=False) for n in rule.webhook_networks])
            for rule in self.acl.rules
            if rule.webhook_networks
        ]

    @property
    def enabled(self) -> bool:
        """Whether calls must carry credentials and are checked against the ACL."""
        return self.auth.enabled

    def principal(self, authorization: str | None, cert: CertIdentity | None = None) -> Principal:
        """The caller, or UnauthenticatedError (see :meth:`Authenticator.authenticate`)."""
        return self.authenticator.authenticate(authorization, cert=cert)

    def check(
        self,
        principal: Principal,
        action: Action,
        *,
        topic: str | None = None,
        group: str | None = None,
    ) -> None:
        """PermissionDeniedError unless the ACL grants ``action`` here."""
        self.acl.check(principal.name, action, topic=topic, group=group)

    def webhook_networks(
        self, principal: Principal
    ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
        """The networks ``principal``'s webhooks must point into (the union of the
        ``webhook_networks`` of the rules that match it), or None when none narrows."""
        if not self.enabled:
            return None
        found = [
            net
            for pattern, nets in self._networks
            if glob_match(pattern, principal.name)
            for net in nets
        ]
        return found or None

    def may_manage(self, principal: Principal, owner: str | None, topic: str) -> bool:
        """Whether ``principal`` may read, change or delete a subscription of ``owner``
        on ``topic``: its own (with auth on, one it made), or any with ``manage``."""
        if not self.enabled:
            return True
        if owner is not None and owner == principal.name:
            return True
        return self.acl.allows(principal.name, "manage", topic=topic)
