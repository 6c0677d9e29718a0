"""The bounce processor: reads the inbound Maildir, acts on DSNs, complaints and mailto
unsubscribes, and clears what it handled.

Several MTA processes may share the Maildir: a file is claimed by renaming it from new/ into
cur/ (only one rename succeeds) and its mtime is the claim's time. A claim older than
LEASE (its process died mid-way) is taken over by renaming it again. Handled reports are
deleted (the database keeps the evidence); mail that is no report (a person's reply, an
auto-reply) moves to other/ for a person to read; a file that cannot be read moves to
failed/.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audience import unsubscribe as unsubscribe_service
from app.bounces import service as bounces
from app.bounces.attribution import Clues, clues
from app.bounces.classify import Classifier
from app.bounces.parse.mime import MAX_REPORT_BYTES
from app.bounces.parse.report import Report, ReportKind, parse_report
from app.mail.recording import LedgerRow

logger = logging.getLogger(__name__)
LEASE = 600.0
"""Seconds after which another process may take over a claimed file."""
UNSUBSCRIBE_PREFIX = "unsubscribe+"
_TRACE = re.compile(rb"^X-Warta-Rcpt-To: ([^\r\n]*)\r?$", re.MULTILINE)


@dataclass(frozen=True)
class Handled:
    """What one inbound file turned out to be and what was done."""

    kind: str
    """dsn, bounce, complaint, auto_reply, other, unsubscribe, forged, unattributed."""
    bounces: int = 0


class ReportProcessor:
    """Polls the inbound Maildir; `wake()` makes it look at once (called after each store)."""

    def __init__(
        self,
        directory: Path,
        sessionmaker: async_sessionmaker[AsyncSession],
        secret: str,
        policy: bounces.Policy,
        classifier: Classifier,
        *,
        poll_interval: float = 2.0,
    ) -> None:
        self.directory = directory
        self.sessionmaker = sessionmaker
        self.secret = secret
        self.policy = policy
        self.classifier = classifier
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        for sub in ("new", "cur", "other", "failed"):
            (directory / sub).mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        """Run in the background until `stop()`."""
        self._task = asyncio.create_task(self._run(), name="bounce-processor")

    def wake(self) -> None:
        """Look for new files now."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop after the file in hand."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.process_all()
            except Exception:
                logger.exception("bounce processor pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    async def process_all(self) -> int:
        """Handle every file that can be claimed now; returns how many."""
        count = 0
        for path in await asyncio.to_thread(self._claimable):
            claimed = await asyncio.to_thread(self._claim, path)
            if claimed is None:
                continue
            await self._process(claimed)
            count += 1
        return count

    def _claimable(self) -> list[Path]:
        new = sorted((self.directory / "new").iterdir())
        cutoff = time.time() - LEASE
        stale = []
        for path in (self.directory / "cur").iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    stale.append(path)
        return new + stale

    def _claim(self, path: Path) -> Path | None:
        """Rename into cur/ under a fresh name; None if another process got there first."""
        base = path.name.split(":")[0].split(",")[0]
        target = self.directory / "cur" / f"{base},{secrets.token_hex(4)}:2,"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        os.utime(target)
        return target

    async def _process(self, path: Path) -> None:
        try:
            data = await asyncio.to_thread(_read_head, path, MAX_REPORT_BYTES)
            handled = await self.handle(data)
        except Exception:
            logger.exception("could not process inbound file %s; it stays for a retry", path.name)
            return
        if handled.kind in ("other", "auto_reply"):
            await asyncio.to_thread(os.rename, path, self.directory / "other" / path.name)
        else:
            await asyncio.to_thread(path.unlink, True)

    async def handle(self, data: bytes) -> Handled:
        """Act on one stored inbound message (its first bytes, with the trace headers)."""
        recipients = _envelope_recipients(data)
        for address in recipients:
            if address.lower().startswith(UNSUBSCRIBE_PREFIX):
                return await self._unsubscribe(address)
        report = parse_report(data)
        if report.kind in (ReportKind.auto_reply, ReportKind.other):
            logger.info(
                "inbound mail is %s (subject %r): kept in other/", report.kind, report.subject
            )
            return Handled(report.kind.value)
        if report.kind is ReportKind.complaint and not report.feedback_is_complaint:
            logger.info("feedback report of type %s: nothing to do", report.feedback_type)
            return Handled("not_complaint")
        if report.kind in (ReportKind.dsn, ReportKind.bounce) and not report.failures:
            logger.info("delivery report without failures (a delay notice): nothing to do")
            return Handled("delayed")
        senders = [report.feedback.original_mail_from] if report.feedback is not None else []
        found = clues(self.secret, recipients, report.original, report.addresses(), senders)
        raw = data.decode("utf-8", "replace")
        async with self.sessionmaker() as session:
            row = None if found.forged else await self._row(session, found)
            if row is None:
                handled = await self._keep_unattributed(session, report, found, recipients, raw)
            else:
                facts = [self._fact(report, row, raw)]
                await bounces.apply(session, self.policy, facts)
                handled = Handled(report.kind.value, len(facts))
            await session.commit()
        return handled

    async def _row(self, session: AsyncSession, found: Clues) -> LedgerRow | None:
        """The row a signed clue names, if it exists."""
        if found.row is None:
            return None
        row = await bounces.resolve(session, found.row.kind, found.row.row_id, "")
        if row is None:
            logger.warning(
                "report names %s row %s, which does not exist", found.row.kind, found.row.row_id
            )
        return row

    def _fact(self, report: Report, row: LedgerRow, raw: str) -> bounces.Fact:
        """What the report says about the signed row: its complaint, or its recipient's
        failure (the block for the row's address, else the first)."""
        if report.kind is ReportKind.complaint:
            feedback_type = report.feedback_type
            diagnostic = f"feedback-type {feedback_type}"
            return bounces.Fact(row.email, "arf", None, diagnostic, raw, row, feedback_type)
        failures = report.failures
        item = next((f for f in failures if f.final_recipient == row.email), failures[0])
        classification = self.classifier.classify(item.diagnostic, item.status, permanent=True)
        diagnostic = item.diagnostic or item.status
        return bounces.Fact(row.email, report.kind.value, classification, diagnostic, raw, row)

    async def _keep_unattributed(
        self,
        session: AsyncSession,
        report: Report,
        found: Clues,
        recipients: list[str],
        raw: str,
    ) -> Handled:
        """Record a report no signed clue ties to a row, for an operator; act on nothing."""
        if found.forged:
            reason = "forged token"
            logger.warning(
                "forged report ignored: envelope recipient %s has a bad signature", recipients
            )
        else:
            reason = "unknown row" if found.row is not None else "no signed token"
            logger.warning(
                "%s for %s names no ledger row Warta knows (%s): kept, not acted on",
                report.kind,
                found.recipients or recipients,
                reason,
            )
        complaint = report.kind is ReportKind.complaint
        item = report.failures[0] if report.failures else None
        if item is not None:
            email, status, diagnostic = item.final_recipient, item.status, item.diagnostic
        else:
            email, status = (found.recipients or [""])[0], ""
            diagnostic = f"feedback-type {report.feedback_type}" if complaint else ""
        await bounces.keep_unattributed(
            session,
            self.policy,
            bounces.Unattributed(
                email=email,
                complaint=complaint,
                source="arf" if complaint else report.kind.value,
                status=status,
                diagnostic=diagnostic or status,
                reason=reason,
                raw=raw,
            ),
        )
        return Handled("forged" if found.forged else "unattributed")

    async def _unsubscribe(self, address: str) -> Handled:
        token = address.partition("@")[0][len(UNSUBSCRIBE_PREFIX) :]
        async with self.sessionmaker() as session:
            target = await unsubscribe_service.resolve(session, self.secret, token)
            if target is None:
                logger.warning("mailto unsubscribe with an invalid token ignored")
                return Handled("forged")
            # Leaving the lists records the `unsubscribed` event, as for the web pages.
            await unsubscribe_service.unsubscribe(session, target, source="mailto")
            await session.commit()
        return Handled("unsubscribe")


def _read_head(path: Path, limit: int) -> bytes:
    """The first `limit` bytes of a file: a 25 MB report costs no more memory than 1 MB."""
    with path.open("rb") as file:
        return file.read(limit)


def _envelope_recipients(data: bytes) -> list[str]:
    """The envelope recipients InboundStore wrote as a trace header."""
    match = _TRACE.search(data[:4096])
    if match is None:
        return []
    text = match.group(1).decode("utf-8", "replace")
    return [item.strip() for item in text.split(",") if item.strip()]
