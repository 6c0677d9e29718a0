"""The suppression list."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.address_hash import hashed_address
from app.core.errors import Conflict, NotFound
from app.models import (
    BounceScore,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionScope,
    utcnow,
)

BOUNCE_SOURCE = "bounce"


async def add(
    session: AsyncSession, address: str, reason: str, scope: SuppressionScope, source: str
) -> Suppression:
    """Suppress an address; an address already suppressed is a Conflict."""
    suppression = Suppression(address=address, reason=reason, scope=scope, source=source)
    session.add(suppression)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"{address} is already suppressed") from None
    return suppression


async def get(session: AsyncSession, address: str) -> Suppression:
    """The suppression for an address (or for its hashed form, left by an erasure), or NotFound."""
    found = await session.scalar(
        sa.select(Suppression)
        .where(Suppression.address.in_([address, hashed_address(address)]))
        .order_by(Suppression.id)
        .limit(1)
    )
    if found is None:
        raise NotFound(f"{address} is not suppressed")
    return found


async def remove(session: AsyncSession, address: str) -> None:
    """Lift the suppression of an address; one made by a bounce also re-enables the
    subscriber it blocklisted and forgets its bounce score."""
    found = await get(session, address)
    await session.delete(found)
    if found.source == BOUNCE_SOURCE:
        await _unblock(session, address)
    await session.flush()


async def _unblock(session: AsyncSession, email: str) -> None:
    """Undo what a bounce suppression did: enable the subscriber, forget the bounce score."""
    await session.execute(
        sa.update(Subscriber)
        .where(Subscriber.email == email.lower())
        .values(status=SubscriberStatus.enabled, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    await session.execute(sa.delete(BounceScore).where(BounceScore.address == email.lower()))


async def page(
    session: AsyncSession,
    after_id: int,
    limit: int,
    scope: SuppressionScope | None,
    address_contains: str | None,
) -> list[Suppression]:
    """Up to `limit + 1` suppressions after `after_id`."""
    query = sa.select(Suppression).where(Suppression.id > after_id)
    if scope is not None:
        query = query.where(Suppression.scope == scope)
    if address_contains:
        query = query.where(Suppression.address.contains(address_contains.lower(), autoescape=True))
    query = query.order_by(Suppression.id).limit(limit + 1)
    return list((await session.scalars(query)).all())
