"""Sign-in and sign-out: the only console routes a visitor without a session reaches."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.admin import audit, csrf, sessions, users
from app.admin.deps import (
    COOKIE,
    PRE_COOKIE,
    PREFIX,
    CurrentAdmin,
    Refused,
    ThrottleDep,
    client_of,
    page_router,
    uses_https,
)
from app.admin.rendering import render
from app.core.http import SessionDep, SettingsDep
from app.core.settings import Settings

public = APIRouter(prefix=PREFIX, default_response_class=HTMLResponse, include_in_schema=False)
router = page_router()
MAX_FIELD = 1024


def safe_next(path: str) -> str:
    """Where to go after sign-in: a console path only (no open redirect)."""
    if path.startswith(f"{PREFIX}/") and not path.startswith("//") and "\\" not in path:
        return path
    return f"{PREFIX}/"


def _sign_in_page(
    request: Request,
    settings: Settings,
    *,
    status: int = 200,
    error: str = "",
    email: str = "",
    next_path: str = "",
) -> HTMLResponse:
    pre = request.cookies.get(PRE_COOKIE, "")
    fresh = not pre or len(pre) > 64
    if fresh:
        pre = secrets.token_urlsafe(24)
    response = render(
        "login.html",
        None,
        status=status,
        title="Sign in",
        error=error,
        email=email,
        next_path=safe_next(next_path),
        csrf_sign_in=csrf.token(settings.effective_secret_key(), "sign-in", pre),
    )
    if fresh:
        response.set_cookie(
            PRE_COOKIE,
            pre,
            httponly=True,
            samesite="strict",
            secure=uses_https(request, settings),
            path=f"{PREFIX}/login",
        )
    return response


@public.get("/login")
async def sign_in_form(request: Request, settings: SettingsDep, next: str = "") -> HTMLResponse:
    """The sign-in form."""
    return _sign_in_page(request, settings, next_path=next[:MAX_FIELD])


@public.post("/login")
async def sign_in(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    throttle: ThrottleDep,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=MAX_FIELD)] = "",
    code: Annotated[str, Form(max_length=16)] = "",
    next: Annotated[str, Form(max_length=MAX_FIELD)] = "",
) -> Response:
    """Check the credentials (throttled, shared across processes); start a session."""
    pre = request.cookies.get(PRE_COOKIE, "")
    expected = csrf.token(settings.effective_secret_key(), "sign-in", pre)
    if not pre or not csrf.matches(expected, await csrf.submitted(request)):
        raise Refused(403, "This form has expired", "Reload the sign-in page and try again.")
    client = client_of(request)
    if await throttle.locked(client, email):
        return _sign_in_page(
            request,
            settings,
            status=429,
            error="Too many failed sign-ins. Try again in "
            f"{max(1, settings.admin_login_window // 60)} minutes.",
            email=email,
            next_path=next,
        )
    checked = await users.check_credentials(
        session, email, password, code, settings.effective_secret_key()
    )
    if checked.user is None:
        await throttle.failed(client, email)
        await session.rollback()
        return _sign_in_page(
            request,
            settings,
            status=401,
            error="Wrong email, password or code.",
            email=email,
            next_path=next,
        )
    await throttle.succeeded(client, email)
    agent = request.headers.get("user-agent", "")[:150]
    token = await sessions.open_session(session, checked.user, settings, f"{client} {agent}")
    await audit.record(session, checked.user, "user.sign_in", f"user:{checked.user.id}")
    await session.commit()
    response = RedirectResponse(safe_next(next), status_code=303)
    set_session_cookie(response, request, settings, token)
    response.delete_cookie(PRE_COOKIE, path=f"{PREFIX}/login")
    return response


def set_session_cookie(
    response: Response, request: Request, settings: Settings, token: str
) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, Secure over HTTPS, /admin only."""
    response.set_cookie(
        COOKIE,
        token,
        max_age=settings.admin_session_lifetime,
        httponly=True,
        samesite="strict",
        secure=uses_https(request, settings),
        path=PREFIX,
    )


def signed_out(request: Request, settings: Settings) -> RedirectResponse:
    """Back to the sign-in page with the session cookie removed."""
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(
        COOKIE, path=PREFIX, secure=uses_https(request, settings), httponly=True, samesite="strict"
    )
    return response


@router.post("/logout")
async def sign_out(
    request: Request, admin: CurrentAdmin, session: SessionDep, settings: SettingsDep
) -> RedirectResponse:
    """End this session."""
    await sessions.revoke(session, admin.session)
    await session.commit()
    return signed_out(request, settings)
