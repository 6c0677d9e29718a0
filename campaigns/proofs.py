"""Test sends: a campaign rendered for a real subscriber (if the address is one) or a sample."""

from __future__ import annotations

import secrets

import sqlalchemy as sa

from app.mail import identity
from app.mail.context import EngineContext
from app.mail.identity import Kind
from app.models import Campaign, Subscriber
from campaigns import content
from campaigns.composer import Addressee
from campaigns.content import store_tracked_links


async def send_test_messages(
    engine: EngineContext, campaign_id: int, addresses: list[str]
) -> list[str]:
    """Send one message per address; returns each SMTP reply as text."""
    async with engine.sessionmaker() as session:
        campaign = await session.get(Campaign, campaign_id)
        if campaign is None:
            return [f"campaign {campaign_id} does not exist"]
        prepared = await content.prepared(engine, session, campaign)
        # A test message's click links must resolve before the campaign starts.
        await store_tracked_links(session, campaign, engine.settings)
        await session.commit()
        known = {
            row.email: row
            for row in (
                await session.scalars(sa.select(Subscriber).where(Subscriber.email.in_(addresses)))
            ).all()
        }
    replies = []
    for address in addresses:
        subscriber = known.get(address)
        addressee = Addressee(
            subscriber_id=subscriber.id if subscriber else 0,
            email=address,
            name=subscriber.name if subscriber else "Test Recipient",
            attributes=dict(subscriber.attributes) if subscriber else {},
        )
        # Test sends get a random row number: they must never collide with a real ledger row.
        pseudo_row = 10**15 + secrets.randbelow(10**15)
        data = prepared.build(pseudo_row, addressee)
        envelope = identity.verp_address(
            engine.settings.effective_secret_key(),
            pseudo_row,
            engine.settings.bounce_domain,
            Kind.TEST,
        )
        result = await engine.sender.send_one(envelope, address, data)
        replies.append(f"{address}: {result}")
    return replies
