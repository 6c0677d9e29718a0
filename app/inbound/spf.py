"""SPF (RFC 7208) evaluated with our own resolver: the verdict for a client IP and a sender.

Covers what published records use: `all`, `ip4`, `ip6`, `a`, `mx`, `include`, `exists`,
`redirect=` and the common macros (%{s} %{l} %{o} %{d} %{i} %{h}). `ptr` never matches
(RFC 7208 5.5 says not to use it). The ten-lookup limit gives `permerror`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.rdatatype

from app.core.resolver import LookupFailed, records

MAX_LOOKUPS = 10
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MACRO = re.compile(r"%\{([slodih])\}|%%|%_|%-")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class _PermError(Exception):
    pass


@dataclass
class _Check:
    resolver: dns.asyncresolver.Resolver
    ip: IPAddress
    sender: str
    helo: str
    lookups: int = 0
    seen: set[str] = field(default_factory=set)

    def count(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError("more than 10 DNS lookups")

    def expand(self, text: str, domain: str) -> str:
        local, _, sender_domain = self.sender.rpartition("@")

        def one(match: re.Match[str]) -> str:
            token = match.group(0)
            if token == "%%":
                return "%"
            if token == "%_":
                return " "
            if token == "%-":
                return "%20"
            return {
                "s": self.sender,
                "l": local or "postmaster",
                "o": sender_domain,
                "d": domain,
                "i": str(self.ip),
                "h": self.helo,
            }[match.group(1)]

        return _MACRO.sub(one, text)


async def check_spf(
    resolver: dns.asyncresolver.Resolver, ip: str, sender: str, helo: str
) -> tuple[str, str]:
    """(result, domain checked): pass, fail, softfail, neutral, none, permerror, temperror.

    The domain is the envelope sender's, or the HELO name for the null sender (RFC 7208 2.4).
    """
    domain = sender.rpartition("@")[2].lower() if sender else helo.lower()
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "none", domain
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not domain or "." not in domain:
        return "none", domain
    check = _Check(resolver, address, sender or f"postmaster@{helo}", helo)
    try:
        return await _evaluate(check, domain, top=True), domain
    except _PermError:
        return "permerror", domain
    except LookupFailed:
        return "temperror", domain


async def _record(check: _Check, domain: str) -> str | None:
    found = [r for r in await records(check.resolver, domain, dns.rdatatype.TXT) if _is_spf(r)]
    if len(found) > 1:
        raise _PermError(f"{domain} has more than one SPF record")
    return found[0] if found else None


def _is_spf(text: str) -> bool:
    return text.lower() == "v=spf1" or text.lower().startswith("v=spf1 ")


async def _evaluate(check: _Check, domain: str, *, top: bool = False) -> str:
    if domain in check.seen:
        raise _PermError(f"SPF loop at {domain}")
    check.seen.add(domain)
    record = await _record(check, domain)
    if record is None:
        if top:
            return "none"
        raise _PermError(f"{domain} has no SPF record")
    redirect = None
    for term in record.split()[1:]:
        name, equals, value = term.partition("=")
        if equals and ":" not in name:
            if name.lower() == "redirect":
                redirect = check.expand(value, domain)
            continue  # exp= and unknown modifiers are ignored
        qualifier = _QUALIFIERS.get(term[0], "")
        mechanism = term[1:] if qualifier else term
        if await _matches(check, mechanism, domain):
            return qualifier or "pass"
    if redirect is not None:
        check.count()
        return await _evaluate(check, redirect.lower(), top=True)
    return "neutral"


def _split_cidr(argument: str) -> tuple[str, int | None, int | None]:
    """`example.com/24//64` → ("example.com", 24, 64)."""
    target, _, cidrs = argument.partition("/")
    v4_text, _, v6_text = cidrs.partition("//") if cidrs else ("", "", "")
    if cidrs.startswith("/"):
        v4_text, v6_text = "", cidrs[1:]
    try:
        return target, int(v4_text) if v4_text else None, int(v6_text) if v6_text else None
    except ValueError:
        raise _PermError(f"bad CIDR length in {argument!r}") from None


def _in(check: _Check, address: str, v4: int | None, v6: int | None) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version != check.ip.version:
        return False
    prefix = (v4 if ip.version == 4 else v6) or ip.max_prefixlen
    return check.ip in ipaddress.ip_network(f"{ip}/{prefix}", strict=False)


async def _addresses(check: _Check, host: str) -> list[str]:
    rdtype = dns.rdatatype.A if check.ip.version == 4 else dns.rdatatype.AAAA
    return await records(check.resolver, host, rdtype)


async def _matches(check: _Check, mechanism: str, domain: str) -> bool:
    name, _, argument = mechanism.partition(":")
    name = name.lower()
    if "/" in name:  # `a/24`, `mx/24` without a domain
        name, _, cidr = name.partition("/")
        argument = "/" + cidr
    if name == "all":
        return True
    if name in ("ip4", "ip6"):
        try:
            network = ipaddress.ip_network(argument, strict=False)
        except ValueError:
            raise _PermError(f"bad {name} network {argument!r}") from None
        return network.version == check.ip.version and check.ip in network
    if name == "include":
        check.count()
        result = await _evaluate(check, check.expand(argument, domain).lower())
        return result == "pass"
    if name == "a":
        check.count()
        target, v4, v6 = _split_cidr(argument)
        host = check.expand(target, domain) if target else domain
        return any(_in(check, a, v4, v6) for a in await _addresses(check, host))
    if name == "mx":
        check.count()
        target, v4, v6 = _split_cidr(argument)
        host = check.expand(target, domain) if target else domain
        exchanges = await records(check.resolver, host, dns.rdatatype.MX)
        for exchange in exchanges[:MAX_LOOKUPS]:
            if any(_in(check, a, v4, v6) for a in await _addresses(check, exchange)):
                return True
        return False
    if name == "exists":
        check.count()
        host = check.expand(argument, domain)
        return bool(await records(check.resolver, host, dns.rdatatype.A))
    if name == "ptr":
        check.count()
        return False
    raise _PermError(f"unknown SPF mechanism {mechanism!r}")
