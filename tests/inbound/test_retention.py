"""Quarantined inbound mail expires after WARTA_RETENTION_INBOUND_QUARANTINE days, in
batches, attachments with it; clean replies and recent quarantine stay."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.settings import Settings
from app.inbound.retention import expire_quarantine
from app.models import InboundAttachment, InboundMessage, InboundVerdict, utcnow

Sessions = async_sessionmaker[AsyncSession]


async def _add(sessions: Sessions, verdict: InboundVerdict, age_days: float, subject: str) -> None:
    async with sessions() as session:
        row = InboundMessage(
            subject=subject, raw=b"", verdict=verdict,
            received_at=utcnow() - timedelta(days=age_days),
        )  # fmt: skip
        session.add(row)
        await session.flush()
        session.add(InboundAttachment(inbound_id=row.id, filename="a.bin", content=b"x"))
        await session.commit()


async def _subjects(sessions: Sessions) -> set[str]:
    async with sessions() as session:
        return set(await session.scalars(sa.select(InboundMessage.subject)))


async def test_old_quarantine_goes_in_batches_and_the_rest_stays(
    settings: Settings, sessionmaker: Sessions
) -> None:
    for n in range(5):
        await _add(sessionmaker, InboundVerdict.spam, 40 + n, f"old spam {n}")
    await _add(sessionmaker, InboundVerdict.infected, 31, "old infected")
    await _add(sessionmaker, InboundVerdict.spam, 29, "recent spam")
    await _add(sessionmaker, InboundVerdict.clean, 400, "old reply")
    config = settings.model_copy(update={"retention_inbound_quarantine": 30, "retention_batch": 2})

    assert await expire_quarantine(sessionmaker, config) == 6

    assert await _subjects(sessionmaker) == {"recent spam", "old reply"}
    async with sessionmaker() as session:
        files = await session.scalar(sa.select(sa.func.count()).select_from(InboundAttachment))
    assert files == 2  # the attachments of the deleted messages went with them
    assert await expire_quarantine(sessionmaker, config) == 0


async def test_zero_days_keeps_quarantine_for_ever(
    settings: Settings, sessionmaker: Sessions
) -> None:
    await _add(sessionmaker, InboundVerdict.infected, 4000, "ancient")
    config = settings.model_copy(update={"retention_inbound_quarantine": 0})
    assert await expire_quarantine(sessionmaker, config) == 0
    assert await _subjects(sessionmaker) == {"ancient"}
