"""`/u/m/{token}`: RFC 8058 one-click unsubscribe from broadcast-stream messages sent by the API.

The recipient need not be a subscriber, so unsubscribing suppresses the address for the
broadcast stream (transactional mail still reaches it). A GET only shows a button.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from app.api.deps import SessionDep, SettingsDep
from app.services import messages as service

router = APIRouter(include_in_schema=False)
MAX_TOKEN = 200

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body><main><h1>{title}</h1>{body}</main></body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=escape(title), body=body), status_code=status)


def _invalid() -> HTMLResponse:
    return _page("This link is not valid", "<p>The link may be incomplete or altered.</p>", 400)


@router.get("/u/m/{token}")
async def confirm_page(token: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """A page with one button; nothing changes on GET (link scanners follow links)."""
    if len(token) > MAX_TOKEN:
        return _invalid()
    message = await service.by_unsubscribe_token(session, settings, token)
    if message is None:
        return _invalid()
    form = (
        f"<p>Stop receiving messages like this at {escape(message.to_email)}?</p>"
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        "<button>Unsubscribe</button></form>"
    )
    return _page("Unsubscribe", form)


@router.post("/u/m/{token}")
async def one_click(token: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Suppress the recipient for the broadcast stream (idempotent)."""
    if len(token) > MAX_TOKEN:
        return _invalid()
    message = await service.by_unsubscribe_token(session, settings, token)
    if message is None:
        return _invalid()
    await service.unsubscribe_broadcast(session, message)
    await session.commit()
    return _page("You are unsubscribed", "<p>You will not receive such messages again.</p>")
