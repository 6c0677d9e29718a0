"""A campaign batch indexes the archived bytes of the rows it claimed, and only those."""

from __future__ import annotations

import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.archive import service as archive
from app.core.ratelimit import RateLimiter
from app.core.settings import Settings
from app.mail.context import EngineContext
from app.mail.identity import Kind
from app.mail.recording import LedgerRow
from app.mail.sender import SmtpSender
from app.models import Campaign, CampaignStatus, Send, SendStatus, utcnow
from campaigns import lifecycle
from campaigns.batch import _claim
from tests.helpers.seeding import seed_campaign


async def test_a_row_settled_elsewhere_keeps_the_index_of_the_bytes_that_went(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, redis_url: str
) -> None:
    # A dead worker's earlier submission of row A was delivered: the index points at those
    # bytes. A second worker's batch renders A again (other bytes: a new Date, say) but cannot
    # claim it; the index must still point at what the recipient got.
    campaign_id, _ = await seed_campaign(sessionmaker, 2)
    async with sessionmaker() as session:
        await session.execute(
            sa.update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(status=CampaignStatus.scheduled, send_at=utcnow())
        )
        assert await lifecycle.start(session, campaign_id) is not None
        await session.commit()
        sends = (
            await session.execute(
                sa.select(Send.id, Send.subscriber_id, Send.email).order_by(Send.id)
            )
        ).all()
    rows = [LedgerRow(Kind.CAMPAIGN, sid, email, campaign_id, sub) for sid, sub, email in sends]
    (first, second) = rows
    redis = Redis.from_url(redis_url)
    ctx = EngineContext(
        settings, sessionmaker, SmtpSender.from_settings(settings, pool_size=1), RateLimiter(redis)
    )
    try:
        went = b"Subject: the bytes that went\r\n\r\nfirst render\r\n"
        assert await _claim(ctx, [first.row_id], await archive.write(ctx, [(first, went)])) == {
            first.row_id
        }
        async with sessionmaker() as session:
            await session.execute(
                sa.update(Send).where(Send.id == first.row_id).values(status=SendStatus.delivered)
            )
            await session.commit()

        again = b"Subject: the bytes that went\r\n\r\nsecond render\r\n"
        other = b"Subject: news\r\n\r\nfor the second reader\r\n"
        archived = await archive.write(ctx, [(first, again), (second, other)])
        claimed = await _claim(ctx, [first.row_id, second.row_id], archived)
    finally:
        await redis.aclose()

    assert claimed == {second.row_id}
    async with sessionmaker() as session:
        assert (
            await archive.raw_campaign_message(
                session, settings, campaign_id, first.subscriber_id or 0
            )
            == went
        )
        assert (
            await archive.raw_campaign_message(
                session, settings, campaign_id, second.subscriber_id or 0
            )
            == other
        )
