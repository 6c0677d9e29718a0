"""Seeding a campaign of many subscribers for engine tests, with the demo's bulk insert."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audience.subscribers import add_confirmed
from app.models import (
    Campaign,
    CampaignList,
    CampaignStatus,
    MailingList,
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
        emails = [f"user{index:07d}@example.com" for index in range(recipients)]
        await add_confirmed(
            session,
            mailing_list.id,
            ((address, f"User {index}", {"n": index}) for index, address in enumerate(emails)),
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
