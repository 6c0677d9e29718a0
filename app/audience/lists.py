"""Contact lists: create, read, change, delete; member counts."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict, NotFound
from app.models import MailingList, Subscription


async def get(session: AsyncSession, list_id: int) -> MailingList:
    """The list, or NotFound."""
    found = await session.get(MailingList, list_id)
    if found is None:
        raise NotFound(f"list {list_id} does not exist")
    return found


async def create(session: AsyncSession, **fields: Any) -> MailingList:
    """A new list; a taken name is a Conflict."""
    new = MailingList(**fields)
    session.add(new)
    await _flush_unique(session, fields.get("name", ""))
    return new


async def update(session: AsyncSession, list_id: int, changes: dict[str, Any]) -> MailingList:
    """Apply the given changes."""
    found = await get(session, list_id)
    for field, value in changes.items():
        setattr(found, field, value)
    await _flush_unique(session, changes.get("name", ""))
    return found


async def delete(session: AsyncSession, list_id: int) -> None:
    """Delete the list and its memberships (subscribers stay)."""
    await session.delete(await get(session, list_id))
    await session.flush()


async def page(session: AsyncSession, after_id: int, limit: int) -> list[MailingList]:
    """Up to `limit + 1` lists after `after_id`."""
    query = (
        sa.select(MailingList)
        .where(MailingList.id > after_id)
        .order_by(MailingList.id)
        .limit(limit + 1)
    )
    return list((await session.scalars(query)).all())


async def member_counts(session: AsyncSession, list_ids: list[int]) -> dict[int, dict[str, int]]:
    """Members per list and subscription status."""
    counts: dict[int, dict[str, int]] = {list_id: {} for list_id in list_ids}
    if not list_ids:
        return counts
    rows = await session.execute(
        sa.select(Subscription.list_id, Subscription.status, sa.func.count())
        .where(Subscription.list_id.in_(list_ids))
        .group_by(Subscription.list_id, Subscription.status)
    )
    for list_id, status, count in rows:
        counts[list_id][str(status)] = count
    return counts


async def missing_ids(session: AsyncSession, list_ids: list[int]) -> list[int]:
    """The ids among `list_ids` that name no list."""
    if not list_ids:
        return []
    found = set(
        (await session.scalars(sa.select(MailingList.id).where(MailingList.id.in_(list_ids)))).all()
    )
    return sorted(set(list_ids) - found)


async def _flush_unique(session: AsyncSession, name: str) -> None:
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"a list named {name!r} already exists") from None
