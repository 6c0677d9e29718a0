"""`/u/{token}`: RFC 8058 one-click unsubscribe (POST), a confirmation page (GET), undo.

A GET never changes anything, so link scanners cannot unsubscribe anyone. The page's form
posts to `/u/{token}/confirm` with a choice (this list or all mail) and a form token;
the result page offers an undo that restores exactly the lists that were left.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.audience import preferences as preferences_service
from app.audience import unsubscribe as service
from app.core.http import SessionDep, SettingsDep
from app.mail import identity
from app.web import forms, pages

router = APIRouter(include_in_schema=False)
ONE_CLICK = "List-Unsubscribe=One-Click"
CONFIRM_FORM = "unsubscribe"
UNDO_FORM = "undo"


async def _target(session: SessionDep, settings: SettingsDep, token: str) -> service.Target | None:
    if len(token) > pages.MAX_TOKEN:
        return None
    return await service.resolve(session, settings.effective_secret_key(), token)


def _preferences(settings: SettingsDep, target: service.Target) -> str:
    """The subscriber's preference centre, for finer choices than this page offers."""
    token = identity.link_token(
        settings.effective_secret_key(),
        preferences_service.PURPOSE,
        target.subscriber.id,
        target.campaign_id,
    )
    return f"/p/{token}"


def _names(target: service.Target) -> str:
    return ", ".join(item.name for item in target.lists)


async def _is_one_click(request: Request) -> bool:
    """Whether the body is RFC 8058's, form-encoded (urlencoded or multipart) or bare."""
    kind = request.headers.get("content-type", "")
    if kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form(max_files=0, max_fields=20)
        return forms.text(form, "List-Unsubscribe") == "One-Click"
    body = await request.body()
    return body.strip() == ONE_CLICK.encode()


@router.get("/u/{token}")
async def confirm_page(token: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Name the lists and ask for one click; nothing changes on GET."""
    target = await _target(session, settings, token)
    if target is None:
        return pages.invalid_link()
    return pages.page(
        "unsubscribe.html",
        title="Unsubscribe",
        token=token,
        email=target.subscriber.email,
        lists=_names(target),
        csrf=forms.issue(settings.effective_secret_key(), CONFIRM_FORM, token),
        preferences=_preferences(settings, target),
    )


@router.post("/u/{token}")
async def one_click(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """RFC 8058: unsubscribe at once, answer 200, no redirect, no cookie or form token needed."""
    target = await _target(session, settings, token)
    if target is None:
        return pages.invalid_link()
    if not await _is_one_click(request):
        return pages.message("Unsubscribe", f"Expected the body {ONE_CLICK}.", 400)
    await service.unsubscribe(session, target, source="one-click")
    await session.commit()
    lists = _names(target) or "this sender"
    return pages.message("You are unsubscribed", f"You will get no more mail from {lists}.")


@router.post("/u/{token}/confirm")
async def confirm(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """The page's form: leave this campaign's lists or all mail, then offer an undo."""
    target = await _target(session, settings, token)
    if target is None:
        return pages.invalid_link()
    secret = settings.effective_secret_key()
    form = await forms.checked(request, secret, CONFIRM_FORM, token)
    if form is None:
        return pages.expired_form()
    scope = forms.text(form, "scope") or "list"
    if scope not in ("list", "all"):
        return pages.message("Unsubscribe", "Choose this list or all mail.", 400)
    everything = scope == "all" or not target.lists
    left = await service.unsubscribe(session, target, everything=everything, source="page")
    await session.commit()
    names = await service.list_names(session, left) if left else []
    state = ",".join(str(list_id) for list_id in left)
    return pages.page(
        "unsubscribed.html",
        title="You are unsubscribed",
        token=token,
        email=target.subscriber.email,
        names=names,
        everything=everything,
        lists=state,
        csrf=forms.issue(secret, UNDO_FORM, token, state),
        preferences=_preferences(settings, target),
    )


@router.post("/u/{token}/undo")
async def undo(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """Rejoin the lists the unsubscribe left (named in the signed form state)."""
    target = await _target(session, settings, token)
    if target is None:
        return pages.invalid_link()
    form = await forms.checked(
        request, settings.effective_secret_key(), UNDO_FORM, token, state_field="lists"
    )
    if form is None:
        return pages.expired_form()
    state = forms.text(form, "lists")
    list_ids = [int(part) for part in state.split(",") if forms.ascii_digits(part, 10)][:100]
    await service.undo(session, target, list_ids)
    await session.commit()
    names = ", ".join(await service.list_names(session, list_ids)) or "your lists"
    return pages.message("You are subscribed again", f"Welcome back to {names}.")
