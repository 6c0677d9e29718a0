"""Every console page in a real browser: Debian's chromium against a real `warta api`,
checked with axe-core (no serious or critical violation) and under the strict CSP."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from playwright.async_api import BrowserContext, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import AdminRole, Send, SendStatus, utcnow
from tests.helpers.admin import SCREENSHOTS, assert_accessible, browser_sign_in, seed_dashboard

PAGES = (
    "/admin/",
    "/admin/audit",
    "/admin/account",
    "/admin/users",
    "/admin/api-keys",
    "/admin/lists",
    "/admin/subscribers",
    "/admin/imports/new",
    "/admin/templates",
    "/admin/templates/new",
    "/admin/campaigns",
    "/admin/campaigns/new",
    "/admin/messages",
    "/admin/bounces",
    "/admin/suppressions",
    "/admin/queue",
    "/admin/webhooks",
)


async def test_sign_in_page_is_accessible(
    live_console: str, browser_context: BrowserContext
) -> None:
    page = await browser_context.new_page()
    await page.goto(f"{live_console}/admin/login")
    await assert_accessible(page)


async def test_every_page_is_accessible_and_keyboard_reachable(
    live_console: str, browser_context: BrowserContext
) -> None:
    page = await browser_context.new_page()
    await browser_sign_in(page, live_console, AdminRole.owner)
    for path in PAGES:
        await page.goto(f"{live_console}{path}")
        await expect(page.locator("h1")).to_be_visible()
        await assert_accessible(page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = path.strip("/").replace("/", "-") or "home"
        await page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)
    # The first Tab lands on the skip link, which moves focus to the content.
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()


async def test_signing_out_in_the_browser_returns_to_the_sign_in_page(
    live_console: str, browser_context: BrowserContext
) -> None:
    page = await browser_context.new_page()
    await browser_sign_in(page, live_console, AdminRole.viewer)
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{live_console}/admin/login")
    await page.goto(f"{live_console}/admin/")
    await page.wait_for_url(f"{live_console}/admin/login?next=/admin/")


async def test_dashboard_with_data_is_accessible_updates_live_and_is_screenshotted(
    live_console: str,
    browser_context: BrowserContext,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    seeded = await seed_dashboard(sessionmaker, datetime.now(UTC).date())
    page = await browser_context.new_page()
    await browser_sign_in(page, live_console, AdminRole.marketer)
    await expect(page.get_by_text("600 of 1,000 (60.0 %)")).to_be_visible()
    await expect(page.locator("svg[role=img]")).to_have_count(4)
    await assert_accessible(page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / "admin-dashboard.png", full_page=True)

    # admin.js polls /admin/live.json: more of the ledger done shows up without a reload.
    async with sessionmaker() as session:
        await session.execute(
            sa.update(Send)
            .where(Send.campaign_id == seeded["campaign_id"], Send.status == SendStatus.pending)
            .where(
                Send.id.in_(sa.select(Send.id).where(Send.status == SendStatus.pending).limit(200))
            )
            .values(status=SendStatus.delivered, sent_at=utcnow())
        )
        await session.commit()
    await expect(page.get_by_text("800 of 1,000 (80.0 %)")).to_be_visible(timeout=15_000)
    assert await page.locator("progress").get_attribute("value") in ("80", "80.0")

    # Readable on a phone: nothing wider than the screen but the scrollable tables.
    await page.set_viewport_size({"width": 375, "height": 800})
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    wide = await page.evaluate(
        """() => [...document.querySelectorAll('body *')]
          .filter(el => el.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
          .filter(el => !el.parentElement.closest('.scroll'))
          .map(el => el.tagName + '.' + el.className + ' ' + el.getBoundingClientRect().right)
          .slice(0, 8).concat([document.documentElement.clientWidth, window.innerWidth,
             document.documentElement.scrollWidth])"""
    )
    assert overflow <= 0, wide
    await page.screenshot(path=SCREENSHOTS / "admin-dashboard-phone.png", full_page=True)
