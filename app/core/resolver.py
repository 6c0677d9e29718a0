"""A DNS resolver against configured nameservers (or the system's), and the few lookups
inbound checks need: TXT strings and addresses, with "no such record" as an empty answer."""

from __future__ import annotations

from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver


class LookupFailed(Exception):
    """The DNS did not answer (timeout, SERVFAIL): a temporary error, not an empty answer."""


CACHE_ENTRIES = 10_000


def make_resolver(
    servers: Sequence[tuple[str, int]], timeout: float, *, cache: bool = True
) -> dns.asyncresolver.Resolver:
    """An async resolver asking `servers` (ip, port), or the system's when there are none.

    With `cache`, answers are kept for their TTL (replies come from a few large providers:
    their SPF, DKIM and DMARC records are asked for again and again)."""
    if servers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in servers]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    if cache:
        resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
    return resolver


async def records(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: dns.rdatatype.RdataType
) -> list[str]:
    """The records of one type as text (TXT strings joined); [] for NXDOMAIN or no data."""
    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers) as exc:
        if isinstance(exc, dns.resolver.NoNameservers):
            raise LookupFailed(f"{name}: {exc}") from None
        return []
    except (dns.exception.DNSException, ValueError) as exc:
        raise LookupFailed(f"{name}: {exc}") from None
    if answer.rrset is None:
        return []
    if rdtype == dns.rdatatype.TXT:
        return [b"".join(record.strings).decode("utf-8", "replace") for record in answer.rrset]
    if rdtype == dns.rdatatype.MX:
        return [str(record.exchange).rstrip(".") for record in answer.rrset]
    return [record.to_text() for record in answer.rrset]
