"""Unsubscribing a recipient named by a signed link token, and undoing it."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience import memberships
from app.mail import identity
from app.models import CampaignList, MailingList, Subscriber
from campaigns.composer import UNSUBSCRIBE_PURPOSE

PURPOSE = UNSUBSCRIBE_PURPOSE


@dataclass(frozen=True)
class Target:
    """Who a token names and the lists it concerns."""

    subscriber: Subscriber
    campaign_id: int
    lists: list[MailingList]


async def subscriber_for(
    session: AsyncSession, secret: str, purpose: str, token: str
) -> tuple[Subscriber, int] | None:
    """The subscriber and campaign id a genuine (subscriber, campaign) token names."""
    parts = identity.read_link_token(secret, purpose, token)
    if parts is None or len(parts) != 2 or not 0 < parts[0] < 2**31 or not 0 <= parts[1] < 2**31:
        return None
    subscriber = await session.get(Subscriber, parts[0])
    if subscriber is None:
        return None
    return subscriber, parts[1]


async def resolve(session: AsyncSession, secret: str, token: str) -> Target | None:
    """The subscriber and campaign lists a genuine token names; None for anything else."""
    found = await subscriber_for(session, secret, PURPOSE, token)
    if found is None:
        return None
    subscriber, campaign_id = found
    lists = (
        await session.scalars(
            sa.select(MailingList)
            .join(CampaignList, CampaignList.list_id == MailingList.id)
            .where(CampaignList.campaign_id == campaign_id)
            .order_by(MailingList.id)
        )
    ).all()
    return Target(subscriber, campaign_id, list(lists))


async def unsubscribe(
    session: AsyncSession, target: Target, *, everything: bool = False, source: str = "one-click"
) -> list[int]:
    """Leave the campaign's lists (or every list); returns the lists that changed."""
    if everything:
        list_ids = await memberships.active_list_ids(session, target.subscriber.id)
    else:
        list_ids = [item.id for item in target.lists]
    return await memberships.leave(
        session, target.subscriber, list_ids, source=source, campaign_id=target.campaign_id
    )


async def undo(session: AsyncSession, target: Target, list_ids: list[int]) -> list[int]:
    """Rejoin the lists an unsubscribe just left (they were named in the signed undo form)."""
    existing = set(
        (await session.scalars(sa.select(MailingList.id).where(MailingList.id.in_(list_ids)))).all()
    )
    return await memberships.join(
        session, target.subscriber, [i for i in list_ids if i in existing], source="undo"
    )


async def list_names(session: AsyncSession, list_ids: list[int]) -> list[str]:
    """Names of lists, in id order."""
    if not list_ids:
        return []
    rows = await session.scalars(
        sa.select(MailingList.name).where(MailingList.id.in_(list_ids)).order_by(MailingList.id)
    )
    return list(rows.all())
