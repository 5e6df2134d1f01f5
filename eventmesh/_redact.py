"""Secrets kept out of what the mesh shows: API answers, log lines and error messages.

One place decides what a secret looks like, so every path that renders a URL, a set
of headers or a connector's config hides the same things (docs/security.md):

* a URL's password (``user:***@host``; a user name alone, the credential then, as
  ``***@host``) and the values of token-ish query parameters
  (``?token=***``: :data:`SECRET_PARAMS`, and any name containing one of
  :data:`SECRET_WORDS`);
* every header value (names are shown, values are ``***``);
* the fields of a config whose name is a secret's (:func:`is_secret_name`), and any
  URL inside one.

Rendering, not the hot path: these run when a resource is asked for or a message is
built, never per event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

__all__ = [
    "MASK",
    "SECRET_NAMES",
    "SECRET_PARAMS",
    "SECRET_WORDS",
    "is_secret_name",
    "redact_config",
    "redact_headers",
    "redact_url",
    "redacted_repr",
]

MASK: Final = "***"
"""What a secret is shown as."""

SECRET_PARAMS: Final = frozenset(
    {
        "token",
        "access_token",
        "key",
        "apikey",
        "api_key",
        "secret",
        "password",
        "sig",
        "signature",
        "code",
    }
)
"""Query parameters whose values are masked (matched without regard to case)."""

SECRET_NAMES: Final = frozenset(
    {
        "password",
        "sasl_plain_password",
        "token",
        "credentials",
        "user_credentials",
        "nkeys_seed",
        "signing_secret",
        "authorization",
    }
)
"""Config fields whose values are masked, besides any name with a :data:`SECRET_WORDS`."""

SECRET_WORDS: Final = (
    "secret",
    "password",
    "passwd",
    "token",
    "credential",
    "apikey",
    "api_key",
    "seed",
)
"""A config field or query parameter whose name contains one of these is a secret."""


def is_secret_name(name: str) -> bool:
    """Whether a config field or query parameter called ``name`` holds a secret."""
    lowered = name.lower()
    return (
        lowered in SECRET_NAMES
        or lowered in SECRET_PARAMS
        or any(word in lowered for word in SECRET_WORDS)
    )


def redact_url(url: str) -> str:
    """``url`` with its password and token-ish query values replaced by ``***``.

    A string that does not parse as a URL is shown as ``***`` whole: it may be a
    secret pasted in the wrong place.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        # A user name without a password is the credential itself: a NATS token
        # (nats://TOKEN@host), or Basic credentials that aiohttp sends for https://TOKEN@,
        # and so is one with an empty password (curl -u TOKEN: writes https://TOKEN:@).
        netloc = f"{user}:{MASK}@{host}" if colon and password else f"{MASK}@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True) if query else []
    if any(is_secret_name(name) for name, _ in pairs):
        query = "&".join(
            f"{quote(name, safe='')}={MASK if is_secret_name(name) else quote(value, safe='')}"
            for name, value in pairs
        )
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    """The header names, each with the value ``***``: any header may carry a credential."""
    return {str(name): MASK for name in headers}


def redact_config(value: Any, *, name: str = "") -> Any:
    """A config rendered as builtins (dicts, lists, strings) with every secret masked:
    fields named as secrets (:func:`is_secret_name`), header values (under a
    ``headers`` field) and the credentials of any URL. ``name`` is the field ``value``
    was found under."""
    if isinstance(value, Mapping):
        if name.lower() == "headers":
            return redact_headers(value)
        return {
            key: (
                MASK
                if is_secret_name(str(key)) and item is not None
                else redact_config(item, name=str(key))
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_config(item, name=name) for item in value]
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def redacted_repr(struct: Any) -> str:
    """``repr`` of a config struct with its secrets masked, for a ``__repr__`` that may
    be printed or logged whole: a field named as a secret (:func:`is_secret_name`) shows
    ``***``, and strings, lists and mappings are shown as :func:`redact_config` renders
    them (header values, URL credentials); other values (nested structs) as they are."""
    parts = []
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        if value is not None and is_secret_name(name):
            value = MASK
        elif isinstance(value, str | list | tuple | Mapping):
            value = redact_config(value, name=name)
        parts.append(f"{name}={value!r}")
    return f"{type(struct).__name__}({', '.join(parts)})"
