"""Helpers for the console tests: users per role, signing in over HTTP, axe in the browser."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin import users
from app.core.database import unit_of_work
from app.models import AdminRole

PASSWORD = "correct horse battery staple"
ROLES = tuple(AdminRole)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
BLOCKING_IMPACTS = ("serious", "critical")


def email_of(role: AdminRole) -> str:
    """The test user of a role."""
    return f"{role.value}@example.com"


async def make_users(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """One user per role, all with PASSWORD."""
    async with unit_of_work(sessionmaker) as session:
        for role in ROLES:
            await users.create_user(session, email_of(role), role, PASSWORD)


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = CSRF.search(html)
    assert found, html
    return found.group(1)


async def sign_in_response(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, code: str = ""
) -> httpx.Response:
    """Fetch the sign-in form (for its token and cookie), then post it."""
    form = await client.get("/admin/login")
    assert form.status_code == 200, form.text
    return await client.post(
        "/admin/login",
        data={"email": email, "password": password, "code": code, "csrf": csrf_of(form.text)},
    )


async def sign_in(client: httpx.AsyncClient, role: AdminRole) -> str:
    """Sign `client` in as the user of `role`; returns the session's CSRF token."""
    response = await sign_in_response(client, email_of(role))
    assert response.status_code == 303, response.text
    page = await client.get("/admin/account")
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


async def browser_sign_in(page: Page, base_url: str, role: AdminRole) -> None:
    """Sign in through the form, as a person would."""
    await page.goto(f"{base_url}/admin/login")
    await page.get_by_label("Email").fill(email_of(role))
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base_url}/admin/")


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the current page (WCAG 2.1 AA rules)."""
    assert AXE.exists(), f"{AXE} is missing: run `make assets` (npm ci)"
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated through the DevTools protocol, which the page's CSP does not govern.
        await page.evaluate(AXE.read_text())
    result = await page.evaluate(
        """async () => (await axe.run(document, {runOnly: {type: 'tag',
             values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}}))
             .violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                    nodes: v.nodes.map(n => n.html).slice(0, 3)}))"""
    )
    return [v for v in result if v["impact"] in BLOCKING_IMPACTS]


async def assert_accessible(page: Page) -> None:
    """No serious or critical axe violation on the page."""
    found = await axe_violations(page)
    assert found == [], json.dumps(found, indent=2)
