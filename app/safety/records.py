"""Stored preflight reports: the latest one per campaign and per template."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import PreflightRecord, utcnow
from app.safety.preflight import PreflightReport


async def save(
    session: AsyncSession,
    report: PreflightReport,
    *,
    context: str,
    campaign_id: int | None = None,
    template_id: int | None = None,
    forced: bool = False,
) -> PreflightRecord:
    """Keep `report` as the latest of its campaign or template (replacing an older one)."""
    column = PreflightRecord.campaign_id if campaign_id is not None else PreflightRecord.template_id
    subject = campaign_id if campaign_id is not None else template_id
    record = await session.scalar(sa.select(PreflightRecord).where(column == subject))
    if record is None:
        record = PreflightRecord(campaign_id=campaign_id, template_id=template_id)
        session.add(record)
    record.context = context
    record.score = report.score
    record.max_score = report.max_score
    record.passed = report.passed
    record.forced = forced
    record.report = report.as_dict()
    record.checked_at = utcnow()
    await session.flush()
    return record


async def latest_for_campaign(session: AsyncSession, campaign_id: int) -> PreflightRecord | None:
    """The campaign's last stored preflight, if it had one."""
    return await session.scalar(
        sa.select(PreflightRecord).where(PreflightRecord.campaign_id == campaign_id)
    )
