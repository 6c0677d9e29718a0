"""Bounce actions against a real database: hard, soft score with a fake clock, complaints,
reversal, and the campaign guard."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audience import suppressions
from app.audience.subscribers import add_confirmed
from app.bounces import service as bounces
from app.bounces.classify import classifier
from app.core.settings import Settings
from app.mail.recording import LedgerRow
from app.models import (
    Bounce,
    Campaign,
    CampaignList,
    CampaignStatus,
    Event,
    MailingList,
    Send,
    SendStatus,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionScope,
)
from campaigns import delivery

DAY1 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


async def _campaign(
    sessionmaker: async_sessionmaker[AsyncSession], recipients: int, sent_at: datetime
) -> tuple[int, list[LedgerRow]]:
    """A running campaign with `recipients` sent ledger rows."""
    async with sessionmaker() as session:
        mailing_list = MailingList(name="news")
        session.add(mailing_list)
        await session.flush()
        emails = [f"user{index}@example.com" for index in range(recipients)]
        await add_confirmed(session, mailing_list.id, ((e, "", {}) for e in emails))
        campaign = Campaign(
            name="c", subject="s", from_email="news@example.com", status=CampaignStatus.running
        )
        session.add(campaign)
        await session.flush()
        session.add(CampaignList(campaign_id=campaign.id, list_id=mailing_list.id))
        ids = dict((await session.execute(sa.select(Subscriber.email, Subscriber.id))).all())
        session.add_all(
            Send(
                campaign_id=campaign.id,
                subscriber_id=ids[email],
                email=email,
                status=SendStatus.sent,
                sent_at=sent_at,
            )
            for email in emails
        )
        await session.commit()
        rows = await delivery.ledger_rows(
            session,
            list(
                (
                    await session.scalars(
                        sa.select(Send.id).where(Send.campaign_id == campaign.id).order_by(Send.id)
                    )
                ).all()
            ),
        )
        return campaign.id, sorted(rows.values(), key=lambda row: row.row_id)


def _fact(row: LedgerRow, reply: str, source: str = "dsn") -> bounces.Fact:
    return bounces.Fact(row.email, source, classifier().classify(reply), reply, reply, row)


async def test_hard_bounce_suppresses_marks_and_is_reversible(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    _, rows = await _campaign(sessionmaker, 1, DAY1)
    policy = bounces.Policy.from_settings(settings)
    async with sessionmaker() as session:
        [record] = await bounces.apply(session, policy, [_fact(rows[0], "550 5.1.1 no such user")])
        await session.commit()
        assert (record.severity, record.action) == ("hard", "suppressed")
    async with sessionmaker() as session:
        suppression = await suppressions.get(session, rows[0].email)
        assert (suppression.scope, suppression.source) == (SuppressionScope.all, "bounce")
        subscriber = await session.scalar(sa.select(Subscriber))
        assert subscriber is not None and subscriber.status is SubscriberStatus.blocklisted
        send = await session.get(Send, rows[0].row_id)
        assert send is not None and send.status is SendStatus.bounced
        event = await session.scalar(sa.select(Event).where(Event.kind == "bounced"))
        assert event is not None
        assert event.data["class"] == "invalid_recipient" and event.data["kind"] == "hard"
        assert event.send_id == rows[0].row_id
        await suppressions.remove(session, rows[0].email)
        await session.commit()
    async with sessionmaker() as session:
        subscriber = await session.scalar(sa.select(Subscriber))
        assert subscriber is not None and subscriber.status is SubscriberStatus.enabled
        assert await session.scalar(sa.select(sa.func.count(Suppression.id))) == 0


async def test_soft_bounces_score_once_a_day_decay_and_suppress_past_the_threshold(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    _, rows = await _campaign(sessionmaker, 1, DAY1)
    policy = replace(bounces.Policy.from_settings(settings), score_threshold=3)
    full = _fact(rows[0], "552 5.2.2 mailbox full")

    async def bounce_at(when: datetime) -> str:
        async with sessionmaker() as session:
            [record] = await bounces.apply(session, policy, [full], now=when)
            await session.commit()
            return record.action

    assert await bounce_at(DAY1) == "scored 1"
    assert await bounce_at(DAY1 + timedelta(hours=5)) == "scored 1"  # same day: no increment
    assert await bounce_at(DAY1 + timedelta(days=1)) == "scored 2"
    # Quiet for longer than the quiet period: the score starts over.
    later = DAY1 + timedelta(days=1) + policy.quiet + timedelta(days=1)
    assert await bounce_at(later) == "scored 1"
    assert await bounce_at(later + timedelta(days=1)) == "scored 2"
    async with sessionmaker() as session:
        assert await session.scalar(sa.select(sa.func.count(Suppression.id))) == 0
    assert await bounce_at(later + timedelta(days=2)) == "scored 3, suppressed"
    async with sessionmaker() as session:
        suppression = await suppressions.get(session, rows[0].email)
        assert suppression.reason.startswith("soft-bounce score 3")


async def test_reputation_block_and_rate_limits_do_not_touch_the_address(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    _, rows = await _campaign(sessionmaker, 2, DAY1)
    policy = bounces.Policy.from_settings(settings)
    async with sessionmaker() as session:
        records = await bounces.apply(
            session,
            policy,
            [
                _fact(rows[0], "550 5.7.1 Client host [192.0.2.9] blocked using Spamhaus"),
                _fact(rows[1], "421 4.7.28 unusual rate of unsolicited mail"),
            ],
        )
        await session.commit()
        assert [r.action for r in records] == ["none", "none"]
        assert await session.scalar(sa.select(sa.func.count(Suppression.id))) == 0
        statuses = set((await session.scalars(sa.select(Subscriber.status))).all())
        assert statuses == {SubscriberStatus.enabled}


async def test_complaint_unsubscribes_everywhere_and_suppresses_broadcast_only(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    _, rows = await _campaign(sessionmaker, 1, DAY1)
    policy = bounces.Policy.from_settings(settings)
    async with sessionmaker() as session:
        other = MailingList(name="other")
        session.add(other)
        await session.flush()
        session.add(
            Subscription(
                subscriber_id=rows[0].subscriber_id,
                list_id=other.id,
                status=SubscriptionStatus.confirmed,
            )
        )
        await session.commit()
    complaint = bounces.Fact(rows[0].email, "arf", None, "abuse", "raw", rows[0], "abuse")
    async with sessionmaker() as session:
        await bounces.apply(session, policy, [complaint])
        await session.commit()
    async with sessionmaker() as session:
        statuses = (await session.scalars(sa.select(Subscription.status))).all()
        assert set(statuses) == {SubscriptionStatus.unsubscribed} and len(statuses) == 2
        suppression = await suppressions.get(session, rows[0].email)
        assert (suppression.scope, suppression.source) == (SuppressionScope.broadcast, "complaint")
        send = await session.get(Send, rows[0].row_id)
        assert send is not None and send.status is SendStatus.complained
        assert await session.scalar(sa.select(sa.func.count()).where(Event.kind == "complained"))
        # A later hard bounce widens the suppression to all mail.
        await bounces.apply(session, policy, [_fact(rows[0], "550 5.1.1 no such user")])
        await session.commit()
    async with sessionmaker() as session:
        suppression = await suppressions.get(session, rows[0].email)
        assert suppression.scope is SuppressionScope.all


async def test_guard_pauses_a_running_campaign_once_past_the_hard_bounce_rate(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    now = datetime.now(UTC)
    campaign_id, rows = await _campaign(sessionmaker, 40, now - timedelta(minutes=5))
    policy = bounces.Policy.from_settings(settings)
    policy = replace(policy, guard=replace(policy.guard, min_sends=40, hard_rate=0.05))

    async def campaign() -> Campaign:
        async with sessionmaker() as session:
            found = await session.get(Campaign, campaign_id)
            assert found is not None
            return found

    async with sessionmaker() as session:
        # 2 of 40 is exactly 5%: not past the threshold.
        await bounces.apply(session, policy, [_fact(r, "550 5.1.1 unknown") for r in rows[:2]])
        await session.commit()
    assert (await campaign()).status is CampaignStatus.running
    async with sessionmaker() as session:
        await bounces.apply(session, policy, [_fact(rows[2], "550 5.1.1 unknown")])
        await session.commit()
    paused = await campaign()
    assert paused.status is CampaignStatus.paused
    assert paused.status_reason.startswith("bounce guard: hard bounces over 5.0%")
    async with sessionmaker() as session:
        # Already paused: the guard changes nothing more.
        assert not await bounces.guard(session, policy.guard, campaign_id, now)


async def test_guard_counts_complaints_and_respects_the_minimum_and_window(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    now = datetime.now(UTC)
    campaign_id, rows = await _campaign(sessionmaker, 20, now - timedelta(hours=3))
    policy = bounces.Policy.from_settings(settings)
    policy = replace(policy, guard=replace(policy.guard, min_sends=10))
    complaint = bounces.Fact(rows[0].email, "arf", None, "abuse", "", rows[0], "abuse")
    async with sessionmaker() as session:
        # The sends are older than the window (1 h): nothing to compare with.
        await bounces.apply(session, policy, [complaint])
        await session.commit()
        assert await session.scalar(sa.select(Campaign.status)) is CampaignStatus.running
        await session.execute(sa.update(Send).values(sent_at=now - timedelta(minutes=1)))
        await session.commit()
        assert await bounces.guard(session, policy.guard, campaign_id, now)
        await session.commit()
        reason = await session.scalar(sa.select(Campaign.status_reason))
        assert reason is not None and reason.startswith("bounce guard: complaints over 0.3%")


async def test_campaign_counts(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    campaign_id, rows = await _campaign(sessionmaker, 3, DAY1)
    policy = bounces.Policy.from_settings(settings)
    async with sessionmaker() as session:
        await bounces.apply(
            session,
            policy,
            [
                _fact(rows[0], "550 5.1.1 unknown"),
                _fact(rows[1], "552 5.2.2 mailbox full"),
                bounces.Fact(rows[2].email, "arf", None, "", "", rows[2], "abuse"),
            ],
        )
        await session.commit()
        counts = await bounces.campaign_counts(session, campaign_id)
        assert counts.by_class == {"invalid_recipient": 1, "mailbox_full": 1}
        assert (counts.hard, counts.soft, counts.informational, counts.complaints) == (1, 1, 0, 1)
        assert await session.scalar(sa.select(sa.func.count(Bounce.id))) == 3
