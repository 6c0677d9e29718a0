"""`/p/{token}`: the preference centre (lists, name, unsubscribe all, data export, erasure)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.audience import preferences as service
from app.audience.unsubscribe import subscriber_for
from app.core.http import SessionDep, SettingsDep
from app.core.text import require_single_line
from app.models import Subscriber
from app.web import forms, pages

router = APIRouter(include_in_schema=False)
SAVE_FORM = "preferences"
ALL_FORM = "unsubscribe-all"
ERASE_FORM = "erase"
MAX_NAME = 200


async def _subscriber(session: SessionDep, settings: SettingsDep, token: str) -> Subscriber | None:
    if len(token) > pages.MAX_TOKEN:
        return None
    found = await subscriber_for(session, settings.effective_secret_key(), service.PURPOSE, token)
    return None if found is None else found[0]


async def _page(
    session: SessionDep,
    settings: SettingsDep,
    token: str,
    subscriber: Subscriber,
    notice: str = "",
    error: str = "",
    status: int = 200,
) -> HTMLResponse:
    secret = settings.effective_secret_key()
    return pages.page(
        "preferences.html",
        status,
        title="Your subscriptions",
        token=token,
        subscriber=subscriber,
        choices=await service.choices(session, subscriber),
        notice=notice,
        error=error,
        csrf_save=forms.issue(secret, SAVE_FORM, token),
        csrf_all=forms.issue(secret, ALL_FORM, token),
        csrf_erase=forms.issue(secret, ERASE_FORM, token),
    )


@router.get("/p/{token}")
async def show(token: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """The subscriber's lists and name; nothing changes on GET."""
    subscriber = await _subscriber(session, settings, token)
    if subscriber is None:
        return pages.invalid_link()
    return await _page(session, settings, token, subscriber)


@router.post("/p/{token}")
async def save(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """Change the name and the lists."""
    subscriber = await _subscriber(session, settings, token)
    if subscriber is None:
        return pages.invalid_link()
    form = await forms.checked(
        request, settings.effective_secret_key(), SAVE_FORM, token, max_fields=600
    )
    if form is None:
        return pages.expired_form()
    raw_name = forms.text(form, "name").strip()
    try:
        name = require_single_line(raw_name)
    except ValueError:
        name = None
    if name is None or len(name) > MAX_NAME:
        error = f"The name must be one line of at most {MAX_NAME} characters."
        return await _page(session, settings, token, subscriber, error=error, status=422)
    wanted = {
        int(value)
        for key, value in form.multi_items()
        if key == "list" and isinstance(value, str) and forms.ascii_digits(value, 10)
    }
    await service.save(session, subscriber, name, wanted)
    await session.commit()
    return await _page(session, settings, token, subscriber, notice="Your choices are saved.")


@router.post("/p/{token}/unsubscribe-all")
async def unsubscribe_all(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """Leave every list at once."""
    subscriber = await _subscriber(session, settings, token)
    if subscriber is None:
        return pages.invalid_link()
    form = await forms.checked(request, settings.effective_secret_key(), ALL_FORM, token)
    if form is None:
        return pages.expired_form()
    await service.unsubscribe_all(session, subscriber)
    await session.commit()
    notice = "You are unsubscribed from all mail."
    return await _page(session, settings, token, subscriber, notice=notice)


@router.get("/p/{token}/data.json")
async def download(token: str, session: SessionDep, settings: SettingsDep) -> Response:
    """Everything held about the subscriber, as a JSON download."""
    subscriber = await _subscriber(session, settings, token)
    if subscriber is None:
        return pages.invalid_link()
    data = await service.export(session, subscriber)
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False),
        media_type="application/json",
        headers={
            **pages.HEADERS,
            "Content-Disposition": 'attachment; filename="my-data.json"',
        },
    )


@router.post("/p/{token}/delete")
async def erase(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """Delete the subscriber; the address stays only as a hashed suppression."""
    subscriber = await _subscriber(session, settings, token)
    if subscriber is None:
        return pages.invalid_link()
    form = await forms.checked(request, settings.effective_secret_key(), ERASE_FORM, token)
    if form is None:
        return pages.expired_form()
    if forms.text(form, "confirm") != "yes":
        error = "Tick the box to confirm that your data should be deleted."
        return await _page(session, settings, token, subscriber, error=error, status=422)
    await service.erase(session, subscriber)
    await session.commit()
    return pages.message(
        "Your data is deleted",
        "We removed your address and everything about you. We will never mail you again.",
    )
