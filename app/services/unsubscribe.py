"""Unsubscribing a recipient named by a signed link token."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import (
    CampaignList,
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)
from campaigns import identity

PURPOSE = "unsubscribe"


@dataclass(frozen=True)
class Target:
    """Who a token names and the lists it concerns."""

    subscriber: Subscriber
    campaign_id: int
    lists: list[MailingList]


async def resolve(session: AsyncSession, secret: str, token: str) -> Target | None:
    """The subscriber and campaign lists a genuine token names; None for anything else."""
    parts = identity.read_link_token(secret, PURPOSE, token)
    if parts is None or len(parts) != 2:
        return None
    subscriber = await session.get(Subscriber, parts[0])
    if subscriber is None:
        return None
    lists = (
        await session.scalars(
            sa.select(MailingList)
            .join(CampaignList, CampaignList.list_id == MailingList.id)
            .where(CampaignList.campaign_id == parts[1])
            .order_by(MailingList.id)
        )
    ).all()
    return Target(subscriber, parts[1], list(lists))


async def unsubscribe(session: AsyncSession, target: Target) -> int:
    """Mark the memberships of the campaign's lists unsubscribed; returns how many changed."""
    list_ids = [item.id for item in target.lists]
    if not list_ids:
        return 0
    result = await session.execute(
        sa.update(Subscription)
        .where(
            Subscription.subscriber_id == target.subscriber.id,
            Subscription.list_id.in_(list_ids),
            Subscription.status != SubscriptionStatus.unsubscribed,
        )
        .values(status=SubscriptionStatus.unsubscribed, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
