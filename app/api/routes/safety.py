"""/campaigns/{id}/preflight and /domains/{domain}/check: content and sender safety."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from app.api.deps import PathId, require
from app.api.schemas.safety import DomainReportRead, StoredPreflightRead
from app.core.errors import NotFound
from app.core.http import SessionDep, SettingsDep
from app.safety import domains
from campaigns import preflight
from campaigns import service as campaigns_service

router = APIRouter(tags=["safety"])
CAMPAIGNS_READ = [Depends(require("campaigns:read"))]
DOMAIN = r"^([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"


@router.get("/campaigns/{campaign_id}/preflight", dependencies=CAMPAIGNS_READ)
async def campaign_preflight(
    campaign_id: PathId,
    session: SessionDep,
    settings: SettingsDep,
    stored: Annotated[
        bool, Query(description="The last stored report instead of a new run.")
    ] = False,
) -> StoredPreflightRead:
    """Score the campaign now (spamd and Warta's rules) and keep the report; or the stored one."""
    if not stored:
        campaign = await campaigns_service.get(session, campaign_id)
        await preflight.check(session, settings, campaign, "check")
        await session.commit()
    record = await preflight.stored(session, campaign_id)
    if record is None:
        raise NotFound(f"campaign {campaign_id} has no stored preflight")
    return StoredPreflightRead.model_validate(
        {**record.report, "context": record.context, "forced": record.forced,
         "checked_at": record.checked_at}
    )  # fmt: skip


@router.get("/domains/{domain}/check", dependencies=CAMPAIGNS_READ)
async def check_domain(
    domain: Annotated[str, Path(pattern=DOMAIN, max_length=253)], settings: SettingsDep
) -> DomainReportRead:
    """SPF, DKIM, DMARC and alignment, the bounce domain's MX, PTR/HELO: each with what to publish."""
    return DomainReportRead.of(await domains.check_domain(settings, domain))
