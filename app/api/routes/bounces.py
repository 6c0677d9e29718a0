"""/bounces: the record of bounces and complaints, and the webhook relays report to."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.api.deps import PathId, require
from app.api.pagination import Page, PageDep, make_page
from app.api.schemas.bounces import BounceDetail, BounceRead, BounceReport
from app.api.schemas.common import Address, DbId
from app.bounces import service
from app.core.http import SessionDep, SettingsDep

router = APIRouter(prefix="/bounces", tags=["bounces"])
READ = [Depends(require("bounces:read"))]
WRITE = [Depends(require("bounces:write"))]


@router.post("", status_code=201, dependencies=WRITE)
async def report_bounce(
    body: BounceReport, session: SessionDep, settings: SettingsDep
) -> BounceRead:
    """A relay reports a bounce or complaint; it is classified and acted on like any other."""
    record = await service.report(
        session,
        settings,
        service.WebhookReport(
            email=body.email,
            complaint=body.type == "complaint",
            status=body.status or "",
            diagnostic=body.diagnostic,
            message_id=body.message_id,
            campaign_id=body.campaign_id,
            feedback_type=body.feedback_type,
            raw=body.model_dump_json(),
        ),
    )
    await session.commit()
    return BounceRead.model_validate(record)


@router.get("", dependencies=READ)
async def list_bounces(
    session: SessionDep,
    page: PageDep,
    email: Annotated[Address | None, Query()] = None,
    campaign_id: Annotated[DbId | None, Query()] = None,
) -> Page[BounceRead]:
    """Bounces and complaints, oldest first, optionally for one address or campaign."""
    found = await service.page(session, page.after_id, page.limit, email, campaign_id)
    items = [BounceRead.model_validate(item) for item in found]
    return make_page(items, [item.id for item in found], page.limit)


@router.get("/{bounce_id}", dependencies=READ)
async def get_bounce(bounce_id: PathId, session: SessionDep) -> BounceDetail:
    """One bounce or complaint with its evidence (the report as received, bounded)."""
    return BounceDetail.model_validate(await service.get(session, bounce_id))
