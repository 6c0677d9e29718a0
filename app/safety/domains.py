"""Sender domain checks: SPF, DKIM, DMARC and alignment, the bounce domain's MX, PTR/HELO.

Each check says pass, warn or fail, what it found, and for anything short of pass the
exact records (zone-file syntax) to publish. Gmail's and Yahoo's 2024 bulk-sender rules
need SPF, DKIM and an aligned DMARC; Microsoft refuses unauthenticated bulk mail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import dns.reversename
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from app.core.settings import Settings
from app.safety.dns import Dns, DnsError, IPAddress
from app.safety.rules import Finding
from app.safety.spf import check_host

Status = Literal["pass", "warn", "fail"]
TXT_STRING_MAX = 255
SECOND_LEVEL = frozenset({"co", "com", "org", "net", "ac", "gov", "edu", "ne", "or", "go"})
FAIL_POINTS = {"spf": 3.0, "dkim": 3.0, "dmarc": 3.0, "alignment": 2.0, "mx": 1.0, "ptr": 1.0}
WARN_POINTS = 0.5


@dataclass(frozen=True)
class DomainCheck:
    """One check: its name, its status, what was found, and the records to publish."""

    name: str
    status: Status
    detail: str
    publish: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DomainReport:
    """Every check of one sending domain, with what they were run against."""

    domain: str
    return_path_domain: str
    helo: str
    sending_ips: list[str]
    ok: bool
    checks: list[DomainCheck]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def organizational_domain(domain: str) -> str:
    """The registrable part of `domain` (two labels, three under ccTLD second levels like co.uk)."""
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def aligned(a: str, b: str, mode: str) -> bool:
    """DMARC identifier alignment: strict = equal, relaxed = same organizational domain."""
    if mode == "s":
        return a.lower() == b.lower()
    return organizational_domain(a) == organizational_domain(b)


def txt(name: str, text: str) -> str:
    """A TXT record in zone-file syntax, split into strings of at most 255 characters."""
    strings = " ".join(
        f'"{text[i : i + TXT_STRING_MAX]}"' for i in range(0, len(text), TXT_STRING_MAX)
    )
    return f"{name}. IN TXT {strings}"


def spf_text(ips: list[IPAddress], existing: str | None = None) -> str:
    """An SPF record authorising `ips`: `existing` with the missing ones added before `all`."""
    wanted = [f"ip{ip.version}:{ip}" for ip in ips]
    if existing is None:
        return " ".join(["v=spf1", *wanted, "-all"])
    terms = existing.split()
    missing = [term for term in wanted if term not in terms]
    tail = [t for t in terms[1:] if t.lstrip("+-~?").lower() == "all" or t.startswith("redirect=")]
    head = [t for t in terms if t not in tail]
    return " ".join([*head, *missing, *(tail or ["-all"])])


def dmarc_tags(record: str) -> dict[str, str]:
    """The tags of a DMARC (or DKIM) record, names lower-cased."""
    tags = {}
    for part in record.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            tags[name.strip().lower()] = value.strip()
    return tags


def local_dkim_keys(directory: Path, domain: str) -> list[tuple[str, str, bytes]]:
    """(selector, k= algorithm, public key bytes as p= carries them) of each local key."""
    keys = []
    for path in sorted((directory / domain.lower()).glob("*.pem")):
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(private, ed25519.Ed25519PrivateKey):
            raw = private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            keys.append((path.stem, "ed25519", raw))
        else:
            der = private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            keys.append((path.stem, "rsa", der))
    return keys


def dkim_record(domain: str, selector: str, algorithm: str, public: bytes) -> str:
    """The DKIM TXT record for a key, as `warta dkim-keygen` prints it."""
    text = f"v=DKIM1; k={algorithm}; p={base64.b64encode(public).decode('ascii')}"
    return txt(f"{selector}._domainkey.{domain}", text)


class DomainChecker:
    """Runs the checks for a From domain against the settings' identity and DNS."""

    def __init__(self, settings: Settings, resolver: Dns | None = None) -> None:
        self.settings = settings
        self.dns = resolver or Dns.from_settings(settings)
        self.helo = settings.mta_hostname.lower().rstrip(".")
        self.return_path = settings.bounce_domain.lower().rstrip(".")

    async def check(self, domain: str) -> DomainReport:
        """All checks of `domain`; a DNS failure makes the check it hit fail, saying so."""
        domain = domain.lower().rstrip(".")
        ips = await self._sending_ips()
        # The checks ask different names: their round trips overlap rather than add up.
        spf, dkim, (dmarc, policy), mx, ptr = await asyncio.gather(
            self._guarded("spf", self._spf(ips)),
            self._guarded("dkim", self._dkim(domain)),
            self._dmarc(domain),
            self._guarded("mx", self._mx(ips)),
            self._guarded("ptr", self._ptr(ips)),
        )
        alignment = self._alignment(domain, policy, dkim_ok=dkim.status == "pass")
        checks = [spf, dkim, dmarc, alignment, mx, ptr]
        return DomainReport(
            domain=domain,
            return_path_domain=self.return_path,
            helo=self.helo,
            sending_ips=[str(ip) for ip in ips],
            ok=all(c.status != "fail" for c in checks),
            checks=checks,
        )

    async def _guarded(self, name: str, running: Any) -> DomainCheck:
        try:
            result: DomainCheck = await running
        except DnsError as exc:
            return DomainCheck(name, "fail", f"DNS look-up failed: {exc}")
        return result

    async def _sending_ips(self) -> list[IPAddress]:
        configured = [p.strip() for p in self.settings.sending_ips.split(",") if p.strip()]
        if configured:
            return [ipaddress.ip_address(p) for p in configured]
        try:
            return await self.dns.addresses(self.helo)
        except DnsError:
            return []

    async def _spf(self, ips: list[IPAddress]) -> DomainCheck:
        name = self.return_path
        if not ips:
            return DomainCheck(
                "spf", "fail",
                f"Warta's sending addresses are unknown: {self.helo} has no A/AAAA record and "
                "WARTA_SENDING_IPS is empty",
            )  # fmt: skip
        checked = await asyncio.gather(*(check_host(self.dns, ip, name) for ip in ips))
        results = dict(zip(ips, checked, strict=True))
        failing = {ip: r for ip, r in results.items() if r.result != "pass"}
        if not failing:
            return DomainCheck("spf", "pass", f"{name} authorises {', '.join(map(str, ips))}")
        existing = next((r.record for r in results.values() if r.record), None)
        why = "; ".join(
            f"{ip}: {r.result}{f' ({r.reason})' if r.reason else ''}" for ip, r in failing.items()
        )
        return DomainCheck(
            "spf", "fail",
            f"the return-path domain {name} does not authorise Warta's addresses ({why})",
            [txt(name, spf_text(ips, existing))],
        )  # fmt: skip

    async def _dkim(self, domain: str) -> DomainCheck:
        try:
            keys = local_dkim_keys(self.settings.dkim_dir, domain)
        except (OSError, ValueError, TypeError) as exc:
            return DomainCheck(
                "dkim", "fail", f"a key under {self.settings.dkim_dir} is unreadable: {exc}"
            )
        if not keys:
            return DomainCheck(
                "dkim", "fail",
                f"Warta has no DKIM key for {domain} under {self.settings.dkim_dir}: run "
                f"`warta dkim-keygen {domain} <selector>` and publish the record it prints",
            )  # fmt: skip
        problems, publish = [], []
        for selector, algorithm, public in keys:
            name = f"{selector}._domainkey.{domain}"
            published = [dmarc_tags(r).get("p", "") for r in await self.dns.txt(name)]
            if not any(_same_key(p, public) for p in published):
                problems.append(
                    f"{name} {'publishes another key' if published else 'has no TXT record'}"
                )
                publish.append(dkim_record(domain, selector, algorithm, public))
        if problems:
            return DomainCheck("dkim", "fail", "; ".join(problems), publish)
        selectors = ", ".join(selector for selector, _, _ in keys)
        return DomainCheck("dkim", "pass", f"the key of selector(s) {selectors} matches DNS")

    async def _dmarc(self, domain: str) -> tuple[DomainCheck, dict[str, str]]:
        publish = [txt(f"_dmarc.{domain}", f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}")]
        try:
            found = await self._dmarc_record(domain)
        except DnsError as exc:
            return DomainCheck("dmarc", "fail", f"DNS look-up failed: {exc}"), {}
        if found is None:
            return (
                DomainCheck(
                    "dmarc", "fail",
                    f"{domain} publishes no DMARC record (_dmarc.{domain}); bulk senders "
                    "must (start with p=none, tighten to quarantine once reports look right)",
                    publish,
                ),
                {},
            )  # fmt: skip
        where, record = found
        tags = dmarc_tags(record)
        if tags.get("p") not in ("none", "quarantine", "reject"):
            return (
                DomainCheck("dmarc", "fail", f"{where} has no valid p= tag: {record!r}", publish),
                tags,
            )
        return DomainCheck("dmarc", "pass", f"{where}: {record}"), tags

    async def _dmarc_record(self, domain: str) -> tuple[str, str] | None:
        for name in dict.fromkeys((domain, organizational_domain(domain))):
            records = [r for r in await self.dns.txt(f"_dmarc.{name}") if r.startswith("v=DMARC1")]
            if len(records) == 1:
                return f"_dmarc.{name}", records[0]
        return None

    def _alignment(self, domain: str, policy: dict[str, str], *, dkim_ok: bool) -> DomainCheck:
        spf_mode, dkim_mode = policy.get("aspf", "r"), policy.get("adkim", "r")
        spf_aligned = aligned(self.return_path, domain, spf_mode)
        # Warta signs with d= the From domain itself, so its DKIM aligns in either mode.
        if spf_aligned and dkim_ok:
            return DomainCheck(
                "alignment", "pass",
                f"From {domain} aligns with the return path {self.return_path} (aspf={spf_mode}) "
                f"and with DKIM d={domain} (adkim={dkim_mode})",
            )  # fmt: skip
        suggestion = f"bounces.{domain}"
        publish = [
            f"{suggestion}. IN MX 10 {self.helo}.",
            txt(suggestion, "v=spf1 a:" + self.helo + " -all"),
        ]
        advice = (
            f"the VERP return path {self.return_path} does not align with {domain} "
            f"(aspf={spf_mode}): set WARTA_BOUNCE_DOMAIN={suggestion} and publish its MX and SPF"
        )
        if dkim_ok:
            return DomainCheck(
                "alignment", "warn", advice + "; DMARC passes through DKIM alone", publish
            )
        if spf_aligned:
            return DomainCheck(
                "alignment", "warn",
                "DMARC rests on SPF alone: fix DKIM so that a forwarded message still passes",
            )  # fmt: skip
        return DomainCheck("alignment", "fail", advice + "; and DKIM does not pass either", publish)

    async def _mx(self, ips: list[IPAddress]) -> DomainCheck:
        name = self.return_path
        hosts = await self.dns.mx(name)
        publish = [f"{name}. IN MX 10 {self.helo}."]
        if not hosts:
            return DomainCheck(
                "mx", "fail",
                f"the bounce domain {name} has no MX record: bounces and complaints to the "
                "VERP return path never reach Warta",
                publish,
            )  # fmt: skip
        for _, host in hosts:
            if host == self.helo or set(await self.dns.addresses(host)) & set(ips):
                return DomainCheck("mx", "pass", f"{name} MX {host} is Warta")
        listed = ", ".join(host for _, host in hosts)
        return DomainCheck(
            "mx", "fail", f"{name} MX points at {listed}, not at {self.helo}", publish
        )

    async def _ptr(self, ips: list[IPAddress]) -> DomainCheck:
        if not ips:
            return DomainCheck("ptr", "fail", "no sending address to check (WARTA_SENDING_IPS)")
        forward = set(await self.dns.addresses(self.helo))
        problems, publish = [], []
        for ip in ips:
            names = await self.dns.ptr(ip)
            if self.helo not in names:
                found = ", ".join(names) or "no PTR record"
                problems.append(f"{ip} reverses to {found}, not to the HELO name {self.helo}")
                reverse = str(dns.reversename.from_address(str(ip))).rstrip(".")
                publish.append(f"{reverse}. IN PTR {self.helo}.  ; set by whoever owns {ip}")
            if ip not in forward:
                problems.append(f"the HELO name {self.helo} does not resolve to {ip}")
                publish.append(f"{self.helo}. IN {'A' if ip.version == 4 else 'AAAA'} {ip}")
        if problems:
            return DomainCheck("ptr", "fail", "; ".join(problems), publish)
        return DomainCheck("ptr", "pass", f"{', '.join(map(str, ips))} ⇄ {self.helo}")


def _same_key(published: str, local: bytes) -> bool:
    try:
        return base64.b64decode("".join(published.split()), validate=True) == local
    except (binascii.Error, ValueError):
        return False


async def check_domain(settings: Settings, domain: str) -> DomainReport:
    """Run every check of `domain` with the settings' resolver."""
    return await DomainChecker(settings).check(domain)


async def schedule_findings(settings: Settings, from_email: str) -> list[Finding]:
    """The failing and doubtful domain checks of a campaign's From domain, as preflight findings."""
    domain = from_email.rpartition("@")[2].rstrip(">").strip()
    report = await check_domain(settings, domain)
    findings = []
    for item in report.checks:
        if item.status == "pass":
            continue
        points = FAIL_POINTS.get(item.name, 1.0) if item.status == "fail" else WARN_POINTS
        publish = f" Publish: {' | '.join(item.publish)}" if item.publish else ""
        findings.append(
            Finding("dns", f"DOMAIN_{item.name.upper()}", points, item.detail + publish)
        )
    return findings


def recommended_records(settings: Settings, domain: str) -> list[str]:
    """The records a new sending domain needs beside its DKIM key, from the settings alone."""
    helo = settings.mta_hostname.rstrip(".")
    bounce = settings.bounce_domain.rstrip(".")
    ips = [ipaddress.ip_address(p.strip()) for p in settings.sending_ips.split(",") if p.strip()]
    spf = spf_text(ips) if ips else f"v=spf1 a:{helo} -all"
    return [
        txt(bounce, spf),
        f"{bounce}. IN MX 10 {helo}.",
        txt(f"_dmarc.{domain}", f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}"),
    ]
