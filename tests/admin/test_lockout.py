"""Ten wrong passwords lock an account for every `warta api` process: the count is in Redis."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from app.models import AdminRole
from tests.helpers.admin import PASSWORD, email_of, sign_in_response


async def test_ten_wrong_passwords_across_two_processes_lock_the_account(
    start_api: Callable[[], str], admin_users: None
) -> None:
    first_url, second_url = start_api(), start_api()
    target = email_of(AdminRole.owner)
    async with (
        httpx.AsyncClient(base_url=first_url) as first,
        httpx.AsyncClient(base_url=second_url) as second,
    ):
        for attempt in range(10):
            client = first if attempt % 2 == 0 else second
            response = await sign_in_response(client, target, "wrong password, attempt")
            assert response.status_code == 401, (attempt, response.text)
        for client in (first, second):
            locked = await sign_in_response(client, target, PASSWORD)
            assert locked.status_code == 429, locked.text
            assert "Too many failed sign-ins" in locked.text
            assert "warta_admin=" not in locked.headers.get("set-cookie", "")
        # Another account is not affected by this one's lockout.
        other = await sign_in_response(first, email_of(AdminRole.viewer), PASSWORD)
        assert other.status_code == 303


async def test_nine_failures_then_the_right_password_signs_in_and_resets_the_count(
    console: httpx.AsyncClient,
) -> None:
    target = email_of(AdminRole.admin)
    for _ in range(9):
        assert (await sign_in_response(console, target, "nope nope nope")).status_code == 401
    assert (await sign_in_response(console, target, PASSWORD)).status_code == 303
    console.cookies.clear()
    for _ in range(9):
        assert (await sign_in_response(console, target, "nope nope nope")).status_code == 401
    assert (await sign_in_response(console, target, PASSWORD)).status_code == 303
