"""Where webhooks may connect: an allow-list of networks and hosts, checked after DNS.

A webhook URL is a request to make connections on someone's behalf, so the mesh only
connects to addresses inside the allowed networks (loopback by default). The check is
made on the resolved address, at every new connection, by :class:`AllowListResolver`,
so a name that resolves somewhere else later (DNS rebinding) is refused too. aiohttp
does not resolve a literal IP, so :meth:`AllowList.refuse_literal` checks those before a
request is made. Hosts named in the configuration file are trusted by name: the operator
wrote them, so they may resolve anywhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Final, TypeAlias

from aiohttp.abc import AbstractResolver, ResolveResult

from eventmesh.errors import ConfigError

__all__ = [
    "DEFAULT_NETWORKS",
    "AddressRefused",
    "AllowList",
    "AllowListResolver",
    "normalize_host",
]

DEFAULT_NETWORKS: Final = ("127.0.0.0/8", "::1/128")
"""Loopback, IPv4 and IPv6: a sidecar's webhooks are its own service's endpoints."""

_ADVICE: Final = "add its network to server.webhook.allowed_networks if it is meant to be reached"
_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(OSError):
    """A host resolved only to addresses outside the allowed networks.

    An ``OSError`` so that aiohttp reports it as a connection error; the webhook sink
    finds it there and dead-letters the event instead of retrying.
    """


def normalize_host(host: str) -> str:
    """A host name as aiohttp hands it to the resolver: lower case, IDNA, no trailing dot,
    no IPv6 brackets."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # not a name DNS can hold; it will not match and will not resolve
    return host


def _looks_like_ip(host: str) -> bool:
    # aiohttp's own rule for hosts it does not resolve (aiohttp.helpers.is_ip_address).
    return ":" in host or host.replace(".", "").isdigit()


class AllowList:
    """The networks a webhook may connect into, and the hosts trusted by name.

    ``networks`` are CIDR strings (``"10.0.0.0/8"``); a bad one raises ConfigError at
    ``key``. ``hosts`` are host names (or literal IPs) allowed whatever they resolve to.
    """

    def __init__(
        self,
        networks: Iterable[str] = DEFAULT_NETWORKS,
        hosts: Iterable[str] = (),
        *,
        key: str = "allowed_networks",
    ) -> None:
        parsed: list[_Network] = []
        for i, text in enumerate(networks):
            try:
                parsed.append(ipaddress.ip_network(text, strict=False))
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"{text!r} is not a network; write it in CIDR form, such as "
                    "'10.0.0.0/8' or '::1/128'",
                    key=f"{key}[{i}]",
                ) from exc
        self.networks: tuple[_Network, ...] = tuple(parsed)
        self.hosts: frozenset[str] = frozenset(normalize_host(h) for h in hosts)

    def allows_host(self, host: str) -> bool:
        """True when ``host`` is trusted by name."""
        return normalize_host(host) in self.hosts

    def allows_address(self, address: str | _Address) -> bool:
        """True when the IP ``address`` lies in an allowed network. An IPv4-mapped IPv6
        address counts as the IPv4 address it carries."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def refuse_literal(self, host: str) -> str | None:
        """Why a literal-IP ``host`` may not be reached, or None when it may (or when
        ``host`` is a name, which the resolver checks)."""
        if self.allows_host(host):
            return None
        host = normalize_host(host)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if _looks_like_ip(host):
                return f"{host} is not an IP address in canonical form"
            return None
        if self.allows_address(ip):
            return None
        return f"{ip} is outside the allowed networks ({self.describe()}); {_ADVICE}"

    def filter(self, host: str, addresses: Iterable[str]) -> list[str]:
        """The ``addresses`` that ``host`` may be reached at."""
        if self.allows_host(host):
            return list(addresses)
        return [a for a in addresses if self.allows_address(a)]

    def describe(self) -> str:
        """The allowed networks, for messages."""
        return ", ".join(str(n) for n in self.networks) or "none"

    def refusal(self, host: str, addresses: Iterable[str]) -> str:
        """The message for a host none of whose ``addresses`` is allowed."""
        found = ", ".join(sorted(set(addresses))) or "no address"
        return (
            f"{host} resolves to {found}, outside the allowed networks ({self.describe()}); "
            f"{_ADVICE}"
        )

    async def check(self, host: str, port: int) -> None:
        """Raise ConfigError unless ``host`` may be reached: trusted by name, a literal IP
        inside the networks, or a name that resolves (with the loop's getaddrinfo) to at
        least one address inside them, the only ones a connection will use."""
        name = normalize_host(host)
        if self.allows_host(name):
            return
        if _looks_like_ip(name):
            reason = self.refuse_literal(name)
            if reason is not None:
                raise ConfigError(f"webhook destination refused: {reason}")
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConfigError(
                f"webhook host {name!r} cannot be resolved ({exc}); check the URL"
            ) from exc
        addresses = [str(info[4][0]) for info in infos]
        if not self.filter(name, addresses):
            raise ConfigError(f"webhook destination refused: {self.refusal(name, addresses)}")


class AllowListResolver(AbstractResolver):
    """An aiohttp resolver that keeps only the addresses the allow-list permits.

    When none is left it raises :class:`AddressRefused`, so no connection is attempted.
    """

    def __init__(self, allow: AllowList, inner: AbstractResolver) -> None:
        self._allow = allow
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve with the inner resolver, then drop the addresses outside the list."""
        results = await self._inner.resolve(host, port, family)
        if self._allow.allows_host(host):
            return results
        kept = [r for r in results if self._allow.allows_address(r["host"])]
        if not kept:
            raise AddressRefused(self._allow.refusal(host, [r["host"] for r in results]))
        return kept

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()
