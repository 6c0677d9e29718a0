"""Signing in and out of the console: sessions, cookies, CSRF, roles, lockout."""

from __future__ import annotations

from datetime import timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AdminRole, AdminSession, utcnow
from tests.helpers.admin import PASSWORD, csrf_of, email_of, sign_in, sign_in_response


def use_cookie(client: httpx.AsyncClient, value: str | None) -> None:
    """Make `client` present this session cookie and no other."""
    client.cookies.clear()
    client.cookies.set("warta_admin", value or "")


async def test_sign_in_sets_a_strict_http_only_cookie_and_opens_the_dashboard(
    console: httpx.AsyncClient,
) -> None:
    response = await sign_in_response(console, email_of(AdminRole.viewer))
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/"
    cookie = next(
        v
        for k, v in response.headers.multi_items()
        if k == "set-cookie" and v.startswith("warta_admin=")
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the HTTPS test below
    page = await console.get("/admin/")
    assert page.status_code == 200
    assert "Dashboard" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]


async def test_cookie_is_secure_over_https(console: httpx.AsyncClient) -> None:
    form = await console.get("https://testserver/admin/login")
    response = await console.post(
        "https://testserver/admin/login",
        data={"email": email_of(AdminRole.owner), "password": PASSWORD, "csrf": csrf_of(form.text)},
    )
    assert response.status_code == 303
    assert "Secure" in response.headers["set-cookie"]


async def test_without_a_session_pages_redirect_to_sign_in(console: httpx.AsyncClient) -> None:
    response = await console.get("/admin/audit")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/login?next=/admin/audit"


async def test_wrong_password_is_refused_without_saying_which_part(
    console: httpx.AsyncClient,
) -> None:
    wrong_password = await sign_in_response(console, email_of(AdminRole.owner), "not the password")
    no_such_user = await sign_in_response(console, "nobody@example.com")
    assert wrong_password.status_code == no_such_user.status_code == 401
    assert "Wrong email, password or code." in wrong_password.text
    assert "Wrong email, password or code." in no_such_user.text
    assert "warta_admin=" not in wrong_password.headers.get("set-cookie", "")


async def test_sign_in_form_without_its_token_is_refused(console: httpx.AsyncClient) -> None:
    await console.get("/admin/login")
    response = await console.post(
        "/admin/login", data={"email": email_of(AdminRole.owner), "password": PASSWORD}
    )
    assert response.status_code == 403


async def test_sign_out_revokes_the_session_on_the_server(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    token = await sign_in(console, AdminRole.marketer)
    stolen = console.cookies.get("warta_admin")
    response = await console.post("/admin/logout", data={"csrf": token})
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/login"
    # The old cookie, replayed, no longer opens anything: the row is revoked.
    use_cookie(console, stolen)
    replay = await console.get("/admin/")
    assert replay.status_code == 303
    revoked = await session.scalar(
        sa.select(sa.func.count()).where(AdminSession.revoked_at.is_not(None))
    )
    assert revoked == 1


async def test_sign_out_everywhere_ends_every_session_of_the_user(
    console: httpx.AsyncClient,
) -> None:
    first_token = await sign_in(console, AdminRole.admin)
    first_cookie = console.cookies.get("warta_admin")
    console.cookies.clear()
    await sign_in(console, AdminRole.admin)
    second_cookie = console.cookies.get("warta_admin")
    assert first_cookie != second_cookie
    use_cookie(console, first_cookie)
    response = await console.post("/admin/account/sign-out-everywhere", data={"csrf": first_token})
    assert response.status_code == 303
    for cookie in (first_cookie, second_cookie):
        use_cookie(console, cookie)
        gone = await console.get("/admin/")
        assert gone.status_code == 303


async def test_a_form_post_without_the_csrf_token_is_refused(console: httpx.AsyncClient) -> None:
    await sign_in(console, AdminRole.owner)
    missing = await console.post("/admin/logout", data={})
    forged = await console.post("/admin/logout", data={"csrf": "0" * 64})
    assert missing.status_code == forged.status_code == 403
    assert "This form has expired" in missing.text
    still_in = await console.get("/admin/")
    assert still_in.status_code == 200


async def test_a_csrf_token_of_another_session_is_refused(console: httpx.AsyncClient) -> None:
    other_token = await sign_in(console, AdminRole.owner)
    console.cookies.clear()
    await sign_in(console, AdminRole.owner)
    response = await console.post("/admin/logout", data={"csrf": other_token})
    assert response.status_code == 403


async def test_viewer_cannot_reach_the_audit_log(console: httpx.AsyncClient) -> None:
    await sign_in(console, AdminRole.viewer)
    response = await console.get("/admin/audit")
    assert response.status_code == 403
    assert "Not allowed" in response.text


async def test_errors_on_console_paths_are_pages_and_the_api_keeps_problem_json(
    console: httpx.AsyncClient,
) -> None:
    form = await console.get("/admin/login")
    too_long = await console.post(
        "/admin/login",
        data={"email": "a" * 400, "password": "x", "csrf": csrf_of(form.text)},
    )
    assert too_long.status_code == 400
    assert too_long.headers["content-type"].startswith("text/html")
    assert "email" in too_long.text
    missing = await console.get("/admin/no-such-page")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    api = await console.get("/api/v1/no-such-route")
    assert api.status_code == 404
    assert api.headers["content-type"] == "application/problem+json"


async def test_an_idle_or_expired_session_no_longer_signs_in(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    await sign_in(console, AdminRole.viewer)
    assert (await console.get("/admin/")).status_code == 200
    await session.execute(
        sa.update(AdminSession).values(last_seen_at=utcnow() - timedelta(hours=9))
    )
    await session.commit()
    assert (await console.get("/admin/")).status_code == 303
    await session.execute(
        sa.update(AdminSession).values(
            last_seen_at=utcnow(), expires_at=utcnow() - timedelta(seconds=1)
        )
    )
    await session.commit()
    assert (await console.get("/admin/")).status_code == 303
