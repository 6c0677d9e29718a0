"""Daily event counts kept as events arrive, so dashboards never scan the events table.

`record_events` calls `add`, which only tallies the keys on the session. When that
session commits, one `INSERT … ON CONFLICT DO UPDATE SET count = count + excluded.count`
(atomic on SQLite 3.24+ and PostgreSQL) adds the transaction's tallies, in the same
transaction: a rolled-back batch counts nothing, a committed one exactly once. Upserting
at commit, all keys sorted, means every transaction locks rollup rows in one order (no
deadlock however many `record_events` calls it made) and holds the locks only while it
commits.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from app.models import EventRollup

SHARDS = 8
"""Rows one hot counter is spread over (see EventRollup); readers sum them."""
ALL_MAIL = -1
"""The `campaign_id` of the rows that count every event of a day, campaign or not: the
dashboard reads ~10 of them per day instead of summing every campaign's rows."""
_KEY = ("day", "kind", "campaign_id", "machine", "shard")

RollupKey = tuple[date, str, int, bool]
"""(UTC day, kind, campaign id or 0, machine verdict)."""
_PENDING = "warta.event_rollups.pending"
"""Where a session keeps the tallies of its open transaction (Session.info)."""


def rollup_key(kind: str, at: datetime, campaign_id: int | None, data: dict[str, Any]) -> RollupKey:
    """Where one event is counted."""
    day = (at if at.tzinfo is None else at.astimezone(UTC)).date()
    return day, kind, campaign_id or 0, bool(data.get("machine"))


def add(session: AsyncSession, keys: Iterable[RollupKey]) -> None:
    """Tally events for their rollup rows; written when `session` commits."""
    pending: Counter[RollupKey] = session.sync_session.info.setdefault(_PENDING, Counter())
    for day, kind, campaign_id, machine in keys:
        pending[(day, kind, campaign_id, machine)] += 1
        pending[(day, kind, ALL_MAIL, machine)] += 1


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    """Upsert the transaction's tallies (runs inside AsyncSession.commit's greenlet)."""
    pending: Counter[RollupKey] | None = session.info.pop(_PENDING, None)
    if not pending:
        return
    shard = random.randrange(SHARDS)
    rows = [
        {"day": d, "kind": k, "campaign_id": c, "machine": m, "shard": shard, "count": n}
        for (d, k, c, m), n in sorted(pending.items())
    ]
    table = cast(sa.Table, EventRollup.__table__)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    statement = insert.on_conflict_do_update(
        index_elements=list(_KEY), set_={"count": table.c["count"] + insert.excluded["count"]}
    )
    session.execute(statement, rows)


@event.listens_for(Session, "after_transaction_end")
def _forget_pending(session: Session, transaction: SessionTransaction) -> None:
    """A transaction that ended without committing (rollback, close) counts nothing."""
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


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
