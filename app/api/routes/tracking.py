"""/campaigns/{id}/links: opens and clicks per link of a tracked campaign."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends

from app.api.deps import PathId, require
from app.api.schemas.tracking import CampaignLinkStats, Counts, LinkStats
from app.core.http import SessionDep
from campaigns import engagement as service
from campaigns import service as campaigns_service

router = APIRouter(prefix="/campaigns", tags=["campaigns"])


@router.get("/{campaign_id}/links", dependencies=[Depends(require("campaigns:read"))])
async def link_stats(campaign_id: PathId, session: SessionDep) -> CampaignLinkStats:
    """Unique and total opens, and clicks per link; machine opens and clicks apart."""
    campaign = await campaigns_service.get(session, campaign_id)
    opens = await service.opens(session, campaign_id)
    return CampaignLinkStats(
        campaign_id=campaign.id,
        tracking=campaign.tracking,
        opens=Counts(**asdict(opens)),
        links=[
            LinkStats(position=position, url=url, clicks=Counts(**asdict(tally)))
            for position, url, tally in await service.link_clicks(session, campaign_id)
        ],
    )
