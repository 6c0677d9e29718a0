"""Bulk seeding of subscribers for engine tests (thousands of rows in one statement)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import (
    Campaign,
    CampaignList,
    CampaignStatus,
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)


async def seed_campaign(
    sessionmaker: async_sessionmaker[AsyncSession],
    recipients: int,
    *,
    rate: float | None = None,
    html: str = "<p>Hello {{ subscriber.name }}</p>",
    text: str = "",
) -> tuple[int, list[str]]:
    """A list of `recipients` confirmed subscribers and a draft campaign to it."""
    async with sessionmaker() as session:
        mailing_list = MailingList(name="seeded")
        session.add(mailing_list)
        await session.flush()
        now = utcnow()
        emails = [f"user{index:07d}@example.com" for index in range(recipients)]
        await session.execute(
            sa.insert(Subscriber),
            [
                {
                    "email": address,
                    "name": f"User {index}",
                    "attributes": {"n": index},
                    "created_at": now,
                    "updated_at": now,
                }
                for index, address in enumerate(emails)
            ],
        )
        ids = (await session.scalars(sa.select(Subscriber.id).order_by(Subscriber.id))).all()
        await session.execute(
            sa.insert(Subscription),
            [
                {
                    "subscriber_id": subscriber_id,
                    "list_id": mailing_list.id,
                    "status": SubscriptionStatus.confirmed,
                    "created_at": now,
                    "updated_at": now,
                }
                for subscriber_id in ids
            ],
        )
        campaign = Campaign(
            name="seeded",
            subject="News for {{ subscriber.name }}",
            from_email="news@example.com",
            html=html,
            text=text,
            status=CampaignStatus.draft,
            rate=rate,
        )
        session.add(campaign)
        await session.flush()
        session.add(CampaignList(campaign_id=campaign.id, list_id=mailing_list.id))
        await session.commit()
        return campaign.id, emails
