"""Roles are enforced by the server: a viewer's pause is refused with 403, a marketer's is
applied and audited."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin import roles
from app.models import AdminRole, AuditEntry, Campaign, CampaignStatus
from tests.helpers.admin import sign_in


@pytest.fixture
async def running_campaign(session: AsyncSession) -> int:
    campaign = Campaign(
        name="Autumn news",
        subject="News",
        from_email="news@example.com",
        status=CampaignStatus.running,
    )
    session.add(campaign)
    await session.commit()
    return campaign.id


async def _status(session: AsyncSession, campaign_id: int) -> CampaignStatus:
    session.expire_all()
    status = await session.scalar(sa.select(Campaign.status).where(Campaign.id == campaign_id))
    assert status is not None
    return status


async def test_viewer_cannot_pause_a_campaign(
    console: httpx.AsyncClient, session: AsyncSession, running_campaign: int
) -> None:
    token = await sign_in(console, AdminRole.viewer)
    response = await console.post(
        f"/admin/campaigns/{running_campaign}/pause", data={"csrf": token}
    )
    assert response.status_code == 403
    assert "does not allow this (campaigns:write)" in response.text
    assert await _status(session, running_campaign) == CampaignStatus.running
    assert (
        await session.scalar(
            sa.select(sa.func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.action == "campaign.pause")
        )
        == 0
    )


async def test_marketer_pauses_and_resumes_and_each_change_is_audited(
    console: httpx.AsyncClient, session: AsyncSession, running_campaign: int
) -> None:
    token = await sign_in(console, AdminRole.marketer)
    paused = await console.post(
        f"/admin/campaigns/{running_campaign}/pause", data={"csrf": token, "back": "/admin/"}
    )
    assert paused.status_code == 303, paused.text
    assert await _status(session, running_campaign) == CampaignStatus.paused
    again = await console.post(f"/admin/campaigns/{running_campaign}/pause", data={"csrf": token})
    assert again.status_code == 409
    resumed = await console.post(
        f"/admin/campaigns/{running_campaign}/resume", data={"csrf": token}
    )
    assert resumed.status_code == 303
    assert await _status(session, running_campaign) == CampaignStatus.running
    entries = (
        await session.scalars(
            sa.select(AuditEntry)
            .where(AuditEntry.action.startswith("campaign."))
            .order_by(AuditEntry.id)
        )
    ).all()
    assert [(e.action, e.actor_email, e.target, e.details) for e in entries] == [
        (
            "campaign.pause",
            "marketer@example.com",
            f"campaign:{running_campaign}",
            {"name": "Autumn news"},
        ),
        (
            "campaign.resume",
            "marketer@example.com",
            f"campaign:{running_campaign}",
            {"name": "Autumn news"},
        ),
    ]


async def test_a_pause_without_the_csrf_token_is_refused(
    console: httpx.AsyncClient, session: AsyncSession, running_campaign: int
) -> None:
    await sign_in(console, AdminRole.owner)
    response = await console.post(f"/admin/campaigns/{running_campaign}/pause", data={})
    assert response.status_code == 403
    assert await _status(session, running_campaign) == CampaignStatus.running


@pytest.mark.parametrize(
    ("role", "scope", "allowed"),
    [
        (AdminRole.viewer, "campaigns:read", True),
        (AdminRole.viewer, "campaigns:write", False),
        (AdminRole.viewer, "queue:read", True),
        (AdminRole.marketer, "subscribers:write", True),
        (AdminRole.marketer, "suppressions:write", False),
        (AdminRole.marketer, "queue:write", False),
        (AdminRole.marketer, roles.AUDIT_READ, False),
        (AdminRole.admin, "queue:write", True),
        (AdminRole.admin, roles.AUDIT_READ, True),
        (AdminRole.admin, roles.USERS_MANAGE, False),
        (AdminRole.owner, roles.USERS_MANAGE, True),
    ],
)
def test_roles_map_onto_api_key_scopes(role: AdminRole, scope: str, allowed: bool) -> None:
    assert roles.allows(role, scope) is allowed
