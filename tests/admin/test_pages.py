"""Every console page in a real browser: Debian's chromium against a real `warta api`,
checked with axe-core (no serious or critical violation) and under the strict CSP."""

from __future__ import annotations

from playwright.async_api import BrowserContext, expect

from app.models import AdminRole
from tests.helpers.admin import assert_accessible, browser_sign_in

PAGES = ("/admin/", "/admin/audit", "/admin/account")


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
