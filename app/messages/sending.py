"""Sending transactional messages: lease the rows, submit to the MTA, record the outcome.

A row is sent only while a worker holds its lease, and only from `queued` or a due
`deferred`, so a message already sent is never sent again. A worker that dies between the
MTA's 250 and the record leaves the lease to expire; the row is then resubmitted with the
same Message-ID, which the MTA recognises and does not deliver twice.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import timedelta

from app.core.jobs import MESSAGE_JOB_SIZE
from app.mail import identity
from app.mail.context import EngineContext
from app.mail.identity import Kind
from app.mail.result import Outcome, SendResult
from app.messages import repository
from app.messages.repository import Attempt, Claimed
from app.models import MessageStatus, utcnow

LEASE = timedelta(minutes=5)
STRAGGLER_AGE = timedelta(seconds=5)
RESUME_LIMIT = 1000
BATCH = MESSAGE_JOB_SIZE  # a job also takes other queued messages, up to this many in all
SUPPRESSED_AT_SEND = "not sent: the address was suppressed after the message was accepted"


@dataclass
class MessagesReport:
    """What one job did."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0


async def send_messages(engine: EngineContext, message_ids: list[int]) -> MessagesReport:
    """Send the due messages among `message_ids`, and other queued ones up to BATCH in all.

    Under a burst, the first job sends what later jobs were enqueued for; those find their
    rows taken (or sent) and return at once.
    """
    report = MessagesReport()
    token = secrets.token_hex(8)
    async with engine.sessionmaker() as session:
        claimed = await repository.claim(
            session, message_ids, token, utcnow(), LEASE, extra=max(0, BATCH - len(message_ids))
        )
        await session.commit()
        blocked = await repository.suppressed_now(session, claimed)
    report.skipped = len(set(message_ids) - {row.id for row in claimed}) + len(blocked)
    if blocked:
        async with engine.sessionmaker() as session:
            await repository.record_attempts(
                session,
                token,
                [
                    Attempt(row.id, MessageStatus.suppressed, SUPPRESSED_AT_SEND, row.to_email)
                    for row in claimed
                    if row.id in blocked
                ],
            )
            await session.commit()
        claimed = [row for row in claimed if row.id not in blocked]
    if not claimed:
        return report
    settings = engine.settings
    secret = settings.effective_secret_key()
    sender = engine.priority_sender or engine.sender
    results = await asyncio.gather(
        *(
            sender.send_one(
                identity.verp_address(secret, row.id, settings.bounce_domain, Kind.MESSAGE),
                row.to_email,
                row.mime,
            )
            for row in claimed
        )
    )
    attempts = [
        _attempt(engine, row, result, report) for row, result in zip(claimed, results, strict=True)
    ]
    async with engine.sessionmaker() as session:
        await repository.record_attempts(session, token, attempts)
        await session.commit()
    return report


def _attempt(
    engine: EngineContext, row: Claimed, result: SendResult, report: MessagesReport
) -> Attempt:
    reply = result.describe()
    if result.outcome is Outcome.DELIVERED:
        report.sent += 1
        return Attempt(row.id, MessageStatus.sent, reply, row.to_email)
    settings = engine.settings
    if result.outcome is Outcome.TEMPORARY and row.attempts + 1 < settings.message_max_attempts:
        report.deferred += 1
        wait = timedelta(seconds=settings.message_retry_base * 2**row.attempts)
        return Attempt(row.id, MessageStatus.deferred, reply, row.to_email, utcnow() + wait)
    report.failed += 1
    return Attempt(row.id, MessageStatus.failed, reply, row.to_email)


async def due_messages(engine: EngineContext) -> list[int]:
    """Messages to (re)enqueue: deferred and due, or queued long enough to be stragglers."""
    now = utcnow()
    async with engine.sessionmaker() as session:
        return await repository.due(session, now, now - STRAGGLER_AGE, RESUME_LIMIT)
