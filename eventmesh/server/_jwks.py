"""The JSON Web Key Set of ``auth.jwt``: read from its file at start, or fetched from its
URL at start and again every ``REFRESH`` seconds and whenever a token names a key the set
lacks (at most once per ``MIN_INTERVAL``), so a rotated key works without a restart."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import msgspec

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
        except (OSError, ValueError, msgspec.DecodeError) as exc:
            source = self.config.jwks_file or self.config.jwks_url
            raise ConfigError(
                f"cannot load the JWKS from {source!r}: {exc}", key="auth.jwt"
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
            except (OSError, ValueError, msgspec.DecodeError, ConfigError) as exc:
                log.warning("could not refresh the JWKS from %s: %s", self.config.jwks_url, exc)
            self._last = anyio.current_time()

    async def _read(self) -> Any:
        if self.config.jwks_file is not None:
            body = await anyio.Path(Path(self.config.jwks_file)).read_bytes()
        else:
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=TIMEOUT)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.config.jwks_url or "") as response,
            ):
                if response.status != 200:
                    raise ValueError(f"the JWKS URL answered HTTP {response.status}")
                body = await response.content.read(MAX_SIZE + 1)
        if len(body) > MAX_SIZE:
            raise ValueError(f"the JWKS is larger than {MAX_SIZE} bytes")
        return msgspec.json.decode(body)
