"""The DNS look-ups the sender domain checks make, through dnspython's async resolver.

Nameservers come from WARTA_MTA_DNS_SERVERS (the MTA's own view of DNS), else the system's,
as the webhook egress guard and the MTA router build theirs.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
import dns.reversename

from app.core.settings import Settings, parse_dns_servers

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOKUP_SECONDS = 5.0


class DnsError(Exception):
    """A look-up failed for another reason than the name or record not existing."""


class Dns:
    """TXT, address, MX and PTR look-ups; a missing name or record is an empty answer."""

    def __init__(self, servers: Sequence[tuple[str, int]] = (), timeout: float = LOOKUP_SECONDS):
        if servers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in servers]
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.lifetime = timeout
        self._resolver = resolver

    @classmethod
    def from_settings(cls, settings: Settings) -> Dns:
        """The resolver WARTA_MTA_DNS_SERVERS names (the system's when empty)."""
        return cls(parse_dns_servers(settings.mta_dns_servers))

    async def txt(self, name: str) -> list[str]:
        """Each TXT record of `name`, its strings joined."""
        answer = await self._query(name, "TXT")
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]

    async def addresses(self, name: str) -> list[IPAddress]:
        """The A and AAAA addresses of `name`."""
        answers = await asyncio.gather(self._query(name, "A"), self._query(name, "AAAA"))
        return [ipaddress.ip_address(rdata.address) for answer in answers for rdata in answer]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange) of each MX record of `name`, most preferred first."""
        answer = await self._query(name, "MX")
        hosts = [(rdata.preference, str(rdata.exchange).rstrip(".").lower()) for rdata in answer]
        return sorted(hosts)

    async def ptr(self, address: IPAddress) -> list[str]:
        """The names the reverse zone gives for `address`."""
        answer = await self._query(str(dns.reversename.from_address(str(address))), "PTR")
        return [str(rdata.target).rstrip(".").lower() for rdata in answer]

    async def _query(self, name: str, kind: str) -> list[Any]:
        # Any: dnspython types answers as the base Rdata; each kind has its own fields.
        try:
            answer = await self._resolver.resolve(name, kind, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise DnsError(f"{kind} {name}: {exc}") from None
        return list(answer)
