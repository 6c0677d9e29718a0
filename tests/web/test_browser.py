"""The public pages in a real browser: Debian's Chromium driven by Playwright.

A real `warta api` process serves the pages on 127.0.0.1, a worker sends through an SMTP
sink, and the browser does what a subscriber does: reads, ticks, types and clicks.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from app.core.settings import Settings
from app.mail import identity
from tests.helpers.api import ADMIN_TOKEN, eventually, post_json
from tests.helpers.servers import free_port
from tests.helpers.sinks import SinkHandler

BIN = Path(sys.executable).parent
CHROMIUM = "/usr/lib/chromium/chromium"
CONFIRM_LINK = re.compile(r"https?://\S+/confirm/[A-Za-z0-9_.-]+")
# Every visible form control has a label a screen reader announces.
UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), button, select')]
  .filter(el => !el.closest('[aria-hidden=true]'))
  .filter(el => el.tagName === 'BUTTON' ? !el.textContent.trim() : el.labels.length === 0)
  .map(el => el.outerHTML)"""


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def engine_settings(settings: Settings, sink: tuple[str, SinkHandler], port: int) -> Settings:
    return settings.model_copy(
        update={
            "mta_submission": sink[0],
            "sender_connections": 2,
            "public_url": f"http://127.0.0.1:{port}",
        }
    )


@pytest.fixture
def live(engine_settings: Settings, port: int, tmp_path: Path) -> Iterator[str]:
    """`warta api` as a real process on the test database."""
    env = {
        **os.environ,
        "WARTA_DATABASE_URL": engine_settings.database_url,
        "WARTA_REDIS_URL": engine_settings.redis_url,
        "WARTA_VAR_DIR": str(tmp_path / "api-var"),
        "WARTA_BOOTSTRAP_API_KEY": ADMIN_TOKEN,
        "WARTA_API_PORT": str(port),
        "WARTA_SECRET_KEY": engine_settings.secret_key,
        "WARTA_PUBLIC_URL": engine_settings.public_url,
    }
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([BIN / "warta", "api"], env=env, stdout=log, stderr=log)
        url = engine_settings.public_url
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the API did not become healthy in 30 s"
                time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture
async def admin(live: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=live, headers=headers) as client:
        yield client


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    yield page
    await context.close()
    assert dialogs == [], "a script ran in a page"


async def _accessible(page: Page) -> None:
    assert await page.evaluate(UNLABELLED) == []
    assert await page.locator("html[lang]").count() == 1


async def _seed(
    admin: httpx.AsyncClient, email: str, *names: str, **fields: Any
) -> tuple[int, list[int]]:
    lists = [
        int(
            (
                await post_json(
                    admin, "/api/v1/lists", {"name": n, "visibility": "public", **fields}
                )
            )["id"]
        )
        for n in names
    ]
    body = {"email": email, "lists": lists, "preconfirm": True}
    subscriber = int((await post_json(admin, "/api/v1/subscribers", body))["id"])
    return subscriber, lists


async def _states(admin: httpx.AsyncClient, subscriber: int) -> dict[int, str]:
    found = (await admin.get(f"/api/v1/subscribers/{subscriber}")).json()
    return {item["list_id"]: item["status"] for item in found["lists"]}


def _token(settings: Settings, purpose: str, *parts: int) -> str:
    return identity.link_token(settings.effective_secret_key(), purpose, *parts)


async def test_unsubscribe_on_the_page_then_undo(
    live: str, admin: httpx.AsyncClient, page: Page, engine_settings: Settings
) -> None:
    subscriber, (news, tips) = await _seed(admin, "ann@example.com", "News", "Tips")
    campaign = int((await post_json(admin, "/api/v1/campaigns", {
        "name": "c", "subject": "s", "from_email": "a@example.com", "list_ids": [news], "text": "t",
    }))["id"])  # fmt: skip
    await page.goto(f"{live}/u/{_token(engine_settings, 'unsubscribe', subscriber, campaign)}")
    await expect(page.get_by_role("heading", name="Unsubscribe")).to_be_visible()
    await _accessible(page)
    assert await _states(admin, subscriber) == {news: "confirmed", tips: "confirmed"}

    await page.get_by_label("All mail from us").check()
    await page.get_by_role("button", name="Unsubscribe").click()
    await expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    assert await _states(admin, subscriber) == {news: "unsubscribed", tips: "unsubscribed"}

    undo = page.get_by_role("button", name=re.compile("Undo"))
    await undo.focus()
    await page.keyboard.press("Enter")  # keyboard only
    await expect(page.get_by_role("heading", name="You are subscribed again")).to_be_visible()
    assert await _states(admin, subscriber) == {news: "confirmed", tips: "confirmed"}


async def test_preference_change(
    live: str, admin: httpx.AsyncClient, page: Page, engine_settings: Settings
) -> None:
    subscriber, (news, tips) = await _seed(admin, "bob@example.com", "News", "Tips")
    await page.goto(f"{live}/p/{_token(engine_settings, 'preferences', subscriber, 0)}")
    await _accessible(page)
    await page.get_by_label("Your name").fill("<script>alert('x')</script> Bob")
    await page.get_by_label("Tips").uncheck()
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("status")).to_contain_text("saved")
    await expect(page.get_by_label("Your name")).to_have_value("<script>alert('x')</script> Bob")
    await expect(page.get_by_label("Tips")).not_to_be_checked()
    assert await _states(admin, subscriber) == {news: "confirmed", tips: "unsubscribed"}
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name=re.compile("Download your data")).click()
    download = await download_info.value
    saved = await download.path()
    assert "bob@example.com" in await asyncio.to_thread(Path(saved).read_text)


async def test_subscribe_and_confirm_through_the_mail(
    live: str,
    admin: httpx.AsyncClient,
    page: Page,
    worker: None,
    sink: tuple[str, SinkHandler],
) -> None:
    await post_json(
        admin, "/api/v1/lists", {"name": "Letters", "optin": "double", "visibility": "public"}
    )
    public = (await admin.get("/api/v1/public/lists")).json()
    await page.goto(public[0]["form_url"])
    await _accessible(page)
    await page.get_by_label("Email address").fill("<script>alert(1)</script>")
    await page.get_by_role("button", name="Subscribe").click()
    # The browser's own check refuses it first; nothing was stored either way.
    assert (await admin.get("/api/v1/subscribers")).json()["items"] == []

    await page.get_by_label("Email address").fill("carol@example.com")
    await page.get_by_label("Name").fill("Carol")
    await page.get_by_role("button", name="Subscribe").click()
    await expect(page.get_by_role("heading", name="Almost done")).to_be_visible()

    async def mailed() -> bool:
        return len(sink[1].snapshot()) == 1

    await eventually(mailed, 30, "the confirmation mail")
    body = sink[1].snapshot()[0].message.get_body(("plain",))
    assert body is not None
    link = CONFIRM_LINK.search(body.get_content())
    assert link is not None and link.group(0).startswith(live)
    await page.goto(link.group(0))
    subscriber = (await admin.get("/api/v1/subscribers")).json()["items"][0]
    assert {item["status"] for item in subscriber["lists"]} == {"unconfirmed"}
    await page.get_by_role("button", name="Confirm my subscription").click()
    await expect(page.get_by_role("heading", name="You are subscribed")).to_be_visible()
    confirmed = (await admin.get(f"/api/v1/subscribers/{subscriber['id']}")).json()
    assert {item["status"] for item in confirmed["lists"]} == {"confirmed"}


async def test_script_in_a_form_field_is_shown_as_text(
    live: str, admin: httpx.AsyncClient, page: Page
) -> None:
    await post_json(admin, "/api/v1/lists", {"name": "News", "visibility": "public"})
    public = (await admin.get("/api/v1/public/lists")).json()
    await page.goto(public[0]["form_url"])
    # Bypass the browser's own type=email check to reach the server's.
    await page.eval_on_selector("#email", "el => el.type = 'text'")
    await page.get_by_label("Email address").fill('"><script>alert(1)</script>@x')
    await page.get_by_role("button", name="Subscribe").click()
    await expect(page.get_by_role("alert")).to_contain_text("Please check the address")
    await expect(page.get_by_label("Email address")).to_have_value('"><script>alert(1)</script>@x')
    assert (await admin.get("/api/v1/subscribers")).json()["items"] == []


async def test_invalid_link_page(live: str, page: Page) -> None:
    response = await page.goto(f"{live}/p/forged.token")
    assert response is not None and response.status == 400
    await expect(page.get_by_role("heading", name="This link is not valid")).to_be_visible()
