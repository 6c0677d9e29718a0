"""Where webhook requests may go: URL shape, one checked DNS resolution, a guarded connection.

The SSRF guard runs where the socket is opened, not before the request: the HTTP client's
network backend resolves the host once, refuses the whole host if any address is not
public (unless private addresses are allowed), and connects to one of the addresses it
checked. A DNS answer that changes between a check and the connection (DNS rebinding)
therefore never reaches a private address. The URL keeps its host name, so the `Host`
header, the TLS server name (SNI) and the certificate check are all for that name, and
pooled connections are shared only between requests to the same name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import SplitResult, urlsplit

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
import httpcore
import httpx

from app.core.errors import Invalid
from app.core.settings import Settings, parse_dns_servers

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
USER_AGENT = "Warta-Webhooks/0.1"
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
"""The well-known NAT64 prefix (RFC 6052): the last 32 bits are the IPv4 address reached."""


class UnsafeUrl(Invalid):
    """A webhook URL Warta refuses to call."""


def check_shape(url: str) -> SplitResult:
    """http(s), a host, no user name or password, a valid port; the parts."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("a webhook URL must start with http:// or https://")
    if not parts.hostname:
        raise UnsafeUrl("the webhook URL has no host")
    if parts.username or parts.password:
        raise UnsafeUrl("the webhook URL may not carry a user name or password")
    try:
        _ = parts.port
    except ValueError:
        raise UnsafeUrl("the webhook URL has an invalid port") from None
    return parts


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not private, loopback, link-local, multicast or reserved.

    IPv6 forms that carry an IPv4 address (mapped, 6to4) are judged by that address too, and
    NAT64 addresses (DNS64 answers on IPv6-only networks) by that address alone.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in NAT64:
            return is_public(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None and not is_public(embedded):
            return False
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
    )


class EgressGuard:
    """The webhook egress rule: which resolver answers, and whether private addresses pass."""

    def __init__(
        self,
        *,
        allow_private: bool,
        dns_servers: Sequence[tuple[str, int]] = (),
        timeout: float = 10.0,
    ) -> None:
        self.allow_private = allow_private
        self.timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None
        if dns_servers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ip, port) for ip, port in dns_servers
            ]
            resolver.lifetime = timeout
            self._resolver = resolver

    @classmethod
    def from_settings(cls, settings: Settings) -> EgressGuard:
        """The guard WARTA_WEBHOOK_ALLOW_PRIVATE and WARTA_WEBHOOK_DNS_SERVERS describe."""
        return cls(
            allow_private=settings.webhook_allow_private,
            dns_servers=parse_dns_servers(settings.webhook_dns_servers),
            timeout=settings.webhook_timeout,
        )

    async def resolve(self, host: str) -> list[IPAddress]:
        """The host's addresses from one resolution, all of them allowed; else UnsafeUrl."""
        addresses = await self._lookup(host.strip("[]"))
        if not self.allow_private:
            for address in addresses:
                if not is_public(address):
                    raise UnsafeUrl(
                        f"{host} resolves to {address}, which is not a public address "
                        "(set WARTA_WEBHOOK_ALLOW_PRIVATE=true to allow it)"
                    )
        return addresses

    async def check_url(self, url: str) -> str:
        """The URL if well formed and, unless private addresses are allowed, its host public."""
        parts = check_shape(url)
        # A quick answer when the endpoint is saved; every connection is checked again.
        if not self.allow_private:
            assert parts.hostname is not None
            await self.resolve(parts.hostname)
        return url

    async def _lookup(self, host: str) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        if self._resolver is not None:
            found = await asyncio.gather(
                self._query(host, dns.rdatatype.A), self._query(host, dns.rdatatype.AAAA)
            )
            addresses = [address for batch in found for address in batch]
        else:
            addresses = await self._system_lookup(host)
        if not addresses:
            raise UnsafeUrl(f"the webhook host {host} does not resolve")
        return addresses

    async def _query(self, host: str, rdtype: dns.rdatatype.RdataType) -> list[IPAddress]:
        assert self._resolver is not None
        try:
            answer = await self._resolver.resolve(host, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise UnsafeUrl(f"the webhook host {host} does not resolve: {exc}") from None
        assert answer.rrset is not None
        return [ipaddress.ip_address(record.address) for record in answer.rrset]

    async def _system_lookup(self, host: str) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, TimeoutError):
            raise UnsafeUrl(f"the webhook host {host} does not resolve") from None
        # A scope id ("fe80::1%eth0") is not part of the address being judged.
        return [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the guard between the host name and the socket."""

    def __init__(self, guard: EgressGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._guard.resolve(host)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are never sent to a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport over a connection pool whose sockets pass the guard."""

    def __init__(self, guard: EgressGuard, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context)
        limits = httpx.Limits()
        # httpx offers no parameter for the network backend; the pool it builds in
        # __init__ is replaced by the same pool over the guarded backend. The webhook tests
        # fail if a future httpx stops reading `_pool`.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(guard),
        )


def webhook_client(
    guard: EgressGuard, timeout: float, *, verify: ssl.SSLContext | None = None
) -> httpx.AsyncClient:
    """The HTTP client of webhook deliveries: guarded connections, no redirects.

    Proxies named by HTTP(S)_PROXY/ALL_PROXY are honoured as before; requests they carry
    connect to the proxy, whose own egress rules then apply instead of this guard.
    """
    context = verify or httpx.create_ssl_context()
    return httpx.AsyncClient(
        transport=_GuardedTransport(guard, context),
        timeout=timeout,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
    )
