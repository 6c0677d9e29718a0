"""/campaigns (records; the lifecycle endpoints arrive with the campaign engine)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.api.deps import PathId, require
from app.api.pagination import Page, PageDep, make_page
from app.api.schemas.campaigns import CampaignCreate, CampaignRead, CampaignUpdate
from app.core.http import SessionDep
from app.models import Campaign, CampaignStatus
from campaigns import service

router = APIRouter(prefix="/campaigns", tags=["campaigns"])
READ = [Depends(require("campaigns:read"))]
WRITE = [Depends(require("campaigns:write"))]


async def campaign_reads(session: SessionDep, found: list[Campaign]) -> list[CampaignRead]:
    """Campaigns as the API shows them, with their list ids (one query for all)."""
    targets = await service.list_ids(session, [item.id for item in found])
    return [
        CampaignRead.model_validate(item).model_copy(update={"list_ids": targets[item.id]})
        for item in found
    ]


@router.post("", status_code=201, dependencies=WRITE)
async def create_campaign(body: CampaignCreate, session: SessionDep) -> CampaignRead:
    """Create a draft campaign."""
    created = await service.create(session, body.model_dump())
    await session.commit()
    return (await campaign_reads(session, [created]))[0]


@router.get("", dependencies=READ)
async def list_campaigns(
    session: SessionDep, page: PageDep, status: CampaignStatus | None = None
) -> Page[CampaignRead]:
    """Campaigns, optionally by status."""
    found = await service.page(session, page.after_id, page.limit, status)
    return make_page(await campaign_reads(session, found), [item.id for item in found], page.limit)


@router.get("/{campaign_id}", dependencies=READ)
async def get_campaign(campaign_id: PathId, session: SessionDep) -> CampaignRead:
    """One campaign."""
    return (await campaign_reads(session, [await service.get(session, campaign_id)]))[0]


@router.patch("/{campaign_id}", dependencies=WRITE)
async def update_campaign(
    campaign_id: PathId, body: CampaignUpdate, session: SessionDep
) -> CampaignRead:
    """Edit a draft."""
    changed = await service.update(session, campaign_id, body.model_dump(exclude_unset=True))
    await session.commit()
    return (await campaign_reads(session, [changed]))[0]


@router.delete("/{campaign_id}", status_code=204, dependencies=WRITE)
async def delete_campaign(campaign_id: PathId, session: SessionDep) -> Response:
    """Delete a campaign that is not sending."""
    await service.delete(session, campaign_id)
    await session.commit()
    return Response(status_code=204)
