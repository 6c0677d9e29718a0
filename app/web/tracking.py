"""`/o/{token}` (open pixel) and `/c/{token}` (click redirect) of tracked campaigns."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from app.core.http import SessionDep, SettingsDep
from app.web import pages
from campaigns import engagement as service

router = APIRouter(include_in_schema=False)
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}


def _agent(request: Request) -> str:
    return request.headers.get("user-agent", "")


@router.api_route("/o/{token}", methods=["GET", "HEAD"])
async def open_pixel(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    """Record an open and answer with a transparent 1x1 GIF."""
    found = service.read_open(settings.effective_secret_key(), token)
    if found is None:
        return pages.invalid_link()
    client = request.client.host if request.client else ""
    await service.record_open(session, found[0], found[1], _agent(request), client)
    await session.commit()
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


@router.api_route("/c/{token}", methods=["GET", "HEAD"])
async def click(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    """Record a click and redirect to the campaign's own URL for that link, nowhere else."""
    found = service.read_click(settings.effective_secret_key(), token)
    if found is None:
        return pages.invalid_link()
    url = await service.record_click(session, found, request.method, _agent(request))
    if url is None:
        return pages.invalid_link()
    await session.commit()
    return RedirectResponse(url, status_code=302, headers=NO_STORE)
