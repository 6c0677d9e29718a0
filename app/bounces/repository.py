"""Queries for bounce handling: suppression, scores, the bounce record, the guard's rates."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import (
    Bounce,
    BounceScore,
    Send,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionScope,
    utcnow,
)


def _insert(session: AsyncSession) -> Any:
    dialect = session.get_bind().dialect.name
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


async def subscriber_ids_for(session: AsyncSession, emails: Iterable[str]) -> dict[str, int]:
    """The subscribers with these (lower-case) addresses, in one query."""
    wanted = sorted(set(emails))
    if not wanted:
        return {}
    rows = await session.execute(
        sa.select(Subscriber.email, Subscriber.id).where(Subscriber.email.in_(wanted))
    )
    return {email: subscriber_id for email, subscriber_id in rows}


async def suppress(
    session: AsyncSession, reasons: dict[str, str], scope: SuppressionScope, source: str
) -> None:
    """Suppress addresses (address → reason) unless they already are; with scope all, a
    narrower suppression widens. Insert-or-ignore: safe against concurrent writers."""
    if not reasons:
        return
    table = cast(sa.Table, Suppression.__table__)
    now = utcnow()
    params = [
        {"address": address.lower(), "reason": reason[:500], "scope": scope, "source": source}
        for address, reason in reasons.items()
    ]
    await session.execute(
        _insert(session)(table)
        .values(
            address=sa.bindparam("address"),
            reason=sa.bindparam("reason"),
            scope=sa.bindparam("scope", type_=table.c.scope.type),
            source=sa.bindparam("source"),
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["address"]),
        params,
    )
    if scope != SuppressionScope.all:
        return
    await session.execute(
        sa.update(table)
        .where(table.c.address == sa.bindparam("b_address"), table.c.scope != SuppressionScope.all)
        .values(scope=SuppressionScope.all, source=source, reason=sa.bindparam("b_reason")),
        [{"b_address": p["address"], "b_reason": p["reason"]} for p in params],
    )


async def blocklist(session: AsyncSession, emails: list[str]) -> None:
    """Mark the subscribers with these addresses as receiving no campaign mail."""
    if not emails:
        return
    await session.execute(
        sa.update(Subscriber)
        .where(Subscriber.email.in_([email.lower() for email in emails]))
        .values(status=SubscriberStatus.blocklisted, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


async def unsubscribe_all(session: AsyncSession, subscriber_id: int) -> int:
    """Unsubscribe from every list; returns how many memberships changed."""
    result = await session.execute(
        sa.update(Subscription)
        .where(
            Subscription.subscriber_id == subscriber_id,
            Subscription.status != SubscriptionStatus.unsubscribed,
        )
        .values(status=SubscriptionStatus.unsubscribed, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def bump_scores(
    session: AsyncSession, addresses: list[str], now: datetime, quiet: timedelta
) -> dict[str, int]:
    """Add one to each address's score unless it already bounced today; start over after quiet
    days; returns the scores. Conditional statements, so concurrent processes cannot add twice
    in a day."""
    if not addresses:
        return {}
    table = cast(sa.Table, BounceScore.__table__)
    unique = sorted({address.lower() for address in addresses})
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    stale = table.c.last_bounce_at < now - quiet
    await session.execute(
        sa.update(table)
        .where(table.c.address == sa.bindparam("b_address"), table.c.last_bounce_at < day_start)
        .values(score=sa.case((stale, 1), else_=table.c.score + 1), last_bounce_at=now),
        [{"b_address": address} for address in unique],
    )
    await session.execute(
        _insert(session)(table)
        .values(address=sa.bindparam("address"), score=1, last_bounce_at=now)
        .on_conflict_do_nothing(index_elements=["address"]),
        [{"address": address} for address in unique],
    )
    rows = await session.execute(
        sa.select(table.c.address, table.c.score).where(table.c.address.in_(unique))
    )
    return {str(address): int(score) for address, score in rows}


async def page(
    session: AsyncSession, after_id: int, limit: int, email: str | None, campaign_id: int | None
) -> list[Bounce]:
    """Up to `limit + 1` bounce records after `after_id`, without the raw report."""
    query = sa.select(Bounce).where(Bounce.id > after_id).options(sa.orm.defer(Bounce.raw))
    if email:
        query = query.where(Bounce.email == email.lower())
    if campaign_id is not None:
        query = query.where(Bounce.campaign_id == campaign_id)
    return list((await session.scalars(query.order_by(Bounce.id).limit(limit + 1))).all())


async def counts(session: AsyncSession, campaign_id: int) -> list[tuple[str, str, str, int]]:
    """(kind, severity, class, count) of a campaign's bounce records."""
    rows = await session.execute(
        sa.select(Bounce.kind, Bounce.severity, Bounce.bounce_class, sa.func.count())
        .where(Bounce.campaign_id == campaign_id)
        .group_by(Bounce.kind, Bounce.severity, Bounce.bounce_class)
    )
    return [(str(k), str(s), str(c), int(n)) for k, s, c, n in rows]


def guard_rates(campaign_id: int, since: datetime) -> tuple[Any, Any, Any]:
    """Scalar subqueries: (sends, hard bounces, complaints) of a campaign since `since`."""
    sent = (
        sa.select(sa.func.count(Send.id))
        .where(Send.campaign_id == campaign_id, Send.sent_at >= since)
        .scalar_subquery()
    )

    def bounces(*where: sa.ColumnElement[bool]) -> Any:
        return (
            sa.select(sa.func.count(Bounce.id))
            .where(Bounce.campaign_id == campaign_id, Bounce.created_at >= since, *where)
            .scalar_subquery()
        )

    return sent, bounces(Bounce.severity == "hard"), bounces(Bounce.kind == "complaint")
