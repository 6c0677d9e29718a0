"""The preference centre: a subscriber's own view and changes, data export and erasure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.archive.service import forget_subscriber as forget_archived
from app.audience import memberships
from app.core.address_hash import ERASURE_SOURCE, hashed_address
from app.models import (
    Event,
    MailingList,
    Send,
    Subscriber,
    Subscription,
    Suppression,
    SuppressionScope,
    Visibility,
)
from campaigns.composer import PREFERENCES_PURPOSE

PURPOSE = PREFERENCES_PURPOSE


@dataclass(frozen=True)
class ListChoice:
    """One list on the page and whether the subscriber is on it."""

    id: int
    name: str
    description: str
    subscribed: bool


async def choices(session: AsyncSession, subscriber: Subscriber) -> list[ListChoice]:
    """Public lists, and any private list the subscriber is on, with the current state."""
    active = set(await memberships.active_list_ids(session, subscriber.id))
    rows = await session.scalars(
        sa.select(MailingList)
        .where(sa.or_(MailingList.visibility == Visibility.public, MailingList.id.in_(active)))
        .order_by(MailingList.name)
        .limit(500)
    )
    return [ListChoice(row.id, row.name, row.description, row.id in active) for row in rows]


async def save(
    session: AsyncSession, subscriber: Subscriber, name: str, wanted: set[int]
) -> tuple[list[int], list[int]]:
    """Set the name and the lists on the page to `wanted`; (joined, left) list ids.

    Only lists the page offers can change; other ids in the post are ignored.
    """
    offered = await choices(session, subscriber)
    subscriber.name = name
    join = [c.id for c in offered if c.id in wanted and not c.subscribed]
    leave = [c.id for c in offered if c.id not in wanted and c.subscribed]
    joined = await memberships.join(session, subscriber, join, source="preferences")
    left = await memberships.leave(session, subscriber, leave, source="preferences")
    await session.flush()
    return joined, left


async def unsubscribe_all(session: AsyncSession, subscriber: Subscriber) -> list[int]:
    """Leave every list."""
    active = await memberships.active_list_ids(session, subscriber.id)
    return await memberships.leave(session, subscriber, active, source="preferences")


async def export(session: AsyncSession, subscriber: Subscriber) -> dict[str, Any]:
    """Everything Warta holds about the subscriber, as JSON-ready data."""
    subscriptions = await session.execute(
        sa.select(MailingList.name, Subscription.status, Subscription.created_at)
        .join(MailingList, MailingList.id == Subscription.list_id)
        .where(Subscription.subscriber_id == subscriber.id)
        .order_by(MailingList.name)
    )
    events = await session.execute(
        sa.select(Event.kind, Event.created_at, Event.campaign_id)
        .where(Event.subscriber_id == subscriber.id)
        .order_by(Event.id)
        .limit(10_000)
    )
    return {
        "email": subscriber.email,
        "name": subscriber.name,
        "attributes": subscriber.attributes,
        "status": subscriber.status.value,
        "created_at": subscriber.created_at.isoformat(),
        "subscriptions": [
            {"list": name, "status": status.value, "since": since.isoformat()}
            for name, status, since in subscriptions
        ],
        "events": [
            {"kind": kind, "at": at.isoformat(), "campaign_id": campaign_id}
            for kind, at, campaign_id in events
        ],
    }


async def erase(session: AsyncSession, subscriber: Subscriber) -> None:
    """GDPR erasure: remove the subscriber; keep the address only as a hashed suppression.

    Memberships go with the row (cascade); events and ledger rows lose the address; a
    plain suppression of the address becomes the hashed one; archived messages are dropped.
    """
    address = subscriber.email
    hashed = hashed_address(address)
    await session.execute(
        sa.update(Event)
        .where(sa.or_(Event.subscriber_id == subscriber.id, Event.email == address))
        .values(email="")
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        sa.update(Send)
        .where(Send.subscriber_id == subscriber.id)
        .values(email=hashed)
        .execution_options(synchronize_session=False)
    )
    await forget_archived(session, subscriber.id, address)
    await session.execute(sa.delete(Suppression).where(Suppression.address == address))
    exists = await session.scalar(sa.select(Suppression.id).where(Suppression.address == hashed))
    if exists is None:
        session.add(
            Suppression(
                address=hashed,
                reason="erased at the subscriber's request",
                source=ERASURE_SOURCE,
                scope=SuppressionScope.all,
            )
        )
    await session.delete(subscriber)
    await session.flush()
