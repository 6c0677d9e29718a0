"""/campaigns/{id}/schedule|unschedule|pause|resume|cancel and /campaigns/{id}/stats."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from app.api.deps import CurrentKey, PathId, require
from app.api.routes.campaigns import campaign_reads
from app.api.schemas.campaigns import CampaignRead
from app.api.schemas.lifecycle import CampaignPreview, CampaignStats, TestSend, TestSendResult
from app.api.schemas.safety import PreflightRead, ScheduledCampaign
from app.audience import subscribers as subscribers_service
from app.bounces import service as bounces
from app.core import api_keys
from app.core.events import counts_by_kind
from app.core.http import SessionDep, SettingsDep
from app.core.jobs import enqueue_start, enqueue_test_send
from campaigns import content, dispatch, lifecycle, preflight
from campaigns import service as campaigns_service

router = APIRouter(prefix="/campaigns", tags=["campaigns"])
READ = [Depends(require("campaigns:read"))]
SUBSCRIBER_READ = "subscribers:read"
WRITE = [Depends(require("campaigns:write"))]


async def _apply(
    request: Request, session: SessionDep, campaign_id: int, action: str
) -> CampaignRead:
    campaign = await lifecycle.transition(session, campaign_id, action)
    await session.commit()
    pool = request.app.state.queue
    if action == "schedule":
        await enqueue_start(pool, campaign_id)
    elif action == "resume":
        await dispatch.enqueue_pending(pool, session, campaign)
    return (await campaign_reads(session, [campaign]))[0]


@router.post("/{campaign_id}/schedule", dependencies=WRITE)
async def schedule(
    campaign_id: PathId,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    force: Annotated[
        bool, Query(description="Schedule despite a preflight score above the maximum.")
    ] = False,
) -> ScheduledCampaign:
    """draft → scheduled: sends at `send_at`, or now if it is unset or past; 409 with the
    preflight findings if its score is above WARTA_PREFLIGHT_MAX_SCORE and not `force`."""
    campaign = await campaigns_service.get(session, campaign_id)
    prepared = await content.check_renders(session, settings, campaign)
    report = await preflight.gate(session, settings, campaign, force=force, prepared=prepared)
    read = await _apply(request, session, campaign_id, "schedule")
    return ScheduledCampaign(**read.model_dump(), preflight=PreflightRead.of(report))


@router.post("/{campaign_id}/unschedule", dependencies=WRITE)
async def unschedule(campaign_id: PathId, request: Request, session: SessionDep) -> CampaignRead:
    """scheduled → draft, to edit it again."""
    return await _apply(request, session, campaign_id, "unschedule")


@router.post("/{campaign_id}/pause", dependencies=WRITE)
async def pause(campaign_id: PathId, request: Request, session: SessionDep) -> CampaignRead:
    """running → paused: every worker stops sending it within a second."""
    return await _apply(request, session, campaign_id, "pause")


@router.post("/{campaign_id}/resume", dependencies=WRITE)
async def resume(campaign_id: PathId, request: Request, session: SessionDep) -> CampaignRead:
    """paused → running: sends exactly the recipients not yet sent."""
    return await _apply(request, session, campaign_id, "resume")


@router.post("/{campaign_id}/cancel", dependencies=WRITE)
async def cancel(campaign_id: PathId, request: Request, session: SessionDep) -> CampaignRead:
    """Stop for good; recipients not yet sent stay pending in the ledger."""
    return await _apply(request, session, campaign_id, "cancel")


@router.get("/{campaign_id}/stats", dependencies=READ)
async def stats(campaign_id: PathId, session: SessionDep) -> CampaignStats:
    """Ledger counts per status, bounces by class and severity, event counts (unsubscribed,
    opened, clicked), the current rate and an ETA."""
    figures = await lifecycle.stats(session, campaign_id)
    campaign = figures.campaign
    counts = {status: figures.counts.get(status, 0) for status in CampaignStats.model_fields}
    bounced = await bounces.campaign_counts(session, campaign_id)
    events = await counts_by_kind(session, campaign_id)
    return CampaignStats(
        **{
            **counts,
            "bounced_hard": bounced.hard,
            "bounced_soft": bounced.soft,
            "bounced_informational": bounced.informational,
            "bounces_by_class": bounced.by_class,
            **{kind: events.get(kind, 0) for kind in ("unsubscribed", "opened", "clicked")},
            "campaign_id": campaign_id,
            "status": campaign.status.value,
            "status_reason": campaign.status_reason,
            "recipients": figures.recipients,
            "rate_per_second": round(figures.rate, 2),
            "eta_seconds": figures.eta_seconds,
        }
    )


@router.get("/{campaign_id}/preview", dependencies=READ)
async def preview(
    campaign_id: PathId,
    session: SessionDep,
    settings: SettingsDep,
    key: CurrentKey,
    subscriber_id: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
) -> CampaignPreview:
    """The campaign as a subscriber (with `subscribers:read` too) or a sample recipient would
    receive it; its links and tokens are look-alikes that every page refuses."""
    if subscriber_id is not None and not api_keys.allows(key.scopes, SUBSCRIBER_READ):
        raise HTTPException(
            403, f"a preview for a subscriber shows their data: it needs {SUBSCRIBER_READ!r} too"
        )
    campaign = await campaigns_service.get(session, campaign_id)
    subscriber = await subscribers_service.get(session, subscriber_id) if subscriber_id else None
    built = await content.preview(session, settings, campaign, subscriber)
    report = await preflight.check(session, settings, campaign, "preview")
    await session.commit()
    return CampaignPreview(
        headers=built.headers, subject=built.subject, html=built.html, text=built.text,
        preflight=PreflightRead.of(report),
    )  # fmt: skip


TEST_SEND_WAIT = 30.0


@router.post("/{campaign_id}/test", dependencies=WRITE)
async def test_send(
    campaign_id: PathId,
    body: TestSend,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
) -> TestSendResult:
    """Send the campaign to test addresses now, through the priority queue, and report replies."""
    campaign = await campaigns_service.get(session, campaign_id)
    prepared = await content.check_renders(session, settings, campaign)
    report = await preflight.check(session, settings, campaign, "test", prepared=prepared)
    await session.commit()
    pool = request.app.state.queue
    job = await enqueue_test_send(pool, campaign_id, body.addresses)
    try:
        replies = await job.result(timeout=TEST_SEND_WAIT, poll_delay=0.05)
    except TimeoutError:
        raise HTTPException(
            504,
            f"no worker sent the test within {TEST_SEND_WAIT:.0f} s; is `warta worker` running?",
        ) from None
    return TestSendResult(replies=list(replies), preflight=PreflightRead.of(report))
