"""Helpers for the console tests: users per role, signing in over HTTP, axe in the browser."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin import users
from app.core.database import unit_of_work
from app.core.events import NewEvent, record_events
from app.models import (
    AdminRole,
    Campaign,
    CampaignStatus,
    EventKind,
    Send,
    SendStatus,
    utcnow,
)

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


async def seed_dashboard(
    sessionmaker: async_sessionmaker[AsyncSession], today: date
) -> dict[str, int]:
    """30 days of events (through record_events, so the rollups fill as in production) and a
    running campaign 60 % through its 1,000 recipients; returns what was recorded."""
    totals: dict[str, int] = {}
    async with unit_of_work(sessionmaker) as session:
        campaign = Campaign(
            name="Winter sale",
            subject="Sale",
            from_email="shop@example.com",
            status=CampaignStatus.running,
            audience_size=1000,
        )
        session.add(campaign)
        await session.flush()
        now = utcnow()
        for i in range(1000):
            done = i < 600
            session.add(
                Send(
                    campaign_id=campaign.id,
                    email=f"r{i}@example.com",
                    status=SendStatus.delivered if done else SendStatus.pending,
                    sent_at=now - timedelta(seconds=i % 8) if done else None,
                )
            )
        for back in range(30):
            day = datetime.combine(today - timedelta(days=back), time(12), tzinfo=UTC)
            sent = 200 + 37 * (back % 7)
            counts = {
                EventKind.sent: sent,
                EventKind.delivered: sent - 6 - back % 5,
                EventKind.bounced: 3 + back % 5,
                EventKind.complained: back % 3,
                EventKind.unsubscribed: 1 + back % 4,
            }
            events = [
                NewEvent(kind=kind, campaign_id=campaign.id, at=day)
                for kind, n in counts.items()
                for _ in range(n)
            ]
            opens = sent // 3
            events += [
                NewEvent(
                    kind=EventKind.opened,
                    campaign_id=campaign.id,
                    at=day,
                    data={"machine": j % 4 == 0},
                )
                for j in range(opens)
            ]
            events += [
                NewEvent(
                    kind=EventKind.clicked, campaign_id=campaign.id, at=day, data={"machine": False}
                )
                for _ in range(sent // 12)
            ]
            await record_events(session, events)
            for event in events:
                name = event.kind.value + ("_machine" if event.data.get("machine") else "")
                totals[name] = totals.get(name, 0) + 1
    totals["campaign_id"] = campaign.id
    return totals
