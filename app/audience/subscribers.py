"""Subscribers and their list memberships."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience import lists as lists_service
from app.audience.segments import SegmentError, segment_filter
from app.core.errors import Conflict, Invalid, NotFound
from app.models import (
    MailingList,
    OptIn,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    utcnow,
)


@dataclass(frozen=True)
class SubscriberQuery:
    """Filters for listing subscribers; all given filters must hold."""

    list_id: int | None = None
    status: SubscriberStatus | None = None
    subscription_status: SubscriptionStatus | None = None
    email_contains: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    segment: dict[str, Any] | None = None


async def get(session: AsyncSession, subscriber_id: int) -> Subscriber:
    """The subscriber, or NotFound."""
    found = await session.get(Subscriber, subscriber_id)
    if found is None:
        raise NotFound(f"subscriber {subscriber_id} does not exist")
    return found


async def memberships(
    session: AsyncSession, subscriber_ids: list[int]
) -> dict[int, list[Subscription]]:
    """Each subscriber's memberships, ordered by list id."""
    result: dict[int, list[Subscription]] = {sid: [] for sid in subscriber_ids}
    if subscriber_ids:
        rows = await session.scalars(
            sa.select(Subscription)
            .where(Subscription.subscriber_id.in_(subscriber_ids))
            .order_by(Subscription.subscriber_id, Subscription.list_id)
        )
        for row in rows:
            result[row.subscriber_id].append(row)
    return result


async def create(
    session: AsyncSession,
    *,
    email: str,
    name: str,
    attributes: dict[str, Any],
    status: SubscriberStatus,
    list_ids: list[int],
    preconfirm: bool,
) -> Subscriber:
    """A new subscriber with memberships; an existing address is a Conflict."""
    await _check_lists(session, list_ids)
    subscriber = Subscriber(email=email, name=name, attributes=attributes, status=status)
    session.add(subscriber)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"a subscriber with the address {email} already exists") from None
    await _add_memberships(session, subscriber.id, list_ids, preconfirm)
    return subscriber


async def update(
    session: AsyncSession, subscriber_id: int, changes: dict[str, Any], *, preconfirm: bool
) -> Subscriber:
    """Apply changes; `lists`, if given, becomes the exact set of memberships."""
    subscriber = await get(session, subscriber_id)
    list_ids = changes.pop("lists", None)
    for name, value in changes.items():
        setattr(subscriber, name, value)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"another subscriber has the address {changes.get('email')}") from None
    if list_ids is not None:
        await _check_lists(session, list_ids)
        await session.execute(
            sa.delete(Subscription).where(
                Subscription.subscriber_id == subscriber_id,
                Subscription.list_id.not_in(list_ids) if list_ids else sa.true(),
            )
        )
        await _add_memberships(session, subscriber_id, list_ids, preconfirm)
    return subscriber


async def delete(session: AsyncSession, subscriber_id: int) -> None:
    """Delete the subscriber and their memberships."""
    await session.delete(await get(session, subscriber_id))
    await session.flush()


async def set_membership(
    session: AsyncSession, subscriber_id: int, list_id: int, status: SubscriptionStatus
) -> Subscription:
    """Create or change one membership."""
    await get(session, subscriber_id)
    await lists_service.get(session, list_id)
    membership = await session.get(Subscription, (subscriber_id, list_id))
    if membership is None:
        membership = Subscription(subscriber_id=subscriber_id, list_id=list_id, status=status)
        session.add(membership)
    else:
        membership.status = status
    await session.flush()
    return membership


async def remove_membership(session: AsyncSession, subscriber_id: int, list_id: int) -> None:
    """Remove the subscriber from the list, or NotFound."""
    membership = await session.get(Subscription, (subscriber_id, list_id))
    if membership is None:
        raise NotFound(f"subscriber {subscriber_id} is not on list {list_id}")
    await session.delete(membership)
    await session.flush()


def filters(query: SubscriberQuery) -> list[sa.ColumnElement[bool]]:
    """The WHERE clauses for a query (also used by the export)."""
    clauses: list[sa.ColumnElement[bool]] = []
    if query.list_id is not None or query.subscription_status is not None:
        membership = sa.select(Subscription.subscriber_id).where(
            Subscription.subscriber_id == Subscriber.id
        )
        if query.list_id is not None:
            membership = membership.where(Subscription.list_id == query.list_id)
        if query.subscription_status is not None:
            membership = membership.where(Subscription.status == query.subscription_status)
        clauses.append(membership.exists())
    if query.status is not None:
        clauses.append(Subscriber.status == query.status)
    if query.email_contains:
        clauses.append(Subscriber.email.contains(query.email_contains.lower(), autoescape=True))
    for key, value in query.attributes.items():
        clauses.append(Subscriber.attributes[key].as_string() == value)
    if query.segment is not None:
        try:
            clauses.append(segment_filter(query.segment))
        except SegmentError as exc:
            raise Invalid(str(exc)) from None
    return clauses


async def page(
    session: AsyncSession, query: SubscriberQuery, after_id: int, limit: int
) -> list[Subscriber]:
    """Up to `limit + 1` matching subscribers after `after_id`."""
    statement = (
        sa.select(Subscriber)
        .where(Subscriber.id > after_id, *filters(query))
        .order_by(Subscriber.id)
        .limit(limit + 1)
    )
    return list((await session.scalars(statement)).all())


async def _check_lists(session: AsyncSession, list_ids: list[int]) -> None:
    missing = await lists_service.missing_ids(session, list_ids)
    if missing:
        raise Invalid(f"unknown list ids: {missing}")


async def _add_memberships(
    session: AsyncSession, subscriber_id: int, list_ids: list[int], preconfirm: bool
) -> None:
    """Add memberships that do not exist yet; existing ones keep their status."""
    if not list_ids:
        return
    existing = set(
        (
            await session.scalars(
                sa.select(Subscription.list_id).where(Subscription.subscriber_id == subscriber_id)
            )
        ).all()
    )
    rows = await session.execute(
        sa.select(MailingList.id, MailingList.optin).where(MailingList.id.in_(list_ids))
    )
    optins = {list_id: optin for list_id, optin in rows}
    now = utcnow()
    for list_id in dict.fromkeys(list_ids):
        if list_id in existing:
            continue
        confirmed = preconfirm or optins[list_id] == OptIn.single
        status = SubscriptionStatus.confirmed if confirmed else SubscriptionStatus.unconfirmed
        session.add(
            Subscription(
                subscriber_id=subscriber_id,
                list_id=list_id,
                status=status,
                created_at=now,
                updated_at=now,
            )
        )
    await session.flush()


async def add_confirmed(
    session: AsyncSession,
    list_id: int,
    people: Iterable[tuple[str, str, dict[str, Any]]],
    chunk: int = 5000,
) -> list[int]:
    """Insert new (email, name, attributes) as confirmed members of a list, in bulk; their ids.

    For seeding (the demo, benchmarks, tests): no validation, no events, no opt-in mail.
    """
    now = utcnow()
    ids: list[int] = []
    people = iter(people)
    while batch := list(itertools.islice(people, chunk)):
        rows = [
            {"email": e, "name": n, "attributes": a, "created_at": now, "updated_at": now}
            for e, n, a in batch
        ]
        inserted = await session.scalars(
            sa.insert(Subscriber).returning(Subscriber.id, sort_by_parameter_order=True), rows
        )
        new = list(inserted)
        await session.execute(
            sa.insert(Subscription),
            [
                {
                    "subscriber_id": subscriber_id,
                    "list_id": list_id,
                    "status": SubscriptionStatus.confirmed,
                    "created_at": now,
                    "updated_at": now,
                }
                for subscriber_id in new
            ],
        )
        ids += new
    return ids


async def count_all(session: AsyncSession) -> int:
    """How many subscribers are stored (for /metrics)."""
    return await session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) or 0
