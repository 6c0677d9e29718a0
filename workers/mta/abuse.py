"""Abuse controls of the inbound listener: per-client connection and message rates shared by
every MTA process (GCRA in Redis, `app.core.ratelimit`), and DNSBL lookups.

A refusal here happens during the SMTP session, so the client learns it from the reply and
Warta never has to send a delivery status notification about it (no backscatter).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.rdatatype
from redis.exceptions import RedisError

from app.core.ratelimit import RateLimiter
from app.core.resolver import LookupFailed, records

logger = logging.getLogger(__name__)

LISTED = "554 5.7.1 Service unavailable; client [{ip}] blocked using {zone}"
CONNECTION_RATE = "421 4.7.0 Too many connections from [{ip}], slow down and try later"
MESSAGE_RATE = "450 4.7.1 Too many messages from [{ip}], slow down and try later"
RATE_PREFIX = "warta:inbound:"


def dnsbl_name(ip: str, zone: str) -> str | None:
    """`1.2.3.4` at `zen.example` → `4.3.2.1.zen.example` (IPv6 by nibbles); None if not an IP."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    reversed_name = address.reverse_pointer.rsplit(".", 2)[0]  # drop in-addr.arpa / ip6.arpa
    return f"{reversed_name}.{zone.strip('.')}"


class Dnsbl:
    """Asks DNS blocklists whether a client address is listed (an A record in 127.0.0.0/8)."""

    def __init__(self, zones: Sequence[str], resolver: dns.asyncresolver.Resolver) -> None:
        self.zones = [zone.strip() for zone in zones if zone.strip()]
        self.resolver = resolver

    async def listing(self, ip: str) -> str | None:
        """The first zone (in configured order) that lists `ip`, or None."""
        answers = await asyncio.gather(*(self._listed(ip, zone) for zone in self.zones))
        return next(
            (zone for zone, listed in zip(self.zones, answers, strict=True) if listed), None
        )

    async def _listed(self, ip: str, zone: str) -> bool:
        name = dnsbl_name(ip, zone)
        if name is None:
            return False
        try:
            found = await records(self.resolver, name, dns.rdatatype.A)
        except LookupFailed as exc:
            # A blocklist that does not answer lists nobody: mail keeps flowing.
            logger.warning("DNSBL %s did not answer for %s: %s", zone, ip, exc)
            return False
        # 127.255.255.x are the lists' error codes (e.g. "query via a public resolver").
        return any(a.startswith("127.") and not a.startswith("127.255.255.") for a in found)


@dataclass(frozen=True)
class Rate:
    """Events per second and the burst allowed after a pause; rate 0 is unlimited."""

    per_second: float
    burst: int


class ClientGuard:
    """Decides at connection and at MAIL whether an inbound client may go on."""

    def __init__(
        self,
        limiter: RateLimiter | None,
        connections: Rate,
        messages: Rate,
        dnsbl: Dnsbl | None = None,
    ) -> None:
        self.limiter = limiter
        self.connections = connections
        self.messages = messages
        self.dnsbl = dnsbl

    async def on_connect(self, ip: str) -> str | None:
        """The refusal for a new connection from `ip`, or None to greet it."""
        if await self._over(f"conn:{ip}", self.connections):
            return CONNECTION_RATE.format(ip=ip)
        if self.dnsbl is not None and self.dnsbl.zones:
            zone = await self.dnsbl.listing(ip)
            if zone is not None:
                logger.info("inbound client %s refused: listed by %s", ip, zone)
                return LISTED.format(ip=ip, zone=zone)
        return None

    async def on_mail(self, ip: str) -> str | None:
        """The refusal for one more message from `ip`, or None to accept it."""
        if await self._over(f"mail:{ip}", self.messages):
            return MESSAGE_RATE.format(ip=ip)
        return None

    async def _over(self, key: str, rate: Rate) -> bool:
        if self.limiter is None or rate.per_second <= 0:
            return False
        try:
            return await self.limiter.admit(key, rate.per_second, rate.burst) > 0
        except (RedisError, OSError) as exc:
            # Redis down must not stop inbound mail: the limit is a courtesy, not a gate.
            logger.warning("inbound rate limit unavailable (%s): admitting", exc)
            return False
