"""The marketer's whole journey in Debian's chromium, against real `warta api`, `warta worker`
and `warta mta` processes that deliver to an SMTP sink: sign in → create a list → import a
CSV (progress to done) → write a template (a syntax error shown, then fixed) → campaign →
preview → test send arrives at the sink → send → live progress reaches finished → the
report shows the delivered count and a chart with data. axe-core checks every page."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from app.core.settings import Settings
from app.models import AdminRole
from tests.helpers.admin import SCREENSHOTS, assert_accessible, browser_sign_in
from tests.helpers.api import ADMIN_TOKEN, eventually
from tests.helpers.processes import BIN, worker_env
from tests.helpers.servers import free_port
from tests.helpers.sinks import SinkHandler

PEOPLE = "email,name\nada@example.com,Ada\nbob@example.com,Bob\nnot-an-address,Nobody\ncy@example.com,Cy\n"
BROKEN = "<p>Hello {{ subscriber.name }}</p>\n<p>{% if %}</p>"
FIXED = "<p>Hello {{ subscriber.name }}</p>\n<p>News of the month.</p>"


@pytest.fixture
def stack(
    settings: Settings, sink: tuple[str, SinkHandler], tmp_path: Path, admin_users: None
) -> Iterator[str]:
    """API, worker and MTA as processes on the test's database and Redis; the MTA delivers
    example.com to the sink. Yields the API's base URL; stops all three after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = worker_env(
        settings.model_copy(update={"mta_submission": f"127.0.0.1:{free_port()}"}),
        WARTA_API_PORT=str(port),
        WARTA_PUBLIC_URL=url,
        WARTA_BOOTSTRAP_API_KEY=ADMIN_TOKEN,
        WARTA_MTA_INBOUND=f"127.0.0.1:{free_port()}",
        WARTA_MTA_DELIVERY="mx",
        WARTA_MTA_TRANSPORT_MAP=json.dumps({"example.com": sink[0]}),
        WARTA_MTA_SPOOL_DIR=str(tmp_path / "spool"),
        WARTA_MTA_RETRY_MIN="1",
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for command in ("mta", "worker", "api"):
            with (tmp_path / f"{command}.log").open("wb") as out:
                processes.append(
                    subprocess.Popen([BIN / "warta", command], env=env, stdout=out, stderr=out)
                )
        _wait_healthy(url, processes, tmp_path)
        yield url
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(url: str, processes: list[subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + 90  # three processes start on a shared, loaded machine
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        for process in processes:
            assert process.poll() is None, [p.read_text() for p in logs.glob("*.log")]
        assert time.monotonic() < deadline, "the API did not become healthy in 90 s"
        time.sleep(0.05)


async def _checked(page: Page) -> None:
    await expect(page.locator("h1")).to_be_visible()
    await assert_accessible(page)


async def test_the_marketers_journey(
    stack: str, browser_context: BrowserContext, sink: tuple[str, SinkHandler], tmp_path: Path
) -> None:
    page = await browser_context.new_page()
    await browser_sign_in(page, stack, AdminRole.marketer)

    # A list.
    await page.get_by_role("link", name="Lists").click()
    await page.get_by_label("Name", exact=True).fill("Journey")
    await page.get_by_role("button", name="Create the list").click()
    await expect(page.get_by_role("link", name="Journey", exact=True)).to_be_visible()
    await _checked(page)

    # An import, watched to the end; the bad row is reported with its line.
    people = tmp_path / "people.csv"
    people.write_text(PEOPLE)
    await page.goto(f"{stack}/admin/imports/new")
    await _checked(page)
    await page.get_by_label("CSV file").set_input_files(people)
    await page.get_by_label("Journey").check()
    await page.get_by_role("button", name="Import").click()
    await expect(page.locator('[data-field="status"]')).to_have_text("finished", timeout=30_000)
    await expect(page.locator('[data-field="rows_imported"]')).to_have_text("3")
    await expect(page.get_by_role("cell", name="not-an-address")).to_be_visible()
    assert await page.locator("progress").get_attribute("value") in ("100", "100.0")
    await _checked(page)

    # A template: the syntax error is shown at its line, then fixed.
    await page.goto(f"{stack}/admin/templates/new")
    preview = page.frame_locator("#preview-frame")
    # The preview needs no name (it is not a save): it says at once what is missing.
    await expect(preview.locator("body")).to_contain_text("neither an HTML nor a text body")
    await page.get_by_label("Name", exact=True).fill("Monthly")
    await page.get_by_label("Subject").fill("Hello {{ subscriber.name }}")
    await page.get_by_label("HTML").fill(BROKEN)
    await page.get_by_label("Text", exact=True).fill("Hello {{ subscriber.name }}")
    await page.get_by_role("button", name="Save").click()
    error = page.locator("main #source-error")
    await expect(error).to_contain_text("line 2")
    await expect(error.locator(".faulty")).to_contain_text("{% if %}")
    await _checked(page)
    await page.get_by_label("HTML").fill(FIXED)
    await expect(preview.locator("body")).to_contain_text("News of the month.")
    await page.get_by_role("button", name="Save").click()
    await page.wait_for_url("**/admin/templates/*?saved=1")
    await _checked(page)

    # The campaign wizard: content, audience with its live count, preview, test, send.
    await page.get_by_role("link", name="Start a campaign with this template").click()
    await page.get_by_label("Name").fill("December news")
    await page.get_by_label("From").fill("News <news@example.com>")
    await _checked(page)
    await page.get_by_role("button", name="Save and choose the audience").click()
    await page.get_by_label("Journey").check()
    await expect(page.locator("#reach")).to_have_text("3 subscribers would receive it now.")
    await page.get_by_role("button", name="Save the audience").click()
    await page.get_by_label("Preview for").fill("bob@example.com")
    await page.get_by_role("button", name="Show the preview").click()
    framed = page.frame_locator('iframe[name="campaign-preview"]')
    await expect(framed.locator("#preview-subject")).to_have_text("Hello Bob")
    await _checked(page)

    await page.get_by_label("Test addresses").fill("tester@example.com")
    await page.get_by_role("button", name="Send the test").click()
    await expect(page.locator(".notice")).to_contain_text("Test sent", timeout=40_000)

    async def test_arrived() -> bool:
        return any("tester@example.com" in r.rcpt_tos for r in sink[1].received)

    await eventually(test_arrived, what="the test message at the sink")

    await page.get_by_role("button", name="Send now").click()
    await expect(page.locator('[data-field="status"]')).to_have_text("finished", timeout=60_000)
    await _checked(page)

    # The report: the delivered count (as the MTA reports it) and a chart with data.
    await page.get_by_role("link", name="Report").click()
    delivered = page.locator("#delivered-tile .figure")
    deadline = time.monotonic() + 90  # the MTA reports each delivery after the sink accepts it
    while await delivered.text_content() != "3":
        assert time.monotonic() < deadline, "the report never showed 3 delivered"
        await page.reload()
    await expect(page.locator("#chart-over-time svg[role=img]")).to_be_visible()
    assert await page.locator("#chart-over-time svg polyline").count() >= 1
    today_row = page.locator("#chart-over-time tbody tr").last
    await expect(today_row.locator("td").first).to_have_text("3")
    await _checked(page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / "admin-campaign-report.png", full_page=True)
    recipients = {r for m in sink[1].received for r in m.rcpt_tos}
    assert {"ada@example.com", "bob@example.com", "cy@example.com"} <= recipients
