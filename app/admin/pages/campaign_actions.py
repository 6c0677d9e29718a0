"""Pause, resume and cancel a campaign from any console page (the form names where to return).

The same state change as the API's /campaigns/{id}/pause|resume|cancel: `lifecycle.transition`
in one conditional UPDATE, then (resume) the pending batches are enqueued after the commit.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Form, Path, Request
from fastapi.responses import RedirectResponse

from app.admin import audit
from app.admin.deps import CurrentAdmin, needs, page_router
from app.admin.pages.sign_in import safe_next
from app.core.http import SessionDep
from campaigns import dispatch, lifecycle

router = page_router()
Action = Literal["pause", "resume", "cancel"]
CampaignId = Annotated[int, Path(ge=1, le=2_147_483_647)]


@router.post("/campaigns/{campaign_id}/{action}", dependencies=[needs("campaigns:write")])
async def change_state(
    campaign_id: CampaignId,
    action: Action,
    request: Request,
    admin: CurrentAdmin,
    session: SessionDep,
    back: Annotated[str, Form(max_length=1024)] = "/admin/",
) -> RedirectResponse:
    """Apply the action, record it in the audit log, and go back to the page it came from."""
    campaign = await lifecycle.transition(session, campaign_id, action)  # 404/409 as a page
    await audit.record(
        session,
        admin.user,
        f"campaign.{action}",
        f"campaign:{campaign_id}",
        {"name": campaign.name},
    )
    await session.commit()
    if action == "resume":
        await dispatch.enqueue_pending(request.app.state.queue, session, campaign)
    return RedirectResponse(safe_next(back), status_code=303)
