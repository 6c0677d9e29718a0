"""A SpamAssassin spamd client speaking SPAMC/1.5 over asyncio streams.

Written here rather than taken from PyPI: the maintained async client (aiospamc) pins
typer below the version Warta's CLI uses and brings loguru; the part of the protocol
Warta needs (PING and REPORT) is two small request/response exchanges.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from app.core.settings import Settings
from app.safety.daemon import DaemonAddress, DaemonError, DaemonUnavailable, close_quietly

DAEMON = "spamd"
PROTOCOL = b"SPAMC/1.5"
EX_OK = 0
_STATUS = re.compile(rb"^SPAMD/(\d+\.\d+) +(\d+) +(.*)$")
_SPAM_HEADER = re.compile(r"^\s*(true|false|yes|no)\s*;\s*(-?[\d.]+)\s*/\s*(-?[\d.]+)\s*$", re.I)
_RULE_LINE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s+(.*?)\s*$")


class SpamdError(DaemonError):
    """spamd answered with an error or with something that is not SPAMD/1.x."""


class SpamdUnavailable(SpamdError, DaemonUnavailable):
    """spamd could not be reached or did not answer within the timeout."""


@dataclass(frozen=True)
class SpamRule:
    """One SpamAssassin rule that fired: its name, the points it added, what it means."""

    name: str
    score: float
    description: str


@dataclass(frozen=True)
class SpamVerdict:
    """spamd's score of one message, its own threshold, and the rules that fired."""

    score: float
    threshold: float
    is_spam: bool
    rules: tuple[SpamRule, ...]


class SpamdClient:
    """Talks to one spamd; each call opens its own connection (spamd closes it after a reply)."""

    def __init__(self, address: str | DaemonAddress, *, timeout: float = 15.0) -> None:
        self.address = (
            address if isinstance(address, DaemonAddress) else DaemonAddress.parse(address)
        )
        self.timeout = timeout

    async def ping(self) -> None:
        """Return when spamd answers PONG; SpamdUnavailable or SpamdError otherwise."""
        status, _, _ = await self._exchange(b"PING " + PROTOCOL + b"\r\n\r\n")
        if b"PONG" not in status:
            raise SpamdError(DAEMON, f"unexpected answer to PING: {status!r}")

    async def score(self, raw: bytes) -> SpamVerdict:
        """SpamAssassin's verdict on one complete RFC 5322 message (REPORT)."""
        request = (
            b"REPORT " + PROTOCOL + b"\r\n"
            b"Content-length: " + str(len(raw)).encode() + b"\r\n"
            b"User: warta\r\n\r\n" + raw
        )
        _, headers, body = await self._exchange(request)
        spam = _SPAM_HEADER.match(headers.get("spam", ""))
        if spam is None:
            raise SpamdError(DAEMON, "the reply has no readable Spam: header")
        return SpamVerdict(
            score=float(spam.group(2)),
            threshold=float(spam.group(3)),
            is_spam=spam.group(1).lower() in ("true", "yes"),
            rules=parse_report(body.decode("utf-8", "replace")),
        )

    async def _exchange(self, request: bytes) -> tuple[bytes, dict[str, str], bytes]:
        """Send one request, read the whole reply: status line, headers (lower-case), body."""
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self.address.connect(DAEMON, SpamdUnavailable)
                try:
                    writer.write(request)
                    await writer.drain()
                    if writer.can_write_eof():
                        writer.write_eof()
                    reply = await reader.read()
                finally:
                    await close_quietly(writer)
        except TimeoutError:
            raise SpamdUnavailable(
                DAEMON, f"{self.address} gave no answer within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise SpamdUnavailable(DAEMON, f"connection to {self.address} failed: {exc}") from None
        return parse_reply(reply)


def parse_reply(reply: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """A SPAMD/1.x reply as (status line, headers keyed lower-case, body); SpamdError if bad."""
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *header_lines = head.split(b"\r\n")
    matched = _STATUS.match(status)
    if matched is None:
        raise SpamdError(DAEMON, f"not a SPAMD reply: {status[:80]!r}")
    if int(matched.group(2)) != EX_OK:
        raise SpamdError(DAEMON, f"error {matched.group(2).decode()}: {matched.group(3).decode()}")
    headers = {}
    for line in header_lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def parse_report(text: str) -> tuple[SpamRule, ...]:
    """The rule table at the end of a SpamAssassin report (`pts rule name description`)."""
    rules: list[SpamRule] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("----"):
            in_table = True
            continue
        if not in_table or not line.strip():
            continue
        matched = _RULE_LINE.match(line)
        if matched:
            score, name, description = matched.groups()
            rules.append(SpamRule(name, float(score), description))
        elif rules and line.startswith(" "):
            # A description too long for one line continues, indented, on the next.
            last = rules[-1]
            rules[-1] = SpamRule(last.name, last.score, f"{last.description} {line.strip()}")
    return tuple(rules)


def spamd_client(settings: Settings) -> SpamdClient | None:
    """The client WARTA_SPAMD names, or None when spamd is not configured."""
    if not settings.spamd:
        return None
    return SpamdClient(settings.spamd, timeout=settings.spamd_timeout)
