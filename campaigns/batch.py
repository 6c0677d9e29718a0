"""Sending one batch of a campaign: a list of named steps over a range of the ledger."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from app.core.events import NewEvent, record_events
from app.mail.context import EngineContext
from app.mail.result import Outcome as Reply
from app.mail.result import SendResult
from app.models import Campaign, CampaignStatus, EventKind, SendStatus, Subscriber, utcnow
from campaigns import content, ledger, lifecycle
from campaigns.audience import audience_filter
from campaigns.composer import Addressee, PreparedCampaign
from campaigns.ledger import Outcome

logger = logging.getLogger(__name__)

CHUNK = 100
STATUS_POLL_SECONDS = 0.25
MAX_ATTEMPTS = 6
RETRY_CAP = timedelta(hours=1)


@dataclass
class BatchReport:
    """What one run of a batch did."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    stopped: str = ""


async def send_batch(ctx: EngineContext, campaign_id: int, low: int, high: int) -> BatchReport:
    """Send every row of the range that still needs an attempt; stop early on pause/cancel."""
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
    outcomes: list[Outcome] = []
    messages: list[tuple[int, int, Addressee, bytes]] = []
    for send_id, subscriber_id, _email, attempts in rows:
        recipient = eligible.get(subscriber_id) if subscriber_id is not None else None
        if recipient is None:
            outcomes.append(
                Outcome(send_id, SendStatus.skipped, "skipped: unsubscribed or suppressed")
            )
            report.skipped += 1
            continue
        try:
            data = prepared.build(send_id, recipient)
        except Exception as exc:  # a render failure must fail this recipient, not the batch
            logger.warning("render failed for ledger row %s: %s", send_id, exc)
            outcomes.append(Outcome(send_id, SendStatus.failed, f"render error: {exc}"[:1000]))
            report.failed += 1
            continue
        messages.append((send_id, attempts, recipient, data))
    async with ctx.sessionmaker() as session:
        await ledger.mark_sending(session, [send_id for send_id, *_ in messages])
        await session.commit()
    await ctx.pace(prepared.campaign_id, prepared.rate, len(messages))
    results = await asyncio.gather(
        *(
            ctx.sender.send_one(prepared.envelope_from(send_id), recipient.email, data)
            for send_id, _, recipient, data in messages
        )
    )
    now = utcnow()
    base = timedelta(seconds=ctx.settings.retry_base)
    for (send_id, attempts, _, _), result in zip(messages, results, strict=True):
        outcomes.append(_outcome(send_id, attempts, result, now, base, report))
    by_row = {send_id: (subscriber_id, email) for send_id, subscriber_id, email, _ in rows}
    async with ctx.sessionmaker() as session:
        await ledger.record(session, outcomes)
        await record_events(session, _events(prepared.campaign_id, by_row, outcomes))
        await session.commit()


_EVENT_OF = {
    SendStatus.sent: EventKind.sent,
    SendStatus.deferred: EventKind.deferred,
    SendStatus.failed: EventKind.failed,
}


def _events(
    campaign_id: int, by_row: dict[int, tuple[int | None, str]], outcomes: list[Outcome]
) -> list[NewEvent]:
    """The engine's facts for webhooks and timelines: sent, deferred or failed at submission."""
    return [
        NewEvent(
            _EVENT_OF[item.status],
            email=by_row[item.send_id][1],
            campaign_id=campaign_id,
            subscriber_id=by_row[item.send_id][0],
            send_id=item.send_id,
            data={"reply": item.reply[:300]},
        )
        for item in outcomes
        if item.status in _EVENT_OF
    ]


def _outcome(
    send_id: int,
    attempts: int,
    result: SendResult,
    now: Any,
    base: timedelta,
    report: BatchReport,
) -> Outcome:
    reply = result.describe()
    if result.outcome is Reply.DELIVERED:
        report.sent += 1
        return Outcome(send_id, SendStatus.sent, reply)
    if result.outcome is Reply.TEMPORARY and attempts + 1 < MAX_ATTEMPTS:
        report.deferred += 1
        wait = min(base * (2**attempts), RETRY_CAP)
        return Outcome(send_id, SendStatus.deferred, reply, next_attempt_at=now + wait)
    report.failed += 1
    return Outcome(send_id, SendStatus.failed, reply)


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
