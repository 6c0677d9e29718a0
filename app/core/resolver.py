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


def make_resolver(servers: Sequence[tuple[str, int]], timeout: float) -> dns.asyncresolver.Resolver:
    """An async resolver asking `servers` (ip, port), or the system's when there are none."""
    if servers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in servers]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
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
