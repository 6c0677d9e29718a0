"""Joining and leaving lists on a subscriber's own request, each change recorded as an event."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.events import NewEvent, record_events
from app.models import EventKind, Subscriber, Subscription, SubscriptionStatus, utcnow

ACTIVE = (SubscriptionStatus.confirmed, SubscriptionStatus.unconfirmed)


async def active_list_ids(session: AsyncSession, subscriber_id: int) -> list[int]:
    """Lists the subscriber is on (confirmed or awaiting confirmation)."""
    rows = await session.scalars(
        sa.select(Subscription.list_id)
        .where(Subscription.subscriber_id == subscriber_id, Subscription.status.in_(ACTIVE))
        .order_by(Subscription.list_id)
    )
    return list(rows.all())


async def leave(
    session: AsyncSession,
    subscriber: Subscriber,
    list_ids: Sequence[int],
    *,
    source: str,
    campaign_id: int | None = None,
) -> list[int]:
    """Unsubscribe from those of `list_ids` the subscriber is on; the lists that changed.

    Repeating it changes nothing and records nothing (a replayed one-click POST).
    """
    if not list_ids:
        return []
    changed = list(
        (
            await session.scalars(
                sa.select(Subscription.list_id)
                .where(
                    Subscription.subscriber_id == subscriber.id,
                    Subscription.list_id.in_(list_ids),
                    Subscription.status.in_(ACTIVE),
                )
                .order_by(Subscription.list_id)
                .with_for_update()
            )
        ).all()
    )
    if not changed:
        return []
    await session.execute(
        sa.update(Subscription)
        .where(Subscription.subscriber_id == subscriber.id, Subscription.list_id.in_(changed))
        .values(status=SubscriptionStatus.unsubscribed, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    await record_events(
        session,
        [
            NewEvent(
                EventKind.unsubscribed,
                email=subscriber.email,
                campaign_id=campaign_id or None,
                subscriber_id=subscriber.id,
                data={"lists": changed, "source": source},
            )
        ],
    )
    return changed


async def join(
    session: AsyncSession,
    subscriber: Subscriber,
    list_ids: Sequence[int],
    *,
    source: str,
    status: SubscriptionStatus = SubscriptionStatus.confirmed,
) -> list[int]:
    """Put the subscriber on `list_ids` with `status`; the lists that changed.

    Used where the subscriber proved the address (a link from their mail), so the
    membership is confirmed, unless `status` says otherwise (a public form's double opt-in).
    """
    if not list_ids:
        return []
    existing = {
        row.list_id: row
        for row in (
            await session.scalars(
                sa.select(Subscription).where(
                    Subscription.subscriber_id == subscriber.id,
                    Subscription.list_id.in_(list_ids),
                )
            )
        ).all()
    }
    changed = []
    for list_id in dict.fromkeys(list_ids):
        row = existing.get(list_id)
        if row is None:
            session.add(Subscription(subscriber_id=subscriber.id, list_id=list_id, status=status))
            changed.append(list_id)
        elif row.status != status and row.status != SubscriptionStatus.confirmed:
            row.status = status
            changed.append(list_id)
    await session.flush()
    if changed and status == SubscriptionStatus.confirmed:
        await record_events(
            session,
            [
                NewEvent(
                    EventKind.subscribed,
                    email=subscriber.email,
                    subscriber_id=subscriber.id,
                    data={"lists": changed, "source": source},
                )
            ],
        )
    return changed
