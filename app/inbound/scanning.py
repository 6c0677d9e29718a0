"""Content scanning of inbound mail: a spam score and a malware verdict, from whatever
scanners are configured (spamd, clamd); none configured means "not scanned"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ScanResult:
    """What the scanners said; None where a scanner is not configured."""

    spam_score: float | None = None
    malware: str | None = None
    """The signature name, "" when clean."""


class ScanUnavailable(Exception):
    """A configured scanner could not answer: the message waits and is scanned again later."""


class Scanner(Protocol):
    """Scans one message as received."""

    async def scan(self, message: bytes) -> ScanResult:
        """The verdicts; raise ScanUnavailable when a scanner that must answer cannot."""


class NoScanner:
    """No scanner configured: every message is unscanned."""

    async def scan(self, message: bytes) -> ScanResult:
        """Nothing to ask."""
        return ScanResult()
