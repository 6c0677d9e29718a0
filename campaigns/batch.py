"""Sending one batch of a campaign: a list of named steps over a range of the ledger."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from app.archive import service as archive
from app.mail.context import EngineContext
from app.mail.dkim import sign_all
from app.mail.identity import Kind
from app.mail.recording import Attempt, LedgerRow, SendReport, Verdict
from app.mail.retry import RetryPolicy
from app.models import Campaign, CampaignStatus, Subscriber, utcnow
from campaigns import content, ledger, lifecycle
from campaigns.audience import audience_filter
from campaigns.composer import Addressee, PreparedCampaign

logger = logging.getLogger(__name__)

CHUNK = 100
STATUS_POLL_SECONDS = 0.25
SKIPPED_REPLY = "skipped: unsubscribed or suppressed"


@dataclass
class BatchReport(SendReport):
    """What one run of a batch did, and why it stopped early if it did."""

    stopped: str = ""
    unfinished: bool = False
    """The slice ran out of time with rows left: the job must run again to send them."""


async def send_batch(
    ctx: EngineContext, campaign_id: int, low: int, high: int, *, until: float = math.inf
) -> BatchReport:
    """Send every row of the range that still needs an attempt; stop early on pause/cancel.

    `until` (a `time.monotonic()` deadline) ends the run between chunks: the job's lease is
    short so that a dead worker's batch is picked up quickly, and a long batch (a slow rate)
    is worked in slices that each fit in the lease.
    """
    report = BatchReport()
    async with ctx.sessionmaker() as session:
        campaign = await session.get(Campaign, campaign_id)
        if campaign is None or campaign.status != CampaignStatus.running:
            report.stopped = "campaign is not running"
            return report
        prepared = await content.prepared(ctx, session, campaign)
        rows = await ledger.rows_to_send(session, campaign_id, low, high, utcnow())
    chunk_size = _chunk_size(ctx, campaign)
    last_poll = 0.0
    for start in range(0, len(rows), chunk_size):
        # At least one chunk per run, however slow the machine: a slice must make progress.
        if start > 0 and time.monotonic() >= until:
            report.unfinished = True
            return report
        if time.monotonic() - last_poll >= STATUS_POLL_SECONDS:
            if (status := await _status(ctx, campaign_id)) != CampaignStatus.running:
                report.stopped = f"campaign is {status}"
                return report
            last_poll = time.monotonic()
        await _send_chunk(ctx, prepared, rows[start : start + chunk_size], report)
    async with ctx.sessionmaker() as session:
        await lifecycle.finish_if_done(session, campaign_id)
        await session.commit()
    return report


def _chunk_size(ctx: EngineContext, campaign: Campaign) -> int:
    """Small enough that a rate limit is smooth (about ten acquisitions a second)."""
    rates = [r for r in (ctx.settings.send_rate, campaign.rate or 0) if r > 0]
    if not rates:
        return CHUNK
    return max(1, min(CHUNK, int(min(rates) / 10)))


async def _status(ctx: EngineContext, campaign_id: int) -> CampaignStatus | None:
    async with ctx.sessionmaker() as session:
        return await lifecycle.current_status(session, campaign_id)


async def _send_chunk(
    ctx: EngineContext,
    prepared: PreparedCampaign,
    rows: Sequence[tuple[int, int | None, str, int]],
    report: BatchReport,
) -> None:
    """Check eligibility again, render, claim, pace, send, record."""
    eligible = await _eligible_recipients(ctx, prepared.campaign_id, rows)
    attempts: list[Attempt] = []
    messages: list[tuple[LedgerRow, int, Addressee, bytes]] = []
    for send_id, subscriber_id, email, tries in rows:
        row = LedgerRow(Kind.CAMPAIGN, send_id, email, prepared.campaign_id, subscriber_id)
        recipient = eligible.get(subscriber_id) if subscriber_id is not None else None
        if recipient is None:
            attempts.append(Attempt(row, Verdict.SKIPPED, SKIPPED_REPLY))
            continue
        try:
            data = prepared.build(send_id, recipient)
        except Exception as exc:  # a render failure must fail this recipient, not the batch
            logger.warning("render failed for ledger row %s: %s", send_id, exc)
            attempts.append(Attempt(row, Verdict.FAILED, f"render error: {exc}"[:1000]))
            continue
        messages.append((row, tries, recipient, data))
    archived = await archive.write(ctx, [(row, data) for row, _, _, data in messages])
    claimed = await _claim(ctx, [row.row_id for row, *_ in messages], archived)
    messages = [message for message in messages if message[0].row_id in claimed]
    await ctx.pace(prepared.campaign_id, prepared.rate, len(messages))
    # Signed here, after the archive kept the bytes as built: the MTA (one process, the
    # busiest) passes mail signed with its own keys on as it is.
    signed = await sign_all(ctx.settings.dkim_dir, [data for *_, data in messages])
    results = await asyncio.gather(
        *(
            ctx.sender.send_one(prepared.envelope_from(row.row_id), recipient.email, data)
            for (row, _, recipient, _), data in zip(messages, signed, strict=True)
        )
    )
    policy = RetryPolicy.for_campaigns(ctx.settings)
    now = utcnow()
    for (row, tries, _, _), result in zip(messages, results, strict=True):
        attempts.append(policy.judge(row, tries, result, now))
    for attempt in attempts:
        report.count(attempt.verdict)
    async with ctx.sessionmaker() as session:
        await ledger.record_attempts(session, attempts)
        await session.commit()


async def _claim(ctx: EngineContext, send_ids: list[int], archived: archive.IndexRows) -> set[int]:
    """Claim the rows, and index the archived messages of those claimed in the same
    transaction (no transaction of the archive's own per chunk). ``archived`` is empty or
    in the order of ``send_ids``. The archive never holds up sending: if its
    rows cannot be written, the rows are claimed without them."""
    async with ctx.sessionmaker() as session:
        claimed = await ledger.mark_sending(session, send_ids)
        # Only the rows this batch claimed: a row another worker holds is sent (and indexed)
        # by that worker, and its index must point at the bytes that worker sends.
        archived = (
            [
                index_row
                for send_id, index_row in zip(send_ids, archived, strict=True)
                if send_id in claimed
            ]
            if archived
            else []
        )
        try:
            await archive.add_index(session, archived)
        except Exception:
            logger.exception("archive: %d messages could not be indexed", len(archived))
            await session.rollback()
            claimed = await ledger.mark_sending(session, send_ids)
        await session.commit()
    return claimed


async def _eligible_recipients(
    ctx: EngineContext, campaign_id: int, rows: Sequence[tuple[int, int | None, str, int]]
) -> dict[int, Addressee]:
    """Addressees still enabled, subscribed and unsuppressed right now (checked at send).

    The segment is not applied again: it chose the audience when the campaign started.
    """
    ids = [subscriber_id for _, subscriber_id, _, _ in rows if subscriber_id is not None]
    if not ids:
        return {}
    async with ctx.sessionmaker() as session:
        result = await session.execute(
            sa.select(
                Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.attributes
            ).where(Subscriber.id.in_(ids), *audience_filter(campaign_id, segment=None))
        )
        return {
            row[0]: Addressee(subscriber_id=row[0], email=row[1], name=row[2], attributes=row[3])
            for row in result
        }
