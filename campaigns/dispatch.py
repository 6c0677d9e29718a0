"""Handing a running campaign's work to the workers: one batch job per ledger range with work."""

from __future__ import annotations

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.jobs import enqueue_batches
from app.models import Campaign, utcnow
from campaigns import ledger


async def enqueue_pending(pool: ArqRedis, session: AsyncSession, campaign: Campaign) -> int:
    """Enqueue a batch for every range still holding rows to send; how many jobs were new.

    Job ids are deterministic, so this is idempotent: resume, the reconciler and a start may
    all call it for the same campaign.
    """
    ranges = await ledger.ranges_with_work(session, campaign.id, campaign.ledger_base, utcnow())
    return await enqueue_batches(pool, campaign.id, ranges)
