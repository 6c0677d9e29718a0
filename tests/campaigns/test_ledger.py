"""The send ledger's bulk writes, where the engine and the MTA race to record one message."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.mail.identity import Kind
from app.mail.recording import Attempt, Delivery, LedgerRow, Verdict
from app.models import Campaign, Event, Send, SendStatus
from campaigns import ledger
from tests.helpers.seeding import seed_campaign


async def test_the_mtas_final_word_survives_the_engines_later_sent(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    campaign_id, _ = await seed_campaign(sessionmaker, 3)
    async with sessionmaker() as session:
        campaign = await session.get_one(Campaign, campaign_id)
        await ledger.freeze_audience(session, campaign)
        sends = (await session.scalars(sa.select(Send).order_by(Send.id))).all()
        ids = [send.id for send in sends]
        rows = [
            LedgerRow(Kind.CAMPAIGN, send.id, send.email, campaign_id, send.subscriber_id)
            for send in sends
        ]
        await ledger.mark_sending(session, ids)
        await session.commit()
    # The MTA delivers and bounces within milliseconds, before the batch writes `sent`.
    async with sessionmaker() as session:
        await ledger.record_delivery(
            session,
            [
                Delivery(ids[0], Verdict.DELIVERED, "250 2.0.0 ok from mx"),
                Delivery(ids[1], Verdict.BOUNCED, "550 5.1.1 no such user"),
            ],
        )
        await session.commit()
    async with sessionmaker() as session:
        await ledger.record_attempts(
            session, [Attempt(row, Verdict.SENT, "250 queued as X") for row in rows]
        )
        await session.commit()
    async with sessionmaker() as session:
        rows = (await session.execute(sa.select(Send).order_by(Send.id))).scalars().all()
        summary = [
            (row.status, row.last_reply, row.attempts, row.sent_at is not None) for row in rows
        ]
    assert summary == [
        (SendStatus.delivered, "250 2.0.0 ok from mx", 1, True),
        (SendStatus.bounced, "550 5.1.1 no such user", 1, True),
        (SendStatus.sent, "250 queued as X", 1, True),
    ]


async def test_a_row_settled_after_the_batch_read_it_is_not_claimed_again(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # A dead worker's submission is delivered by the MTA while the worker that resumes the
    # batch is between reading the range and claiming the chunk.
    campaign_id, _ = await seed_campaign(sessionmaker, 2)
    async with sessionmaker() as session:
        campaign = await session.get_one(Campaign, campaign_id)
        await ledger.freeze_audience(session, campaign)
        ids = list(await session.scalars(sa.select(Send.id).order_by(Send.id)))
        await ledger.mark_sending(session, ids)
        await session.commit()
    async with sessionmaker() as session:
        await ledger.record_delivery(session, [Delivery(ids[0], Verdict.DELIVERED, "250 ok")])
        await session.commit()
    async with sessionmaker() as session:
        claimed = await ledger.mark_sending(session, ids)
        await session.commit()
    async with sessionmaker() as session:
        statuses = list(await session.scalars(sa.select(Send.status).order_by(Send.id)))
    assert claimed == {ids[1]}
    assert statuses == [SendStatus.delivered, SendStatus.sending]


async def _planner_rows(session: AsyncSession) -> dict[str, float]:
    """The planner's row count of each table a campaign's chunks read."""
    rows = await session.execute(
        sa.text(
            "SELECT relname, reltuples FROM pg_class "
            "WHERE relname IN ('subscribers', 'subscriptions', 'sends')"
        )
    )
    return {str(name): float(tuples) for name, tuples in rows}


async def test_a_campaign_start_analyzes_an_audience_the_planner_has_not_seen(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # Without statistics, PostgreSQL planned each chunk's eligibility check (100 subscribers
    # by id) as a scan of the list's every membership: ~200 ms a chunk at 10,000 recipients.
    campaign_id, _ = await seed_campaign(sessionmaker, 300)
    async with sessionmaker() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("planner statistics are PostgreSQL's")
        campaign = await session.get_one(Campaign, campaign_id)
        size, _ = await ledger.freeze_audience(session, campaign)
        await session.commit()
    async with sessionmaker() as session:
        known = await _planner_rows(session)
    assert size == 300
    assert known == {"subscribers": 300, "subscriptions": 300, "sends": 300}


async def test_a_campaign_start_does_not_wait_out_a_vacuum_holding_a_table(
    sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An anti-wraparound VACUUM holds its table's SHARE UPDATE EXCLUSIVE lock for as long as
    # it runs and is not cancelled for an ANALYZE: the start goes on without that table's
    # statistics instead of hanging behind it.
    monkeypatch.setattr(ledger, "ANALYZE_LOCK_TIMEOUT", "100ms")
    campaign_id, _ = await seed_campaign(sessionmaker, 300)
    async with sessionmaker() as vacuum, sessionmaker() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("ANALYZE and its lock are PostgreSQL's")
        await vacuum.execute(sa.text("LOCK TABLE subscribers IN SHARE UPDATE EXCLUSIVE MODE"))
        campaign = await session.get_one(Campaign, campaign_id)
        size, _ = await asyncio.wait_for(ledger.freeze_audience(session, campaign), 30)
        # The bound was the ANALYZE's own: the rest of the start's transaction waits as usual.
        lock_timeout = await session.scalar(sa.text("SHOW lock_timeout"))
        await session.commit()
        await vacuum.rollback()
    async with sessionmaker() as session:
        known = await _planner_rows(session)
        sends = await session.scalar(sa.select(sa.func.count()).select_from(Send))
    assert size == sends == 300
    assert known["subscriptions"] == known["sends"] == 300
    assert known["subscribers"] < 300  # skipped: its lock was held
    assert lock_timeout == "0"


async def test_two_words_on_one_row_in_a_batch_apply_in_order(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # A flush that waited out a database restart can hold a deferral and the delivery of the
    # same message: the delivery must stand, as if the words were written one by one.
    campaign_id, _ = await seed_campaign(sessionmaker, 2)
    async with sessionmaker() as session:
        campaign = await session.get_one(Campaign, campaign_id)
        await ledger.freeze_audience(session, campaign)
        sends = (await session.scalars(sa.select(Send).order_by(Send.id))).all()
        rows = [
            LedgerRow(Kind.CAMPAIGN, send.id, send.email, campaign_id, send.subscriber_id)
            for send in sends
        ]
        await ledger.record_attempts(
            session, [Attempt(row, Verdict.SENT, "250 ok") for row in rows]
        )
        await session.commit()
    first, second = (send.id for send in sends)
    async with sessionmaker() as session:
        await ledger.record_delivery(
            session,
            [
                Delivery(first, Verdict.DEFERRED, "451 try later"),
                Delivery(second, Verdict.DELIVERED, "250 2.0.0 ok"),
                Delivery(first, Verdict.DELIVERED, "250 2.0.0 at last"),
                Delivery(second, Verdict.DEFERRED, "451 a late echo"),
            ],
        )
        await session.commit()
    async with sessionmaker() as session:
        summary = (
            await session.execute(sa.select(Send.status, Send.last_reply).order_by(Send.id))
        ).all()
        events = (
            await session.execute(
                sa.select(Event.send_id, Event.kind).where(Event.kind != "sent").order_by(Event.id)
            )
        ).all()
    assert [tuple(row) for row in summary] == [
        (SendStatus.delivered, "250 2.0.0 at last"),
        (SendStatus.delivered, "451 a late echo"),
    ]
    assert [tuple(row) for row in events] == [
        (first, "deferred"),
        (second, "delivered"),
        (first, "delivered"),
        (second, "deferred"),
    ]
