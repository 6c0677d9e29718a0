"""Daily event counts kept as events arrive, so dashboards never scan the events table.

`record_events` calls `add` in the same transaction as the insert, so a rolled-back batch
counts nothing and a committed one counts exactly once. One batch becomes one upsert per
(day, kind, campaign, machine) it touches: `INSERT … ON CONFLICT DO UPDATE SET count =
count + excluded.count`, which SQLite (3.24+) and PostgreSQL both run atomically.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import EventRollup

SHARDS = 8
"""Rows one hot counter is spread over (see EventRollup); readers sum them."""
ALL_MAIL = -1
"""The `campaign_id` of the rows that count every event of a day, campaign or not: the
dashboard reads ~10 of them per day instead of summing every campaign's rows."""
_KEY = ("day", "kind", "campaign_id", "machine", "shard")

RollupKey = tuple[date, str, int, bool]
"""(UTC day, kind, campaign id or 0, machine verdict)."""


def rollup_key(kind: str, at: datetime, campaign_id: int | None, data: dict[str, Any]) -> RollupKey:
    """Where one event is counted."""
    day = (at if at.tzinfo is None else at.astimezone(UTC)).date()
    return day, kind, campaign_id or 0, bool(data.get("machine"))


async def add(session: AsyncSession, keys: Iterable[RollupKey]) -> None:
    """Count events into their rollup rows, in the caller's transaction."""
    counts: Counter[RollupKey] = Counter()
    for day, kind, campaign_id, machine in keys:
        counts[(day, kind, campaign_id, machine)] += 1
        counts[(day, kind, ALL_MAIL, machine)] += 1
    if not counts:
        return
    shard = random.randrange(SHARDS)
    # Sorted so that two transactions touching the same rows lock them in the same order.
    rows = [
        {"day": d, "kind": k, "campaign_id": c, "machine": m, "shard": shard, "count": n}
        for (d, k, c, m), n in sorted(counts.items())
    ]
    table = cast(sa.Table, EventRollup.__table__)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    statement = insert.on_conflict_do_update(
        index_elements=list(_KEY), set_={"count": table.c["count"] + insert.excluded["count"]}
    )
    await session.execute(statement, rows)


async def daily(
    session: AsyncSession, since: date, kinds: Sequence[str], campaign_id: int | None = None
) -> dict[tuple[date, str, bool], int]:
    """Counts per (day, kind, machine) from `since` on, for all mail or one campaign (0: the
    mail outside campaigns)."""
    query = (
        sa.select(
            EventRollup.day,
            EventRollup.kind,
            EventRollup.machine,
            sa.func.sum(EventRollup.count),
        )
        .where(
            EventRollup.day >= since,
            EventRollup.kind.in_(kinds),
            EventRollup.campaign_id == (ALL_MAIL if campaign_id is None else campaign_id),
        )
        .group_by(EventRollup.day, EventRollup.kind, EventRollup.machine)
    )
    rows = await session.execute(query)
    return {(day, kind, bool(machine)): int(total) for day, kind, machine, total in rows}
