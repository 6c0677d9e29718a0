"""Campaign records: drafts are created and edited here; sending is the engine's job."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience import lists as lists_service
from app.audience.segments import SegmentError, validate_segment
from app.core.errors import Conflict, Invalid, NotFound
from app.mail import templates as templates_service
from app.models import Campaign, CampaignList, CampaignStatus

DELETABLE = frozenset(
    {
        CampaignStatus.draft,
        CampaignStatus.scheduled,
        CampaignStatus.finished,
        CampaignStatus.cancelled,
    }
)


async def get(session: AsyncSession, campaign_id: int) -> Campaign:
    """The campaign, or NotFound."""
    found = await session.get(Campaign, campaign_id)
    if found is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return found


async def list_ids(session: AsyncSession, campaign_ids: list[int]) -> dict[int, list[int]]:
    """The lists each campaign is addressed to."""
    result: dict[int, list[int]] = {cid: [] for cid in campaign_ids}
    if campaign_ids:
        rows = await session.execute(
            sa.select(CampaignList.campaign_id, CampaignList.list_id)
            .where(CampaignList.campaign_id.in_(campaign_ids))
            .order_by(CampaignList.campaign_id, CampaignList.list_id)
        )
        for campaign_id, list_id in rows:
            result[campaign_id].append(list_id)
    return result


async def create(session: AsyncSession, fields: dict[str, Any]) -> Campaign:
    """A new draft."""
    target_lists = fields.pop("list_ids")
    await _validate(session, fields, target_lists)
    campaign = Campaign(**fields, status=CampaignStatus.draft)
    session.add(campaign)
    await session.flush()
    await _set_lists(session, campaign.id, target_lists)
    return campaign


async def update(session: AsyncSession, campaign_id: int, changes: dict[str, Any]) -> Campaign:
    """Edit a draft; any other state is a Conflict."""
    campaign = await get(session, campaign_id)
    if campaign.status != CampaignStatus.draft:
        raise Conflict(
            f"campaign {campaign_id} is {campaign.status.value}; only drafts can be edited"
        )
    target_lists = changes.pop("list_ids", None)
    merged = {
        "segment": campaign.segment,
        "template_id": campaign.template_id,
        "subject": campaign.subject,
        "html": campaign.html,
        "text": campaign.text,
        **changes,
    }
    await _validate(session, merged, target_lists)
    if "segment" in changes:
        changes["segment"] = merged["segment"]
    for name, value in changes.items():
        setattr(campaign, name, value)
    await session.flush()
    if target_lists is not None:
        await _set_lists(session, campaign_id, target_lists)
    return campaign


async def delete(session: AsyncSession, campaign_id: int) -> None:
    """Delete a campaign that is not sending."""
    campaign = await get(session, campaign_id)
    if campaign.status not in DELETABLE:
        raise Conflict(
            f"campaign {campaign_id} is {campaign.status.value}; cancel it before deleting"
        )
    await session.delete(campaign)
    await session.flush()


async def page(
    session: AsyncSession, after_id: int, limit: int, status: CampaignStatus | None
) -> list[Campaign]:
    """Up to `limit + 1` campaigns after `after_id`."""
    query = sa.select(Campaign).where(Campaign.id > after_id)
    if status is not None:
        query = query.where(Campaign.status == status)
    query = query.order_by(Campaign.id).limit(limit + 1)
    return list((await session.scalars(query)).all())


async def _validate(
    session: AsyncSession, fields: dict[str, Any], target_lists: list[int] | None
) -> None:
    if target_lists is not None:
        missing = await lists_service.missing_ids(session, target_lists)
        if missing:
            raise Invalid(f"unknown list ids: {missing}")
    if fields.get("segment") is not None:
        try:
            fields["segment"] = validate_segment(fields["segment"])
        except SegmentError as exc:
            raise Invalid(str(exc)) from None
    if fields.get("template_id") is not None:
        await templates_service.get_or_invalid(session, fields["template_id"])
    elif not (fields.get("html") or fields.get("text")):
        raise Invalid("a campaign needs content: a template_id, or html and/or text")
    await templates_service.check_content(
        fields.get("subject", ""), fields.get("html", ""), fields.get("text", "")
    )


async def _set_lists(session: AsyncSession, campaign_id: int, target_lists: list[int]) -> None:
    await session.execute(sa.delete(CampaignList).where(CampaignList.campaign_id == campaign_id))
    session.add_all(
        CampaignList(campaign_id=campaign_id, list_id=list_id)
        for list_id in dict.fromkeys(target_lists)
    )
    await session.flush()


async def count_by_status(session: AsyncSession) -> dict[CampaignStatus, int]:
    """How many campaigns are in each status (for /metrics)."""
    rows = await session.execute(
        sa.select(Campaign.status, sa.func.count()).group_by(Campaign.status)
    )
    return {CampaignStatus(status): count for status, count in rows}
