"""Retention of quarantined inbound mail: spam and infected messages older than
WARTA_RETENTION_INBOUND_QUARANTINE days are deleted, attachments with them.

Batched by `app/archive/retention.py`'s `in_batches`, as the other kinds: one small batch
per transaction (ids chosen by the indexed received_at), within a time budget, from the
worker's cron.
Clean replies are kept: they are people's mail to the sender, not suspect material.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.archive import retention
from app.core.settings import Settings
from app.inbound import repository
from app.models import utcnow

TIME_BUDGET = 50.0
"""Seconds one run may take; what is left waits for the next run."""


async def quarantine_retention_job(ctx: dict[str, Any]) -> int:
    """The worker's cron: delete expired quarantined messages; how many went."""
    engine = ctx["engine"]
    return await expire_quarantine(engine.sessionmaker, engine.settings)


async def expire_quarantine(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    now: datetime | None = None,
    *,
    budget: float = TIME_BUDGET,
) -> int:
    """Delete quarantined messages received more than the retention ago, a batch at a time."""
    days = settings.retention_inbound_quarantine
    if days <= 0:
        return 0
    cutoff = (now or utcnow()) - timedelta(days=days)
    deadline = time.monotonic() + budget
    return await retention.in_batches(
        sessionmaker, _delete_expired, cutoff, settings.retention_batch, deadline
    )


async def _delete_expired(session: AsyncSession, cutoff: datetime, batch: int) -> int:
    ids = await repository.expired_quarantine(session, cutoff, batch)
    if ids:
        await repository.delete(session, ids)
    return len(ids)
