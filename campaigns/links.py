"""The stored links of tracked campaigns: what a click redirect may lead to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import CampaignLink


async def store(session: AsyncSession, campaign_id: int, urls: Sequence[str]) -> None:
    """Record link n of the campaign as urls[n]; positions already stored are kept."""
    if not urls:
        return
    rows = [{"campaign_id": campaign_id, "position": n, "url": url} for n, url in enumerate(urls)]
    table = cast(sa.Table, CampaignLink.__table__)
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(pg_insert(table).on_conflict_do_nothing(), rows)
    else:
        await session.execute(sqlite_insert(table).on_conflict_do_nothing(), rows)


async def url(session: AsyncSession, campaign_id: int, position: int) -> str | None:
    """Where link `position` of the campaign leads, if the campaign has it."""
    return await session.scalar(
        sa.select(CampaignLink.url).where(
            CampaignLink.campaign_id == campaign_id, CampaignLink.position == position
        )
    )


async def all_of(session: AsyncSession, campaign_id: int) -> list[tuple[int, str]]:
    """(position, url) of every stored link of the campaign."""
    rows = await session.execute(
        sa.select(CampaignLink.position, CampaignLink.url)
        .where(CampaignLink.campaign_id == campaign_id)
        .order_by(CampaignLink.position)
    )
    return [(int(position), str(link)) for position, link in rows]
