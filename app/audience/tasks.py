"""Sending a double opt-in confirmation mail through the worker's SMTP pool."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from app.audience import optin
from app.mail.context import EngineContext
from app.models import MailingList, Subscriber, Subscription, SubscriptionStatus

logger = logging.getLogger(__name__)


async def send_confirmation(engine: EngineContext, subscriber_id: int, list_ids: list[int]) -> str:
    """Mail the confirmation link for the lists still awaiting it; the SMTP reply as text."""
    async with engine.sessionmaker() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        if subscriber is None:
            return "subscriber is gone"
        lists = list(
            (
                await session.scalars(
                    sa.select(MailingList)
                    .join(Subscription, Subscription.list_id == MailingList.id)
                    .where(
                        Subscription.subscriber_id == subscriber_id,
                        Subscription.list_id.in_(list_ids),
                        Subscription.status == SubscriptionStatus.unconfirmed,
                    )
                    .order_by(MailingList.id)
                )
            ).all()
        )
    if not lists:
        return "nothing awaits confirmation"
    envelope, data = optin.confirmation(engine.settings, subscriber, lists)
    result = await engine.sender.send_one(envelope, subscriber.email, data)
    logger.info("opt-in confirmation for subscriber %s: %s", subscriber_id, result)
    return str(result)
