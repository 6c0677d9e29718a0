"""Sending transactional messages: lease the rows, submit to the MTA, record the outcome.

A row is sent only while a worker holds its lease, and only from `queued` or a due
`deferred`, so a message already sent is never sent again. A worker that dies between the
MTA's 250 and the record leaves the lease to expire; the row is then resubmitted with the
same Message-ID, which the MTA recognises and does not deliver twice.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.archive import service as archive
from app.core.jobs import MESSAGE_JOB_SIZE
from app.mail import identity
from app.mail.context import EngineContext
from app.mail.dkim import sign_all
from app.mail.identity import Kind
from app.mail.recording import Attempt, SendReport, Verdict
from app.mail.retry import RetryPolicy
from app.messages import repository
from app.models import utcnow

logger = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)
STRAGGLER_AGE = timedelta(seconds=5)
RESUME_LIMIT = 1000
BATCH = MESSAGE_JOB_SIZE  # a job also takes other queued messages, up to this many in all
SUPPRESSED_AT_SEND = "not sent: the address was suppressed after the message was accepted"


async def send_messages(engine: EngineContext, message_ids: list[int]) -> SendReport:
    """Send the due messages among `message_ids`, and other queued ones up to BATCH in all.

    Under a burst, the first job sends what later jobs were enqueued for; those find their
    rows taken (or sent) and return at once.
    """
    report = SendReport()
    token = secrets.token_hex(8)
    claimed, blocked = await _claim(engine, message_ids, token)
    report.skipped = len(set(message_ids) - {row.id for row in claimed})
    if blocked:
        skipped = [
            Attempt(row.row, Verdict.SKIPPED, SUPPRESSED_AT_SEND)
            for row in claimed
            if row.id in blocked
        ]
        await _record(engine, skipped, token, report)
        claimed = [row for row in claimed if row.id not in blocked]
    if not claimed:
        return report
    settings = engine.settings
    secret = settings.effective_secret_key()
    sender = engine.priority_sender or engine.sender
    # DKIM-signed here, after the archive kept the bytes as built: the MTA passes it on.
    signed = await sign_all(settings.dkim_dir, [row.mime for row in claimed])
    results = await asyncio.gather(
        *(
            sender.send_one(
                identity.verp_address(secret, row.id, settings.bounce_domain, Kind.MESSAGE),
                row.to_email,
                mime,
            )
            for row, mime in zip(claimed, signed, strict=True)
        )
    )
    policy = RetryPolicy.for_messages(settings)
    now = utcnow()
    attempts = [
        policy.judge(row.row, row.attempts, result, now)
        for row, result in zip(claimed, results, strict=True)
    ]
    await _record(engine, attempts, token, report)
    return report


async def _claim(
    engine: EngineContext, message_ids: list[int], token: str
) -> tuple[list[repository.Claimed], set[int]]:
    """Take the lease on the rows to send (and those suppressed since: the second set), and
    archive the messages to send for the first time, as built, in the same transaction: a
    row claimed again (a retry) was archived at its first attempt, and no transaction of
    the archive's own is needed. The archive never holds up sending: if its index rows
    cannot be written, the rows are claimed without them (and those messages stay out of
    the archive: their next claim is a retry).

    The day file is written while the transaction holds the claimed rows (a thread hop,
    compression and an append: about a millisecond for a job), which nobody else wants
    until they are sent. A worker that dies before it records leaves `attempts` at 0: the
    next claim archives the message again, its index row then names the new copy, and the
    first stays in the day file, unreferenced, until that file is rewritten or dropped."""
    async with engine.sessionmaker() as session:
        claimed, blocked = await _leased(session, message_ids, token)
        archived = await archive.write(
            engine,
            [(row.row, row.mime) for row in claimed if row.id not in blocked and not row.attempts],
        )
        try:
            await archive.add_index(session, archived)
        except Exception:
            logger.exception("archive: %d messages could not be indexed", len(archived))
            await session.rollback()
            claimed, blocked = await _leased(session, message_ids, token)
        await session.commit()
    return claimed, blocked


async def _leased(
    session: AsyncSession, message_ids: list[int], token: str
) -> tuple[list[repository.Claimed], set[int]]:
    extra = max(0, BATCH - len(message_ids))
    claimed = await repository.claim(session, message_ids, token, utcnow(), LEASE, extra=extra)
    return claimed, await repository.suppressed_now(session, claimed)


async def _record(
    engine: EngineContext, attempts: list[Attempt], lease: str, report: SendReport
) -> None:
    for attempt in attempts:
        report.count(attempt.verdict)
    async with engine.sessionmaker() as session:
        await repository.record_attempts(session, attempts, lease=lease)
        await session.commit()


async def due_messages(engine: EngineContext) -> list[int]:
    """Messages to (re)enqueue: deferred and due, or queued long enough to be stragglers."""
    now = utcnow()
    async with engine.sessionmaker() as session:
        return await repository.due(session, now, now - STRAGGLER_AGE, RESUME_LIMIT)
