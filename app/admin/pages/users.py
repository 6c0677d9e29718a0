"""Console users, for owners: change a role, disable, end sessions, reset the second factor.

New users are made with `warta create-user` (the password never passes through a form of
someone else's). An owner cannot change or disable themselves here, so the console always
keeps the owner who is using it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Form, Path
from fastapi.responses import HTMLResponse, RedirectResponse

from app.admin import audit, sessions, users
from app.admin.deps import CurrentAdmin, Refused, SignedIn, needs, page_router
from app.admin.rendering import render
from app.admin.roles import USERS_MANAGE
from app.core.errors import NotFound
from app.core.http import SessionDep
from app.models import AdminRole, AdminUser

router = page_router()
MANAGE = [needs(USERS_MANAGE)]
UserId = Annotated[int, Path(ge=1, le=2_147_483_647)]
Action = Literal["disable", "enable", "sign-out", "reset-totp"]


@router.get("/users", dependencies=MANAGE)
async def users_page(admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """Every console user with their role and state."""
    return render(
        "users.html",
        admin,
        title="Users",
        current="/admin/users",
        users=await users.all_users(session),
        roles=list(AdminRole),
    )


async def _other_user(session: SessionDep, admin: SignedIn, user_id: int) -> AdminUser:
    try:
        user = await users.get_user(session, user_id)
    except NotFound as exc:
        raise Refused(404, "No such user", str(exc)) from None
    if user.id == admin.user.id:
        raise Refused(409, "Not on yourself", "Ask another owner to change your own account.")
    return user


@router.post("/users/{user_id}/role", dependencies=MANAGE)
async def change_role(
    user_id: UserId,
    admin: CurrentAdmin,
    session: SessionDep,
    role: Annotated[AdminRole, Form()],
) -> RedirectResponse:
    """Give a user another role (their open sessions see it on the next request)."""
    user = await _other_user(session, admin, user_id)
    before = user.role
    user.role = role
    await audit.record(
        session,
        admin.user,
        "user.role",
        f"user:{user.id}",
        {"email": user.email, "from": before, "to": role},
    )
    await session.commit()
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/users/{user_id}/{action}", dependencies=MANAGE)
async def user_action(
    user_id: UserId, action: Action, admin: CurrentAdmin, session: SessionDep
) -> RedirectResponse:
    """Disable or enable a user, end their sessions, or reset their second factor."""
    user = await _other_user(session, admin, user_id)
    details: dict[str, object] = {"email": user.email}
    if action in ("disable", "enable"):
        users.set_disabled(user, action == "disable")
    if action in ("disable", "sign-out"):
        details["sessions"] = await sessions.revoke_all(session, user.id)
    if action == "reset-totp":
        users.disable_totp(user)
    await audit.record(session, admin.user, f"user.{action}", f"user:{user.id}", details)
    await session.commit()
    return RedirectResponse("/admin/users", status_code=303)
