"""Campaign state changes, made with conditional updates so concurrent callers cannot race."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict
from app.models import OPEN_STATUSES, Campaign, CampaignStatus, Send, utcnow
from campaigns import ledger
from campaigns import service as campaigns_service
from campaigns.states import ACTIONS, TransitionError, target

RATE_WINDOW = timedelta(seconds=10)


async def transition(
    session: AsyncSession, campaign_id: int, action: str, *, reason: str = ""
) -> Campaign:
    """Apply an API action (schedule, unschedule, pause, resume, cancel) or raise Conflict."""
    campaign = await campaigns_service.get(session, campaign_id)
    try:
        to = target(action, campaign.status)
    except TransitionError as exc:
        raise Conflict(str(exc)) from None
    values: dict[str, object] = {"status": to, "status_reason": reason, "updated_at": utcnow()}
    if action == "schedule" and campaign.send_at is None:
        values["send_at"] = utcnow()
    allowed = ACTIONS[action][0]
    result = await session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status.in_(allowed))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"campaign {campaign_id} changed state meanwhile; read it and retry")
    await session.refresh(campaign)
    return campaign


async def pause_when(
    session: AsyncSession, campaign_id: int, condition: sa.ColumnElement[bool], reason: Any
) -> bool:
    """Pause a running campaign if `condition` holds, in one conditional UPDATE (safe when many
    processes evaluate it at once: only one changes the row). `reason` may be an SQL
    expression. Returns whether this call paused it."""
    allowed, to = ACTIONS["pause"]
    result = await session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status.in_(allowed), condition)
        .values(status=to, status_reason=reason, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def start(session: AsyncSession, campaign_id: int) -> Campaign | None:
    """scheduled → running and freeze the audience, in one transaction; None if another won."""
    now = utcnow()
    claimed = await session.execute(
        sa.update(Campaign)
        .where(
            Campaign.id == campaign_id,
            Campaign.status == CampaignStatus.scheduled,
            Campaign.send_at <= now,
        )
        .values(status=CampaignStatus.running, started_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    campaign = await campaigns_service.get(session, campaign_id)
    await session.refresh(campaign)
    size, base = await ledger.freeze_audience(session, campaign)
    campaign.audience_size = size
    campaign.ledger_base = base
    await session.flush()
    return campaign


async def due_campaigns(session: AsyncSession, now: datetime) -> list[int]:
    """Scheduled campaigns whose time has come."""
    query = sa.select(Campaign.id).where(
        Campaign.status == CampaignStatus.scheduled, Campaign.send_at <= now
    )
    return list((await session.scalars(query.order_by(Campaign.send_at))).all())


async def running_campaigns(session: AsyncSession) -> list[Campaign]:
    """Campaigns currently sending."""
    query = sa.select(Campaign).where(Campaign.status == CampaignStatus.running)
    return list((await session.scalars(query)).all())


async def finish_if_done(session: AsyncSession, campaign_id: int) -> bool:
    """running → finished once no recipient waits for an outcome (one atomic statement)."""
    open_rows = (
        sa.select(Send.id)
        .where(Send.campaign_id == campaign_id, Send.status.in_(OPEN_STATUSES))
        .exists()
    )
    now = utcnow()
    result = await session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.running, ~open_rows)
        .values(status=CampaignStatus.finished, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def current_status(session: AsyncSession, campaign_id: int) -> CampaignStatus | None:
    """The campaign's status as stored now (workers poll this to honour pause and cancel)."""
    return await session.scalar(sa.select(Campaign.status).where(Campaign.id == campaign_id))


@dataclass(frozen=True)
class Stats:
    """Progress of a campaign."""

    campaign: Campaign
    recipients: int
    counts: dict[str, int]
    rate: float
    eta_seconds: float | None


async def stats(session: AsyncSession, campaign_id: int) -> Stats:
    """Counts per ledger status, the send rate over the last seconds, and an ETA."""
    campaign = await campaigns_service.get(session, campaign_id)
    counts = await ledger.status_counts(session, campaign_id)
    since = utcnow() - RATE_WINDOW
    # sent_at stays set when the MTA later reports delivered or bounced.
    recent = await session.scalar(
        sa.select(sa.func.count()).where(Send.campaign_id == campaign_id, Send.sent_at >= since)
    )
    rate = (recent or 0) / RATE_WINDOW.total_seconds()
    remaining = sum(counts.get(status.value, 0) for status in OPEN_STATUSES)
    eta = remaining / rate if rate > 0 else (0.0 if remaining == 0 else None)
    return Stats(
        campaign=campaign,
        recipients=campaign.audience_size,
        counts=counts,
        rate=rate,
        eta_seconds=eta,
    )
