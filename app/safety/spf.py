"""A small SPF evaluator (RFC 7208) for the domain checks: does a record authorise an address?

It follows ip4, ip6, a, mx, include, redirect and all, within the RFC's ten DNS-querying
terms; `exists`, `ptr` and macros are not evaluated (they count as not matching), which
is enough to tell an operator whether Warta's addresses are in their record.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from app.safety.dns import Dns, IPAddress

MAX_LOOKUPS = 10
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


@dataclass(frozen=True)
class SpfResult:
    """The SPF result for one address, and the record it came from (if any)."""

    result: str
    """pass, fail, softfail, neutral, none or permerror."""
    record: str = ""
    reason: str = ""


class _PermError(Exception):
    pass


async def spf_record(resolver: Dns, domain: str) -> str | None:
    """The domain's one `v=spf1` record; None if it has none; _PermError if several."""
    records = [r for r in await resolver.txt(domain) if r.lower().split(" ", 1)[0] == "v=spf1"]
    if len(records) > 1:
        raise _PermError(f"{domain} has {len(records)} SPF records; publish exactly one")
    return records[0] if records else None


async def check_host(resolver: Dns, address: IPAddress, domain: str) -> SpfResult:
    """SPF's verdict on mail from `address` for the return-path domain `domain`."""
    lookups = [0]
    try:
        record = await spf_record(resolver, domain)
        if record is None:
            return SpfResult("none", reason=f"{domain} publishes no SPF record")
        result = await _evaluate(resolver, address, domain, record, lookups)
    except _PermError as exc:
        return SpfResult("permerror", reason=str(exc))
    return SpfResult(result, record=record)


async def _evaluate(
    resolver: Dns, address: IPAddress, domain: str, record: str, lookups: list[int]
) -> str:
    redirect = ""
    for term in record.split()[1:]:
        name, equals, value = term.partition("=")
        if equals and ":" not in name:
            if name.lower() == "redirect":
                redirect = value
            continue
        qualifier = QUALIFIERS.get(term[0])
        if qualifier is None:
            qualifier, mechanism = "pass", term
        else:
            mechanism = term[1:]
        if await _matches(resolver, address, domain, mechanism, lookups):
            return qualifier
    if redirect:
        _count(lookups)
        target = await spf_record(resolver, redirect)
        if target is None:
            raise _PermError(f"redirect={redirect} has no SPF record")
        return await _evaluate(resolver, address, redirect, target, lookups)
    return "neutral"


async def _matches(
    resolver: Dns, address: IPAddress, domain: str, mechanism: str, lookups: list[int]
) -> bool:
    kind, _, argument = mechanism.partition(":")
    kind = kind.lower()
    if kind == "all":
        return True
    if kind in ("ip4", "ip6"):
        try:
            return address in ipaddress.ip_network(argument, strict=False)
        except ValueError:
            raise _PermError(f"{mechanism!r} is not a valid network") from None
    if kind.startswith(("a", "mx")) and kind.split("/")[0] in ("a", "mx"):
        _count(lookups)
        target, _, prefix = (argument or domain).partition("/")
        if "/" in kind:  # `a/24`, `mx/24`: the prefix applies to the current domain
            target, prefix = domain, kind.partition("/")[2]
        hosts = [target] if kind.startswith("a") else [h for _, h in await resolver.mx(target)]
        for host in hosts:
            for found in await resolver.addresses(host):
                if found.version != address.version:
                    continue
                bits = (
                    int(prefix) if prefix.isdigit() and found.version == 4 else found.max_prefixlen
                )
                if address in ipaddress.ip_network(f"{found}/{bits}", strict=False):
                    return True
        return False
    if kind == "include":
        _count(lookups)
        record = await spf_record(resolver, argument)
        if record is None:
            raise _PermError(f"include:{argument} has no SPF record")
        return await _evaluate(resolver, address, argument, record, lookups) == "pass"
    if kind in ("exists", "ptr"):
        _count(lookups)
        return False
    raise _PermError(f"unknown SPF mechanism {mechanism!r}")


def _count(lookups: list[int]) -> None:
    lookups[0] += 1
    if lookups[0] > MAX_LOOKUPS:
        raise _PermError(f"the record needs more than {MAX_LOOKUPS} DNS look-ups")
