"""The reply processor: reads the replies Maildir the MTA writes, stores each reply, forwards
clean ones, and hands auto-replies and reports over to the bounce processor.

Several MTA processes may share the Maildir: a file is claimed by renaming it from new/ into
cur/ (one rename wins) and a claim older than LEASE is taken over, as the bounce processor
does. A stored file is deleted (the database keeps it, raw included); a file that fails is
left in cur/ and tried again after the lease (a scanner that was down, a database restart).

A forward is owed from the moment the reply is stored: the row is inserted with
`forward_retry_at` a lease ahead, so a process that dies before the forward went out leaves
it to the retry pass of this or another MTA process. Every try (the first one included) is
made under a claim: one conditional UPDATE moves `forward_retry_at` to a lease counted from
the moment of the claim, so a pass or a batch that ran long does not hand out a lease that
has already run out. A forward that fails (the submission listener down, a refusal) is tried
again with a doubling wait (`Forwarding`), its state in the row (`forward_attempts`,
`forward_retry_at`). Should a forward still go out twice (its lease ran out in flight, or a
crash came between the MTA's 250 and the commit), it carries the same Message-ID both times
and the MTA drops the repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.inbound import repository, service
from app.inbound.authentication import Authenticator
from app.inbound.forward import forward_message, submit
from app.inbound.parse import split_trace
from app.inbound.scanning import Scanner
from app.models import InboundMessage, InboundVerdict, utcnow

logger = logging.getLogger(__name__)
LEASE = 600.0
"""Seconds after which another process may take over a claimed file."""
BATCH = 64
"""Files claimed and stored together (one transaction, one commit)."""
CONCURRENCY = 16
"""Files of a batch checked at once (DNS and clamd round trips overlap)."""
RETRY_BATCH = 50
"""Failed forwards tried again per pass of the processor."""
FORWARD_LEASE = 300.0
"""Seconds a process holds a due forward it is retrying; then another may take it."""
_AUTO_REPLY_HEADERS = re.compile(
    rb"^(auto-submitted:[ \t]*(?!no\b)\S|x-autoreply:|x-autorespond:|x-auto-response-suppress:"
    rb"|precedence:[ \t]*(auto_reply|bulk|junk)\b|content-type:[ \t]*multipart/report)",
    re.IGNORECASE | re.MULTILINE,
)


def is_automatic(message: bytes, mail_from: str) -> bool:
    """Whether the mail was sent by a machine (RFC 3834 auto-reply, a report, the null
    sender): those are the bounce processor's, never a person's reply."""
    if not mail_from:
        return True
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[:end]
    return _AUTO_REPLY_HEADERS.search(head) is not None


@dataclass(frozen=True)
class Forwarding:
    """Where forwards are submitted, the domain they come from, and how a failed one is
    retried: `attempts` tries in all, the n-th retry `retry * 2**(n-1)` seconds after the last."""

    submission: str
    domain: str
    attempts: int = 6
    retry: float = 60.0

    def next_try(self, failed: int, now: datetime) -> datetime | None:
        """When to try again after `failed` failed tries; None when they are used up."""
        if failed >= self.attempts:
            return None
        return now + timedelta(seconds=self.retry * 2 ** (failed - 1))


class ReplyProcessor:
    """Polls the replies Maildir; `wake()` makes it look at once (called after each store)."""

    def __init__(
        self,
        directory: Path,
        sessionmaker: async_sessionmaker[AsyncSession],
        policy: service.Policy,
        authenticator: Authenticator,
        scanner: Scanner,
        *,
        reports: Path,
        on_handover: Callable[[], None] | None = None,
        forwarding: Forwarding | None = None,
        poll_interval: float = 2.0,
        max_bytes: int = 50_000_000,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.directory = directory
        self.sessionmaker = sessionmaker
        self.policy = policy
        self.authenticator = authenticator
        self.scanner = scanner
        self.reports = reports
        self.on_handover = on_handover
        self.forwarding = forwarding
        self.poll_interval = poll_interval
        self.max_bytes = max_bytes
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        for sub in ("tmp", "new", "cur"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        (reports / "new").mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        """Run in the background until `stop()`."""
        self._task = asyncio.create_task(self._run(), name="reply-processor")

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
                if self.forwarding is not None:
                    await self.retry_forwards()
            except Exception:
                logger.exception("reply processor pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    async def process_all(self) -> int:
        """Handle every file that can be claimed now, a batch at a time; returns how many
        were stored. A batch is stored while the next one is checked."""
        stored = 0
        storing: asyncio.Task[int] | None = None
        paths = await asyncio.to_thread(self._claimable)
        try:
            for start in range(0, len(paths), BATCH):
                claimed = await asyncio.to_thread(self._claim_all, paths[start : start + BATCH])
                ready = await self._check_all(claimed)
                if storing is not None:
                    stored += await storing
                storing = asyncio.create_task(self._store(ready)) if ready else None
        finally:
            if storing is not None:
                stored += await storing
        return stored

    def _claimable(self) -> list[Path]:
        new = sorted((self.directory / "new").iterdir())
        cutoff = time.time() - LEASE
        stale = []
        for path in (self.directory / "cur").iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    stale.append(path)
        return new + stale

    def _claim_all(self, paths: list[Path]) -> list[Path]:
        return [claimed for path in paths if (claimed := self._claim(path)) is not None]

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

    async def _check_all(self, paths: list[Path]) -> list[tuple[Path, service.Checked]]:
        """The claimed files checked concurrently; those handed over or failing left out."""
        limit = asyncio.Semaphore(CONCURRENCY)
        contents = await asyncio.to_thread(_read_all, paths, self.max_bytes)
        results = await asyncio.gather(
            *(self._check(path, data, limit) for path, data in zip(paths, contents, strict=True))
        )
        return [(path, item) for path, item in zip(paths, results, strict=True) if item]

    async def _store(self, ready: list[tuple[Path, service.Checked]]) -> int:
        """Store a batch in one transaction (one commit, as the spool's group commit), the
        forwards it owes included, then delete the files and forward the clean replies."""
        try:
            async with self.sessionmaker() as session:
                rows = await service.store(session, [item for _, item in ready])
                owed = await self._owe_forwards(session, rows)
                await session.commit()
        except Exception:
            logger.exception("could not store %d replies; they stay for a retry", len(ready))
            return 0
        await asyncio.to_thread(_unlink_all, [path for path, _ in ready])
        for row, (_, item) in zip(rows, ready, strict=True):
            if row.verdict is not InboundVerdict.clean:
                logger.warning("inbound message %s quarantined as %s", row.id, row.verdict)
            elif row.id in owed:
                await self._forward(row, item.parsed.message, owed[row.id])
        return len(rows)

    async def _owe_forwards(
        self, session: AsyncSession, rows: list[InboundMessage]
    ) -> dict[int, str]:
        """Mark the stored rows whose forward is due (in the storing transaction, a lease
        ahead: should the process die before the forward, the retry pass sends it); returns
        their addresses by row id."""
        if self.forwarding is None:
            return {}
        campaigns = {
            row.campaign_id
            for row in rows
            if row.verdict is InboundVerdict.clean and row.campaign_id is not None
        }
        addresses = {c: await repository.forward_address(session, c) for c in sorted(campaigns)}
        owed = {
            row.id: address
            for row in rows
            if row.verdict is InboundVerdict.clean
            and row.campaign_id is not None
            and (address := addresses[row.campaign_id])
        }
        lease = self._lease()
        for row in rows:
            if row.id in owed:
                row.forward_retry_at = lease
        await session.flush()
        return owed

    async def _check(
        self, path: Path, data: bytes | None, limit: asyncio.Semaphore
    ) -> service.Checked | None:
        """The checked reply; None if it was handed over or cannot be checked now."""
        if data is None:
            return None  # taken over by another process since the claim
        async with limit:
            try:
                trace, message = split_trace(data)
                if is_automatic(message, trace.mail_from):
                    await asyncio.to_thread(self._hand_over, path)
                    if self.on_handover is not None:
                        self.on_handover()
                    return None
                return await service.check(self.policy, self.authenticator, self.scanner, data)
            except Exception:
                logger.exception("could not check reply %s; it stays for a retry", path.name)
                return None

    def _hand_over(self, path: Path) -> None:
        """Move an automatic message to the bounce processor's Maildir (same file system)."""
        os.rename(path, self.reports / "new" / path.name.split(",")[0])

    def _lease(self) -> datetime:
        """Until when a claim made now holds (read at the claim: a pass may have run long)."""
        return self.clock() + timedelta(seconds=FORWARD_LEASE)

    async def _forward(self, row: InboundMessage, message: bytes, address: str) -> bool:
        """The first try of a stored reply's forward, under a fresh claim: the batch's earlier
        forwards may have outlasted the lease taken at the store."""
        assert row.forward_retry_at is not None
        lease = self._lease()
        async with self.sessionmaker() as session:
            if not await repository.claim_forward(session, row.id, row.forward_retry_at, lease):
                return False  # the lease ran out and another process has it
            await session.commit()
            sent = await self._try_forward(session, row, message, address, lease)
            await session.commit()
        return sent

    async def retry_forwards(self, now: datetime | None = None) -> int:
        """Try the due forwards (failed, or left by a process that died); how many went out.
        `now` is when the pass looks for due rows (the clock by default); each claim and each
        next try is timed by the clock when it happens."""
        now = now or self.clock()
        async with self.sessionmaker() as session:
            due = await repository.due_forwards(session, now, RETRY_BATCH)
        sent = 0
        for inbound_id, due_at in due:
            lease = self._lease()
            async with self.sessionmaker() as session:
                if not await repository.claim_forward(session, inbound_id, due_at, lease):
                    continue  # another process has it
                row = await session.get_one(InboundMessage, inbound_id)
                address = (
                    await repository.forward_address(session, row.campaign_id)
                    if row.campaign_id is not None
                    else None
                )
                await session.commit()  # no transaction stays open during the submission
                if not address:  # the campaign stopped forwarding, or is gone
                    await repository.forward_failed(
                        session, row.id, lease, row.forward_attempts, None
                    )
                else:
                    _, message = split_trace(service.raw(row))
                    sent += await self._try_forward(session, row, message, address, lease)
                await session.commit()
        return sent

    async def _try_forward(
        self,
        session: AsyncSession,
        row: InboundMessage,
        message: bytes,
        address: str,
        lease: datetime,
    ) -> bool:
        """One try under the claim `lease`; a failure is counted and the next try set (from
        the time it failed), or, tries used up, given up, unless the lease ran out meanwhile
        and another process took the row over: its outcome is the one that counts."""
        assert self.forwarding is not None
        try:
            forward = forward_message(row, message, address, self.forwarding.domain)
            await submit(self.forwarding.submission, forward, address)
        except Exception as exc:
            failed = (row.forward_attempts or 0) + 1
            retry_at = self.forwarding.next_try(failed, self.clock())
            if retry_at is None:
                logger.error(
                    "giving up forwarding inbound message %s to %s after %d tries: %s",
                    row.id, address, failed, exc,
                )  # fmt: skip
            else:
                logger.warning(
                    "could not forward inbound message %s to %s (try %d of %d, next at %s): %s",
                    row.id, address, failed, self.forwarding.attempts, retry_at, exc,
                )  # fmt: skip
            await repository.forward_failed(session, row.id, lease, failed, retry_at)
            return False
        await repository.mark_forwarded(session, row.id, address)
        return True


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _read_all(paths: list[Path], limit: int) -> list[bytes | None]:
    """The first `limit` bytes of each file (one thread hop for a batch)."""
    contents: list[bytes | None] = []
    for path in paths:
        try:
            with path.open("rb") as file:
                contents.append(file.read(limit))
        except FileNotFoundError:
            contents.append(None)
    return contents
