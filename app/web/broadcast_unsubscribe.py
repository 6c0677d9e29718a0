"""`/u/m/{token}`: RFC 8058 one-click unsubscribe from broadcast-stream messages sent by the API.

The recipient need not be a subscriber, so unsubscribing suppresses the address for the
broadcast stream (transactional mail still reaches it). A GET only shows a button.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from app.core.http import SessionDep, SettingsDep
from app.messages import service
from app.web import pages

router = APIRouter(include_in_schema=False)


@router.get("/u/m/{token}")
async def confirm_page(token: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """A page with one button; nothing changes on GET (link scanners follow links)."""
    if len(token) > pages.MAX_TOKEN:
        return pages.invalid_link()
    message = await service.by_unsubscribe_token(session, settings, token)
    if message is None:
        return pages.invalid_link()
    return pages.page("broadcast_unsubscribe.html", title="Unsubscribe", address=message.to_email)


@router.post("/u/m/{token}")
async def one_click(token: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Suppress the recipient for the broadcast stream (idempotent)."""
    if len(token) > pages.MAX_TOKEN:
        return pages.invalid_link()
    message = await service.by_unsubscribe_token(session, settings, token)
    if message is None:
        return pages.invalid_link()
    await service.unsubscribe_broadcast(session, message)
    await session.commit()
    return pages.message("You are unsubscribed", "You will not receive such messages again.")
