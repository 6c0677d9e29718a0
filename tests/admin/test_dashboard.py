"""The dashboard: figures from the rollups, running campaigns' progress, MTA queue health."""

from __future__ import annotations

import asyncio
import json
import smtplib
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api.app import create_app
from app.core.settings import Settings
from app.models import AdminRole
from tests.helpers.admin import make_users, seed_dashboard, sign_in
from tests.helpers.api import eventually
from tests.helpers.servers import free_port
from workers.mta_process import start_mta


async def test_dashboard_shows_the_rollups_and_the_running_campaign(
    console: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    seeded = await seed_dashboard(sessionmaker, datetime.now(UTC).date())
    await sign_in(console, AdminRole.viewer)
    page = await console.get("/admin/")
    assert page.status_code == 200, page.text
    html = page.text
    assert f"{seeded['sent']:,}" in html
    assert f"plus {seeded['opened_machine']:,} by machines" in html
    # Four charts, each an accessible SVG with a table beside it.
    assert html.count('role="img"') == 4
    assert html.count("<details>") == 4
    assert '<title id="complaints-title">' in html
    assert "0.3 %: Gmail and Yahoo limit" in html
    assert "Winter sale" in html
    assert "600 of 1,000 (60.0 %)" in html
    # A viewer sees no pause button (and the server would refuse it: test_roles).
    assert "/pause" not in html
    assert "<script>" not in html and " style=" not in html

    live = await console.get("/admin/live.json")
    assert live.status_code == 200
    campaign = live.json()["campaigns"][0]
    assert campaign["id"] == seeded["campaign_id"]
    assert (campaign["done"], campaign["recipients"], campaign["percent"]) == (600, 1000, 60.0)
    assert campaign["rate"] > 0 and campaign["eta_seconds"] is not None


async def test_marketer_sees_the_pause_button(
    console: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    seeded = await seed_dashboard(sessionmaker, datetime.now(UTC).date())
    await sign_in(console, AdminRole.marketer)
    html = (await console.get("/admin/")).text
    assert f'action="/admin/campaigns/{seeded["campaign_id"]}/pause"' in html


def _submit(address: str, count: int) -> None:
    host, port = address.rsplit(":", 1)
    with smtplib.SMTP(host, int(port)) as client:
        for i in range(count):
            message = EmailMessage()
            message["From"] = "news@warta.example"
            message["To"] = f"user{i}@example.com"
            message["Subject"] = "waiting"
            message.set_content("body")
            client.send_message(message)


async def test_dashboard_shows_the_queue_of_a_real_mta(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await make_users(sessionmaker)
    config = settings.model_copy(
        update={
            "mta_submission": f"127.0.0.1:{free_port()}",
            "mta_inbound": f"127.0.0.1:{free_port()}",
            "mta_delivery": "mx",
            # Nobody listens there: the messages wait, deferred.
            "mta_transport_map": json.dumps({"example.com": f"127.0.0.1:{free_port()}"}),
            "mta_spool_dir": tmp_path / "spool",
            "mta_retry_min": 60,
        }
    )
    service = await start_mta(config)
    app = create_app(settings)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            ) as console,
        ):
            await asyncio.to_thread(_submit, config.mta_submission, 3)
            await sign_in(console, AdminRole.viewer)

            async def three_deferred() -> bool:
                queue = (await console.get("/admin/live.json")).json()["queue"]
                return bool(queue["deferred"] == 3 and queue["instances"] == 1)

            await eventually(three_deferred, within=15, what="3 deferred messages on the dashboard")
            html = (await console.get("/admin/")).text
            assert "Deferred (waiting to retry)" in html
            assert "example.com" in html
    finally:
        await service.stop(grace=5)
