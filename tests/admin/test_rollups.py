"""The daily rollups kept by `record_events` equal a direct count of the events table."""

from __future__ import annotations

import asyncio
import importlib
import random
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.database import unit_of_work
from app.core.event_rollups import ALL_MAIL
from app.core.events import NewEvent, record_events
from app.models import Campaign, Event, EventKind, EventRollup

DAY = datetime(2026, 11, 20, 23, 59, 58, tzinfo=UTC)


def _direct_count_query(dialect: str) -> sa.TextClause:
    """The events grouped as the rollup groups them, read straight from the events table."""
    backfill = importlib.import_module("migrations.versions.0008_admin_console").BACKFILL[dialect]
    return sa.text(backfill[backfill.index("SELECT") :])


async def _rollup_totals(session: AsyncSession) -> dict[tuple[str, str, int, bool], int]:
    rows = await session.execute(
        sa.select(
            EventRollup.day,
            EventRollup.kind,
            EventRollup.campaign_id,
            EventRollup.machine,
            sa.func.sum(EventRollup.count),
        ).group_by(EventRollup.day, EventRollup.kind, EventRollup.campaign_id, EventRollup.machine)
    )
    return {(str(d), k, c, bool(m)): int(n) for d, k, c, m, n in rows}


async def _direct_totals(session: AsyncSession) -> dict[tuple[str, str, int, bool], int]:
    dialect = session.get_bind().dialect.name
    rows = await session.execute(_direct_count_query(dialect))
    return {(str(d), k, c, bool(m)): int(n) for d, k, c, m, _shard, n in rows}


def _mixed_batch(rng: random.Random, campaigns: list[int | None]) -> list[NewEvent]:
    batch = []
    for _ in range(rng.randint(1, 40)):
        kind = rng.choice(list(EventKind))
        data = {}
        if kind in (EventKind.opened, EventKind.clicked):
            data = {"machine": rng.random() < 0.4}
        batch.append(
            NewEvent(
                kind=kind,
                email="someone@example.com",
                campaign_id=rng.choice(campaigns),
                data=data,
                # Either side of a UTC midnight, and now.
                at=rng.choice([DAY, DAY + timedelta(seconds=3), DAY - timedelta(days=1), None]),
            )
        )
    return batch


async def test_rollups_equal_a_direct_count_after_a_mix_of_events(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with unit_of_work(sessionmaker) as session:
        made = [Campaign(name=f"c{i}", subject="s", from_email="a@example.com") for i in range(3)]
        session.add_all(made)
        await session.flush()
        campaigns: list[int | None] = [None, *(c.id for c in made)]
    rng = random.Random(7)

    async def writer(seed: int) -> None:
        local = random.Random(seed)
        for _ in range(8):
            async with unit_of_work(sessionmaker) as session:
                await record_events(session, _mixed_batch(local, campaigns))

    # Concurrent transactions touching the same counters (row locks on PostgreSQL).
    await asyncio.gather(*(writer(rng.randint(0, 10**6)) for _ in range(4)))
    # A rolled-back batch counts nothing, in either table; the session's next one counts.
    async with sessionmaker() as session:
        await record_events(session, _mixed_batch(rng, campaigns))
        await session.rollback()
        await record_events(session, _mixed_batch(rng, campaigns))
        await record_events(session, _mixed_batch(rng, campaigns))  # two calls, one commit
        await session.commit()
    # Nor does one whose session closed without committing.
    async with sessionmaker() as session:
        await record_events(session, _mixed_batch(rng, campaigns))

    async with sessionmaker() as session:
        rollups = await _rollup_totals(session)
        direct = await _direct_totals(session)
        events = await session.scalar(sa.select(sa.func.count()).select_from(Event))
    assert rollups == direct
    per_campaign = sum(n for (_, _, c, _), n in rollups.items() if c != ALL_MAIL)
    all_mail = sum(n for (_, _, c, _), n in rollups.items() if c == ALL_MAIL)
    assert per_campaign == all_mail == events
    assert any(machine for (_, _, _, machine) in rollups)
    assert {day for (day, _, _, _) in rollups} >= {"2026-11-20", "2026-11-21", "2026-11-19"}


async def test_the_migration_backfill_counts_existing_events_as_record_events_does(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    rng = random.Random(11)
    async with unit_of_work(sessionmaker) as session:
        campaign = Campaign(name="c", subject="s", from_email="a@example.com")
        session.add(campaign)
        await session.flush()
        for _ in range(5):
            await record_events(session, _mixed_batch(rng, [None, campaign.id]))
    async with sessionmaker() as session:
        kept = await _rollup_totals(session)
        await session.execute(sa.delete(EventRollup))
        dialect = session.get_bind().dialect.name
        backfill = importlib.import_module("migrations.versions.0008_admin_console").BACKFILL
        await session.execute(sa.text(backfill[dialect]))
        await session.commit()
        assert await _rollup_totals(session) == kept
