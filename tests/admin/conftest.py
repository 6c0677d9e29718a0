"""Console fixtures: users of every role, the app in-process, and a real `warta api` with a
browser for the page tests (Debian's chromium driven by Playwright, axe-core injected)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, async_playwright
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api.app import create_app
from app.core.settings import Settings
from tests.helpers.admin import make_users
from tests.helpers.api import ADMIN_TOKEN
from tests.helpers.processes import BIN
from tests.helpers.servers import free_port

CHROMIUM = "/usr/lib/chromium/chromium"


@pytest.fixture
async def admin_users(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """One console user per role (tests.helpers.admin.email_of(role), PASSWORD)."""
    await make_users(sessionmaker)


@pytest.fixture
async def console(settings: Settings, admin_users: None) -> AsyncIterator[httpx.AsyncClient]:
    """A cookie-keeping client on the app in-process (lifespan running), not signed in."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        yield client


def api_env(settings: Settings, port: int, var_dir: Path) -> dict[str, str]:
    """The environment of a `warta api` process on the test's database and Redis."""
    return {
        **os.environ,
        "WARTA_DATABASE_URL": settings.database_url,
        "WARTA_REDIS_URL": settings.redis_url,
        "WARTA_VAR_DIR": str(var_dir),
        "WARTA_BOOTSTRAP_API_KEY": ADMIN_TOKEN,
        "WARTA_API_PORT": str(port),
        "WARTA_SECRET_KEY": settings.secret_key,
        "WARTA_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "WARTA_MTA_SUBMISSION": settings.mta_submission,
    }


def _healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the API did not become healthy in 30 s"
        time.sleep(0.05)


@pytest.fixture
def start_api(settings: Settings, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Start `warta api` processes on the test database; returns a function giving the URL."""
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        port = free_port()
        log = tmp_path / f"api-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [BIN / "warta", "api"],
                env=api_env(settings, port, tmp_path / f"api-var-{port}"),
                stdout=out,
                stderr=out,
            )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        _healthy(url, process, log)
        return url

    yield start
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=10)


@pytest.fixture
def live_console(start_api: Callable[[], str], admin_users: None) -> str:
    """One real `warta api` process with the console users; its base URL."""
    return start_api()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def browser_context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile; fails the test if any page broke its CSP or ran a dialog."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    problems: list[str] = []

    def watch(page: object) -> None:
        from playwright.async_api import Page

        assert isinstance(page, Page)
        page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
        page.on(
            "console",
            lambda message: (
                problems.append(message.text) if "Content Security Policy" in message.text else None
            ),
        )

    context.on("page", watch)
    yield context
    await context.close()
    assert problems == [], problems
