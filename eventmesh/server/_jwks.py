"""The JSON Web Key Set of ``auth.jwt``: read from its file at start, or fetched from its
URL at start and again every ``REFRESH`` seconds and whenever a token names a key the set
lacks (at most once per ``MIN_INTERVAL``), so a rotated key works without a restart."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

import aiohttp
import anyio
import anyio.abc
import msgspec

from eventmesh._redact import redact_url
from eventmesh.auth import Authenticator, JwtConfig
from eventmesh.errors import ConfigError

__all__ = ["JwksSource"]

log = logging.getLogger(__name__)

REFRESH: Final = 300.0
MIN_INTERVAL: Final = 30.0
MAX_SIZE: Final = 1024 * 1024
TIMEOUT: Final = 10.0


class JwksSource:
    """Keeps an Authenticator's JWKS current (module docstring)."""

    def __init__(self, authenticator: Authenticator, config: JwtConfig) -> None:
        self.authenticator = authenticator
        self.config = config
        self._wanted = anyio.Event()
        self._last = -MIN_INTERVAL
        authenticator.unknown_key = self._unknown

    def _unknown(self, kid: str | None) -> None:
        if self.config.jwks_url is not None:
            self._wanted.set()

    async def load(self) -> None:
        """The first load: ConfigError when the set cannot be had (the sidecar does not
        start without the keys it was told to check tokens against)."""
        try:
            self.authenticator.set_jwks(await self._read())
        except (
            OSError,
            ValueError,
            TypeError,
            RecursionError,
            msgspec.DecodeError,
            aiohttp.ClientError,
        ) as exc:
            source = self.config.jwks_file or redact_url(self.config.jwks_url or "")
            raise ConfigError(
                f"cannot load the JWKS from {source!r}: {_describe(exc)}", key="auth.jwt"
            ) from exc
        self._last = anyio.current_time()

    async def run(self) -> None:
        """Refetch a URL's set until cancelled (a file's is read once)."""
        if self.config.jwks_url is None:
            return
        while True:
            with anyio.move_on_after(REFRESH):
                await self._wanted.wait()
            wait = self._last + MIN_INTERVAL - anyio.current_time()
            if wait > 0:
                await anyio.sleep(wait)
            self._wanted = anyio.Event()
            try:
                self.authenticator.set_jwks(await self._read())
            except Exception as exc:  # whatever the IdP answers, the keys in use stay
                # A refresh must never end this task: its failure would cancel the
                # sidecar's task group and stop the sidecar. Hang-ups (aiohttp's
                # ClientError), JSON that is not a key set (TypeError): log, keep the old.
                log.warning(
                    "could not refresh the JWKS from %s, keeping the keys in use: %s",
                    redact_url(self.config.jwks_url),
                    _describe(exc),
                )
            self._last = anyio.current_time()

    async def _read(self) -> Any:
        if self.config.jwks_file is not None:
            body = await anyio.Path(Path(self.config.jwks_file)).read_bytes()
        else:
            timeout = aiohttp.ClientTimeout(total=TIMEOUT)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.config.jwks_url or "") as response,
            ):
                if response.status != 200:
                    raise ValueError(f"the JWKS URL answered HTTP {response.status}")
                # read(n) returns what has arrived so far, not n bytes: read to the end.
                chunks: list[bytes] = []
                size = 0
                while size <= MAX_SIZE and (chunk := await response.content.read(MAX_SIZE)):
                    chunks.append(chunk)
                    size += len(chunk)
                body = b"".join(chunks)
        if len(body) > MAX_SIZE:
            raise ValueError(f"the JWKS is larger than {MAX_SIZE} bytes")
        keys = msgspec.json.decode(body)
        if not isinstance(keys, dict):
            raise ValueError(f"the JWKS is a JSON {type(keys).__name__}, not an object")
        return keys


def _describe(exc: BaseException) -> str:
    """An error for a log line: its message, or its class when it has none (aiohttp's
    hang-ups)."""
    return str(exc) or type(exc).__name__
