"""The send ledger: freezing an audience, claiming rows, recording outcomes in bulk."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience.segments import segment_filter
from app.models import Campaign, Send, SendStatus, Subscriber, utcnow
from campaigns.audience import audience_filter

BATCH_SPAN = 500  # ledger ids per batch job
SETTLED_BY_MTA = (SendStatus.delivered, SendStatus.bounced, SendStatus.complained)


@dataclass(frozen=True)
class Outcome:
    """What happened to one ledger row on one attempt."""

    send_id: int
    status: SendStatus
    reply: str
    next_attempt_at: datetime | None = None


async def freeze_audience(session: AsyncSession, campaign: Campaign) -> tuple[int, int]:
    """Write one pending row per eligible subscriber; returns (count, lowest ledger id)."""
    segment = segment_filter(campaign.segment) if campaign.segment else None
    now = utcnow()
    recipients = (
        sa.select(
            sa.literal(campaign.id),
            Subscriber.id,
            Subscriber.email,
            sa.literal(SendStatus.pending.value),
            sa.literal(0),
            sa.literal(""),
            sa.literal(now, type_=Send.updated_at.type),
        )
        .where(*audience_filter(campaign.id, segment))
        .order_by(Subscriber.id)
    )
    await session.execute(
        sa.insert(Send).from_select(
            [
                "campaign_id",
                "subscriber_id",
                "email",
                "status",
                "attempts",
                "last_reply",
                "updated_at",
            ],
            recipients,
        )
    )
    count, base = (
        await session.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.min(Send.id), 0)).where(
                Send.campaign_id == campaign.id
            )
        )
    ).one()
    return int(count), int(base)


def batch_range(base: int, index: int) -> tuple[int, int]:
    """The inclusive ledger id range of batch `index`."""
    low = base + index * BATCH_SPAN
    return low, low + BATCH_SPAN - 1


async def ranges_with_work(
    session: AsyncSession, campaign_id: int, base: int, now: datetime
) -> list[tuple[int, int]]:
    """Ranges that still hold rows to send: pending, in flight, or deferred and due."""
    index = (Send.id - base) // BATCH_SPAN
    query = (
        sa.select(index)
        .where(Send.campaign_id == campaign_id, _due(now))
        .distinct()
        .order_by(index)
    )
    return [batch_range(base, int(i)) for i in (await session.scalars(query)).all()]


def _due(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(
        Send.status.in_((SendStatus.pending, SendStatus.sending)),
        sa.and_(Send.status == SendStatus.deferred, Send.next_attempt_at <= now),
    )


async def rows_to_send(
    session: AsyncSession, campaign_id: int, low: int, high: int, now: datetime
) -> list[tuple[int, int | None, str, int]]:
    """(ledger id, subscriber id, email, attempts) of the rows in range that need an attempt.

    Rows still marked `sending` were claimed by an attempt of this very batch that died (a
    batch id runs on one worker at a time): they are sent again with the same Message-ID,
    which the MTA recognises.
    """
    result = await session.execute(
        sa.select(Send.id, Send.subscriber_id, Send.email, Send.attempts)
        .where(Send.campaign_id == campaign_id, Send.id.between(low, high), _due(now))
        .order_by(Send.id)
    )
    return [(row[0], row[1], row[2], row[3]) for row in result]


async def mark_sending(session: AsyncSession, send_ids: Sequence[int]) -> None:
    """Claim rows just before their messages leave."""
    await session.execute(
        sa.update(Send)
        .where(Send.id.in_(send_ids))
        .values(status=SendStatus.sending, updated_at=utcnow())
    )


def _by_id(**values: Any) -> sa.Update:
    """UPDATE sends SET … WHERE id = :b_id, for executemany over many rows."""
    table = cast(sa.Table, Send.__table__)
    return (
        sa.update(table)
        .where(table.c.id == sa.bindparam("b_id"))
        .values(updated_at=utcnow(), **values)
    )


async def record(session: AsyncSession, outcomes: Sequence[Outcome]) -> None:
    """Write a batch of the engine's outcomes in one executemany."""
    if not outcomes:
        return
    now = utcnow()
    table = cast(sa.Table, Send.__table__)
    # The MTA may have reported the message delivered (or bounced) before this batch's
    # write arrives: its word is final, the engine's `sent` must not undo it.
    # (OR of equalities: an IN list would be an expanding parameter, which executemany refuses.)
    settled = sa.or_(*(table.c.status == sa.literal(s.value, sa.String) for s in SETTLED_BY_MTA))
    statement = _by_id(
        status=sa.case((settled, table.c.status), else_=sa.bindparam("b_status")),
        last_reply=sa.case((settled, table.c.last_reply), else_=sa.bindparam("b_reply")),
        next_attempt_at=sa.bindparam("b_next", type_=Send.next_attempt_at.type),
        sent_at=sa.bindparam("b_sent", type_=Send.sent_at.type),
        attempts=table.c.attempts + sa.bindparam("b_inc"),
    )
    params = [
        {
            "b_id": item.send_id,
            "b_status": item.status.value,
            "b_reply": item.reply[:1000],
            "b_next": item.next_attempt_at,
            "b_sent": now if item.status == SendStatus.sent else None,
            "b_inc": 0 if item.status == SendStatus.skipped else 1,
        }
        for item in outcomes
    ]
    await session.execute(statement, params)


async def record_delivery(
    session: AsyncSession, updates: Sequence[tuple[int, SendStatus | None, str]]
) -> None:
    """The MTA's word on rows: (id, final status or None for a mere deferral, reply)."""
    final = [
        {"b_id": row, "b_status": status.value, "b_reply": reply[:1000]}
        for row, status, reply in updates
        if status is not None
    ]
    replies = [
        {"b_id": row, "b_reply": reply[:1000]} for row, status, reply in updates if status is None
    ]
    if final:
        statement = _by_id(status=sa.bindparam("b_status"), last_reply=sa.bindparam("b_reply"))
        await session.execute(statement, final)
    if replies:
        await session.execute(_by_id(last_reply=sa.bindparam("b_reply")), replies)


async def status_counts(session: AsyncSession, campaign_id: int) -> dict[str, int]:
    """Ledger rows per status."""
    rows = await session.execute(
        sa.select(Send.status, sa.func.count())
        .where(Send.campaign_id == campaign_id)
        .group_by(Send.status)
    )
    return {str(status): int(count) for status, count in rows}
