"""The signed-in user's own page: second factor, live sessions, sign-out everywhere."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from app.admin import audit, sessions, totp, users
from app.admin.deps import CurrentAdmin, page_router
from app.admin.pages.sign_in import signed_out
from app.admin.rendering import render
from app.core.http import SessionDep, SettingsDep

router = page_router()


async def _page(
    admin: CurrentAdmin, session: SessionDep, *, notice: str = "", status: int = 200
) -> HTMLResponse:
    secret = totp.new_secret()
    return render(
        "account.html",
        admin,
        status=status,
        title="Account",
        current="/admin/account",
        notice=notice,
        live=await sessions.live_sessions(session, admin.user.id),
        new_secret=secret,
        new_uri=totp.provisioning_uri(secret, admin.user.email),
    )


@router.get("/account")
async def account(admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """Your role, second factor and sessions."""
    return await _page(admin, session)


@router.post("/account/totp")
async def enable_totp(
    admin: CurrentAdmin,
    session: SessionDep,
    secret: Annotated[str, Form(min_length=16, max_length=64, pattern="^[A-Z2-7]+=*$")],
    code: Annotated[str, Form(max_length=16)],
    settings: SettingsDep,
) -> HTMLResponse:
    """Turn the second factor on once a code from the new key is right."""
    user = admin.user  # loaded by this request's session, so changes to it are saved
    if not await users.enrol_totp(user, secret, code, settings.effective_secret_key()):
        return await _page(admin, session, notice="That code was not right; try again.", status=400)
    await audit.record(session, user, "user.totp_on", f"user:{user.id}")
    await session.commit()
    return await _page(admin, session, notice="The second factor is on.")


@router.post("/account/totp/disable")
async def disable_totp(
    admin: CurrentAdmin,
    session: SessionDep,
    code: Annotated[str, Form(max_length=16)],
    settings: SettingsDep,
) -> HTMLResponse:
    """Turn the second factor off, proven with a current code."""
    user = admin.user
    if not users.totp_code_matches(user, code, settings.effective_secret_key()):
        return await _page(admin, session, notice="That code was not right.", status=400)
    users.disable_totp(user)
    await audit.record(session, user, "user.totp_off", f"user:{user.id}")
    await session.commit()
    return await _page(admin, session, notice="The second factor is off.")


@router.post("/account/sign-out-everywhere")
async def sign_out_everywhere(
    request: Request, admin: CurrentAdmin, session: SessionDep, settings: SettingsDep
) -> RedirectResponse:
    """End every session of this user, this one included."""
    ended = await sessions.revoke_all(session, admin.user.id)
    await audit.record(
        session,
        admin.user,
        "user.sign_out_everywhere",
        f"user:{admin.user.id}",
        {"sessions": ended},
    )
    await session.commit()
    return signed_out(request, settings)
