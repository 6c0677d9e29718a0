"""Content scanning of inbound mail: a spam score from spamd and a malware verdict from
clamd (`app.safety` clients), whichever are configured; none means "not scanned"."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from app.core.settings import Settings
from app.safety.clamd import ClamdClient, ClamdError, ClamdSessions
from app.safety.spamd import SpamdClient, SpamdError, spamd_client

logger = logging.getLogger(__name__)
CLAMD_SESSIONS = 8
"""clamd connections kept per process, so as many scans at once: clamd's default MaxThreads
is 10, and the bounce listener and the API scan on their own connections."""


@dataclass(frozen=True)
class ScanResult:
    """What the scanners said; None where a scanner is not configured (or spamd was down)."""

    spam_score: float | None = None
    malware: str | None = None
    """The signature name, "" when clean."""


class ScanUnavailable(Exception):
    """clamd could not answer and may not be skipped: the message waits for a later try."""


class Scanner(Protocol):
    """Scans one message as received."""

    async def scan(self, message: bytes) -> ScanResult:
        """The verdicts; raise ScanUnavailable when a scanner that must answer cannot."""

    async def aclose(self) -> None:
        """Release the scanners' connections."""


class DaemonScanner:
    """spamd and clamd asked at once. spamd down leaves the message unscored (delivered);
    clamd down holds it back (ScanUnavailable) unless WARTA_CLAMD_FAIL_OPEN. clamd is asked
    over a few kept IDSESSION connections (`aclose()` ends them); spamd closes its
    connection after every reply (SPAMC has no session)."""

    def __init__(
        self, spamd: SpamdClient | None, clamd: ClamdSessions | None, *, fail_open: bool = False
    ) -> None:
        self.spamd = spamd
        self.clamd = clamd
        self.fail_open = fail_open

    @classmethod
    def from_settings(cls, settings: Settings) -> DaemonScanner:
        """The scanners WARTA_SPAMD and WARTA_CLAMD name."""
        clamd = (
            ClamdSessions(
                ClamdClient(settings.clamd, timeout=settings.clamd_timeout), size=CLAMD_SESSIONS
            )
            if settings.clamd
            else None
        )
        return cls(spamd_client(settings), clamd, fail_open=settings.clamd_fail_open)

    async def aclose(self) -> None:
        """End the clamd sessions."""
        if self.clamd is not None:
            await self.clamd.aclose()

    async def scan(self, message: bytes) -> ScanResult:
        """Both verdicts, asked concurrently."""
        score, malware = await asyncio.gather(self._score(message), self._malware(message))
        return ScanResult(score, malware)

    async def _score(self, message: bytes) -> float | None:
        if self.spamd is None:
            return None
        try:
            return (await self.spamd.score(message)).score
        except SpamdError as exc:
            logger.warning("inbound message not scored by spamd: %s", exc)
            return None

    async def _malware(self, message: bytes) -> str | None:
        if self.clamd is None:
            return None
        try:
            verdict = await self.clamd.scan(message)
        except ClamdError as exc:
            if self.fail_open:
                logger.warning("inbound message not scanned by clamd (fail open): %s", exc)
                return None
            raise ScanUnavailable(str(exc)) from exc
        return (verdict.signature or "unnamed") if verdict.infected else ""
