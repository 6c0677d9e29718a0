"""`/u/{token}`: RFC 8058 one-click unsubscribe (POST) and a confirmation page (GET).

A GET never changes anything, so link scanners cannot unsubscribe anyone; the page's
button posts the same one-click body a mailbox provider sends.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.api.deps import SessionDep, SettingsDep
from app.services import unsubscribe as service

router = APIRouter(include_in_schema=False)
ONE_CLICK = "List-Unsubscribe=One-Click"
MAX_TOKEN = 200

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font:1.1rem/1.5 system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#111}}
button{{font:inherit;padding:.6rem 1.2rem;border:2px solid #111;background:#fff;cursor:pointer}}
button:focus{{outline:3px solid #1a56db;outline-offset:2px}}</style></head>
<body><main><h1>{title}</h1>{body}</main></body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=escape(title), body=body), status_code=status)


def _invalid() -> HTMLResponse:
    return _page("This link is not valid", "<p>The link may be incomplete or altered.</p>", 400)


async def _target(session: SessionDep, settings: SettingsDep, token: str) -> service.Target | None:
    if len(token) > MAX_TOKEN:
        return None
    return await service.resolve(session, settings.effective_secret_key(), token)


@router.get("/u/{token}")
async def confirm_page(token: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Name the lists and ask for one click; nothing changes on GET."""
    target = await _target(session, settings, token)
    if target is None:
        return _invalid()
    names = ", ".join(escape(item.name) for item in target.lists) or "this mailing"
    body = (
        f"<p>Stop sending {escape(target.subscriber.email)} mail from <strong>{names}</strong>?</p>"
        f'<form method="post" action="/u/{escape(token)}">'
        f'<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        f'<button type="submit">Unsubscribe</button></form>'
    )
    return _page("Unsubscribe", body)


@router.post("/u/{token}")
async def one_click(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """RFC 8058: unsubscribe at once, answer 200, no redirect, no cookie needed."""
    target = await _target(session, settings, token)
    if target is None:
        return _invalid()
    form = await request.form()
    if form.get("List-Unsubscribe") != "One-Click":
        return _page("Unsubscribe", f"<p>Expected the body {ONE_CLICK}.</p>", 400)
    await service.unsubscribe(session, target)
    await session.commit()
    names = ", ".join(escape(item.name) for item in target.lists) or "this mailing"
    return _page("You are unsubscribed", f"<p>You will get no more mail from {names}.</p>")
