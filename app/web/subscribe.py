"""`/s/{list token}`: the hosted subscription form of a public list; `/confirm/{token}`.

The form carries a honeypot field (hidden from people, filled by naive bots) and a form
token; attempts are limited per client address and per email address. The answer is the
same whether or not the address was known. Confirming is a button on the page the mail's
link opens: a scanner's GET confirms nothing.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.audience import subscriptions as service
from app.core.addresses import InvalidAddress, normalize_address
from app.core.http import SessionDep, SettingsDep
from app.core.jobs import enqueue_optin
from app.core.ratelimit import RateLimiter
from app.core.text import require_single_line
from app.models import MailingList, OptIn
from app.web import forms, pages

router = APIRouter(include_in_schema=False)
SUBSCRIBE_FORM = "subscribe"
CONFIRM_FORM = "confirm"
HONEYPOT = "website"
MAX_NAME = 200


def client_address(request: Request) -> str:
    """The client's IP as the server sees it (behind a proxy: run uvicorn with proxy headers)."""
    return request.client.host if request.client else "unknown"


def accepted_text(lists: list[MailingList]) -> str:
    """The one answer to every accepted attempt, known address or not."""
    if any(item.optin == OptIn.double for item in lists):
        return (
            "Thank you. If the address can receive mail, a message with a confirmation link "
            "is on its way: open it to complete your subscription."
        )
    return "Thank you. If the address can receive mail, it is subscribed."


async def _list(session: SessionDep, settings: SettingsDep, token: str) -> MailingList | None:
    found = await service.lists_for_tokens(session, settings.effective_secret_key(), [token])
    return found[0] if found else None


def _form(
    settings: SettingsDep,
    token: str,
    mailing_list: MailingList,
    *,
    email: str = "",
    name: str = "",
    error: str = "",
    status: int = 200,
) -> HTMLResponse:
    return pages.page(
        "subscribe.html",
        status,
        title=f"Subscribe to {mailing_list.name}",
        token=token,
        mailing_list=mailing_list,
        email=email,
        name=name,
        error=error,
        csrf=forms.issue(settings.effective_secret_key(), SUBSCRIBE_FORM, token),
    )


@router.get("/s/{token}")
async def form(token: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """The subscription form of one public list."""
    mailing_list = await _list(session, settings, token)
    if mailing_list is None:
        return pages.invalid_link()
    return _form(settings, token, mailing_list)


@router.post("/s/{token}")
async def subscribe(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """Validate, limit, subscribe (or ask for confirmation), answer the same either way."""
    mailing_list = await _list(session, settings, token)
    if mailing_list is None:
        return pages.invalid_link()
    posted = await forms.checked(request, settings.effective_secret_key(), SUBSCRIBE_FORM, token)
    if posted is None:
        return pages.expired_form()
    email, name = forms.text(posted, "email").strip(), forms.text(posted, "name").strip()
    limiter = RateLimiter(request.app.state.queue)
    client = client_address(request)
    error, address = "", ""
    try:
        address = normalize_address(email)
        name = require_single_line(name)
    except InvalidAddress as exc:
        error = f"Please check the address: {exc}."
    except ValueError:
        error = "The name must be a single line."
    if not error and len(name) > MAX_NAME:
        error = f"The name may have at most {MAX_NAME} characters."
    if await service.admit(limiter, settings, client, address) is not service.Admission.allowed:
        return _limited()
    if error:
        return _form(
            settings,
            token,
            mailing_list,
            email=email[:320],
            name=name[:MAX_NAME],
            error=error,
            status=422,
        )
    await accept(request, session, address, name, [mailing_list], forms.text(posted, HONEYPOT))
    title = "Almost done" if mailing_list.optin == OptIn.double else "Thank you"
    return pages.message(title, accepted_text([mailing_list]))


async def accept(
    request: Request,
    session: SessionDep,
    address: str,
    name: str,
    lists: list[MailingList],
    honeypot: str,
) -> None:
    """Subscribe (a filled honeypot: pretend to), commit, then queue the confirmation mail."""
    if honeypot:
        return
    confirmation = await service.subscribe(session, address, name, lists)
    await session.commit()
    if confirmation is not None:
        await enqueue_optin(
            request.app.state.queue, confirmation.subscriber_id, confirmation.list_ids
        )


def _limited() -> HTMLResponse:
    response = pages.message(
        "Too many attempts", "Please wait a while before trying again.", status=429
    )
    response.headers["Retry-After"] = "3600"
    return response


@router.get("/confirm/{token}")
async def confirm_page(token: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Ask for one click to confirm; nothing changes on GET."""
    pending = await service.read_confirmation(session, settings.effective_secret_key(), token)
    if pending is None or not pending.lists:
        return pages.invalid_link()
    return pages.page(
        "confirm.html",
        title="Confirm your subscription",
        token=token,
        email=pending.subscriber.email,
        names=", ".join(item.name for item in pending.lists),
        csrf=forms.issue(settings.effective_secret_key(), CONFIRM_FORM, token),
    )


@router.post("/confirm/{token}")
async def confirm(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """Confirm the memberships the token names."""
    secret = settings.effective_secret_key()
    pending = await service.read_confirmation(session, secret, token)
    if pending is None or not pending.lists:
        return pages.invalid_link()
    if await forms.checked(request, secret, CONFIRM_FORM, token) is None:
        return pages.expired_form()
    await service.confirm(session, pending)
    await session.commit()
    names = ", ".join(item.name for item in pending.lists)
    return pages.message("You are subscribed", f"Your subscription to {names} is confirmed.")
