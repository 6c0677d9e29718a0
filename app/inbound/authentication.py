"""Sender authentication of inbound mail: SPF, DKIM (dkimpy) and DMARC, shown as an
RFC 8601 Authentication-Results value.

Every DNS question goes to the configured nameservers. DKIM keys are fetched first with the
async resolver, then dkimpy verifies against what was fetched (in a thread for large
messages), so no lookup blocks the event loop. DMARC alignment is relaxed unless the record says `s`; the
organisational domain is the registrable domain guessed from the last labels (no public
suffix list: `co.uk`-style two-letter country suffixes are recognised, others are not).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from email.utils import getaddresses

import dkim  # type: ignore[import-untyped]
import dns.asyncresolver
import dns.rdatatype

from app.core.resolver import LookupFailed, records
from app.inbound.spf import check_spf

_TAG = re.compile(r"\s*([a-zA-Z0-9_]+)\s*=\s*([^;]*)")
_HEADER_END = b"\r\n\r\n"
MAX_SIGNATURES = 5
INLINE_VERIFY_BYTES = 256 * 1024
"""Messages up to this size are verified on the event loop (well under a millisecond)."""
"""DKIM signatures verified per message; more are ignored (a cheap amplification)."""


@dataclass(frozen=True)
class Verdicts:
    """The authentication results of one message."""

    spf: str
    spf_domain: str
    dkim: str
    dkim_domains: tuple[str, ...]
    dmarc: str
    dmarc_policy: str
    from_domain: str
    details: dict[str, str] = field(default_factory=dict)

    def header(self, authserv_id: str) -> str:
        """The Authentication-Results header value (RFC 8601)."""
        parts = [authserv_id, f"spf={self.spf} smtp.mailfrom={self.spf_domain or 'none'}"]
        if self.dkim_domains:
            parts += [f"dkim={self.dkim} header.d={d}" for d in self.dkim_domains]
        else:
            parts.append(f"dkim={self.dkim}")
        policy = f" (p={self.dmarc_policy})" if self.dmarc_policy else ""
        parts.append(f"dmarc={self.dmarc}{policy} header.from={self.from_domain or 'none'}")
        return "; ".join(parts)


def tags(text: str) -> dict[str, str]:
    """`v=DMARC1; p=reject` → {"v": "DMARC1", "p": "reject"} (names lower-cased)."""
    return {m.group(1).lower(): m.group(2).strip() for m in _TAG.finditer(text)}


def organisational_domain(domain: str) -> str:
    """The registrable part of `domain`: `mail.example.com` → `example.com`,
    `a.example.co.uk` → `example.co.uk` (a guess without the public suffix list)."""
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and len(labels[-2]) <= 3:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def aligned(domain: str, from_domain: str, strict: bool) -> bool:
    """DMARC identifier alignment (RFC 7489 3.1)."""
    if strict:
        return domain.lower() == from_domain.lower()
    return organisational_domain(domain) == organisational_domain(from_domain)


def from_domain(header_value: str) -> str:
    """The domain of the single From address ("" when missing or several)."""
    addresses = [a for _, a in getaddresses([header_value]) if "@" in a]
    return addresses[0].rpartition("@")[2].lower() if len(addresses) == 1 else ""


class Authenticator:
    """Checks SPF, DKIM and DMARC of inbound messages with one resolver."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self.resolver = resolver

    async def verdicts(
        self, raw: bytes, client_ip: str, helo: str, mail_from: str, from_header: str
    ) -> Verdicts:
        """All three verdicts for a message as received (no Warta trace headers)."""
        (spf, spf_domain), (dkim_result, dkim_domains) = await asyncio.gather(
            check_spf(self.resolver, client_ip, mail_from, helo), self.dkim(raw)
        )
        author = from_domain(from_header)
        dmarc, policy = await self.dmarc(author, spf, spf_domain, dkim_domains)
        return Verdicts(spf, spf_domain, dkim_result, dkim_domains, dmarc, policy, author)

    async def dkim(self, raw: bytes) -> tuple[str, tuple[str, ...]]:
        """(result, the domains whose signature verified)."""
        end = raw.find(_HEADER_END)
        head = raw if end < 0 else raw[:end]
        signatures = [
            tags(value) for name, value in _header_fields(head) if name.lower() == "dkim-signature"
        ][:MAX_SIGNATURES]
        if not signatures:
            return "none", ()
        keys: dict[str, bytes | None] = {}
        try:
            for sig in signatures:
                name = f"{sig.get('s', '')}._domainkey.{sig.get('d', '')}".lower()
                found = await records(self.resolver, name, dns.rdatatype.TXT)
                keys[name] = found[0].encode() if found else None
        except LookupFailed:
            return "temperror", ()
        if len(raw) > INLINE_VERIFY_BYTES:  # hashing a large body would stall the loop
            passed = await asyncio.to_thread(_verify_all, raw, len(signatures), keys)
        else:
            passed = _verify_all(raw, len(signatures), keys)
        if passed:
            return "pass", tuple(passed)
        return "fail", ()

    async def dmarc(
        self, author: str, spf: str, spf_domain: str, dkim_domains: tuple[str, ...]
    ) -> tuple[str, str]:
        """(result, policy) for the From domain."""
        if not author:
            return "none", ""
        try:
            record = await self._dmarc_record(author)
        except LookupFailed:
            return "temperror", ""
        if record is None:
            return "none", ""
        policy = record.get("p", "none").lower()
        spf_ok = spf == "pass" and aligned(spf_domain, author, record.get("aspf") == "s")
        dkim_ok = any(aligned(d, author, record.get("adkim") == "s") for d in dkim_domains)
        return ("pass" if spf_ok or dkim_ok else "fail"), policy

    async def _dmarc_record(self, domain: str) -> dict[str, str] | None:
        for candidate in dict.fromkeys((domain, organisational_domain(domain))):
            found = [
                r
                for r in await records(self.resolver, f"_dmarc.{candidate}", dns.rdatatype.TXT)
                if r.lower().startswith("v=dmarc1")
            ]
            if len(found) == 1:
                return tags(found[0])
        return None


def _header_fields(head: bytes) -> list[tuple[str, str]]:
    """Unfolded (name, value) pairs of a header block."""
    fields: list[tuple[str, str]] = []
    for line in head.decode("utf-8", "replace").split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
        elif ":" in line:
            name, _, value = line.partition(":")
            fields.append((name.strip(), value.strip()))
    return fields


def _verify_all(raw: bytes, count: int, keys: dict[str, bytes | None]) -> list[str]:
    """The domains of the signatures that verify (dkimpy, keys already fetched)."""

    def lookup(name: bytes | str, timeout: int = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        return keys.get(text.rstrip(".").lower())

    passed = []
    for index in range(count):
        verifier = dkim.DKIM(raw)
        try:
            if verifier.verify(idx=index, dnsfunc=lookup):
                passed.append(verifier.domain.decode("ascii", "replace").lower())
        except dkim.DKIMException:
            continue
    return passed
