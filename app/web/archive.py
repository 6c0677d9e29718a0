"""`/v/{token}`: the campaign as its recipient got it, in the browser (never tracked)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from app.audience.unsubscribe import subscriber_for
from app.core.errors import Invalid
from app.core.http import SessionDep, SettingsDep
from app.models import Campaign
from app.web import pages
from campaigns import content
from campaigns.composer import VIEW_PURPOSE

router = APIRouter(include_in_schema=False)
PURPOSE = VIEW_PURPOSE
# The campaign's own HTML: no scripts, no forms, not framed; images and styles as authored.
ARCHIVE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox allow-popups allow-popups-to-escape-sandbox "
    "allow-top-navigation-by-user-activation; script-src 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
}


@router.get("/v/{token}")
async def view(token: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Render the campaign for the subscriber the token names."""
    if len(token) > pages.MAX_TOKEN:
        return pages.invalid_link()
    found = await subscriber_for(session, settings.effective_secret_key(), PURPOSE, token)
    if found is None:
        return pages.invalid_link()
    subscriber, campaign_id = found
    campaign = await session.get(Campaign, campaign_id)
    if campaign is None:
        return pages.invalid_link()
    try:
        rendered = await content.web_view(session, settings, campaign, subscriber)
    except Invalid:
        return pages.message("This message cannot be shown", "Please try again later.", 503)
    if rendered.html is None:
        return pages.page("archive.html", title=rendered.subject, text=rendered.text)
    return HTMLResponse(rendered.html, headers=ARCHIVE_HEADERS)
