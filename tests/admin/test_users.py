"""Owners manage console users; every other role is refused by the server."""

from __future__ import annotations

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AdminRole, AdminUser, AuditEntry
from tests.helpers.admin import PASSWORD, email_of, sign_in, sign_in_response


async def _user(session: AsyncSession, role_email: str) -> AdminUser:
    session.expire_all()
    user = await session.scalar(sa.select(AdminUser).where(AdminUser.email == role_email))
    assert user is not None
    return user


async def test_owner_changes_a_role_and_it_is_audited(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    token = await sign_in(console, AdminRole.owner)
    viewer = await _user(session, email_of(AdminRole.viewer))
    page = await console.get("/admin/users")
    assert page.status_code == 200 and email_of(AdminRole.viewer) in page.text
    changed = await console.post(
        f"/admin/users/{viewer.id}/role", data={"csrf": token, "role": "marketer"}
    )
    assert changed.status_code == 303
    assert (await _user(session, email_of(AdminRole.viewer))).role == AdminRole.marketer
    entry = await session.scalar(sa.select(AuditEntry).where(AuditEntry.action == "user.role"))
    assert entry is not None
    assert entry.details == {"email": "viewer@example.com", "from": "viewer", "to": "marketer"}


async def test_disabling_a_user_ends_their_sessions_at_once(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    await sign_in(console, AdminRole.admin)
    admin_cookie = console.cookies.get("warta_admin")
    console.cookies.clear()
    token = await sign_in(console, AdminRole.owner)
    target = await _user(session, email_of(AdminRole.admin))
    response = await console.post(f"/admin/users/{target.id}/disable", data={"csrf": token})
    assert response.status_code == 303
    console.cookies.clear()
    console.cookies.set("warta_admin", admin_cookie or "")
    assert (await console.get("/admin/")).status_code == 303
    console.cookies.clear()
    refused = await sign_in_response(console, email_of(AdminRole.admin), PASSWORD)
    assert refused.status_code == 401


async def test_an_owner_cannot_change_their_own_account_here(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    token = await sign_in(console, AdminRole.owner)
    me = await _user(session, email_of(AdminRole.owner))
    response = await console.post(f"/admin/users/{me.id}/disable", data={"csrf": token})
    assert response.status_code == 409
    assert (await _user(session, email_of(AdminRole.owner))).disabled_at is None


async def test_an_admin_may_not_manage_users(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    token = await sign_in(console, AdminRole.admin)
    viewer = await _user(session, email_of(AdminRole.viewer))
    assert (await console.get("/admin/users")).status_code == 403
    response = await console.post(
        f"/admin/users/{viewer.id}/role", data={"csrf": token, "role": "owner"}
    )
    assert response.status_code == 403
    assert (await _user(session, email_of(AdminRole.viewer))).role == AdminRole.viewer
