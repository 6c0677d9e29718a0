"""Fixtures for engine tests: an SMTP sink, settings pointing at it, the API, a worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from app.api.app import create_app
from app.core.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.helpers import eventually
from tests.sinks import SinkHandler, smtp_sink
from workers.worker import run_worker


@pytest.fixture
def sink() -> Iterator[tuple[str, SinkHandler]]:
    with smtp_sink() as server:
        yield server


@pytest.fixture
def engine_settings(settings: Settings, sink: tuple[str, SinkHandler]) -> Settings:
    return settings.model_copy(update={"mta_submission": sink[0], "sender_connections": 4})


@pytest.fixture
async def api(engine_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine_settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as client,
    ):
        yield client


@pytest.fixture
async def worker(engine_settings: Settings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(engine_settings, engine_settings.redis_url, stop))
    yield
    stop.set()
    await asyncio.wait_for(task, 30)


async def wait_for_status(
    api: httpx.AsyncClient, campaign_id: int, status: str, within: float = 60
) -> dict[str, Any]:
    """Poll the stats endpoint until the campaign reaches `status` (bounded by `within`)."""
    stats: dict[str, Any] = {}

    async def reached() -> bool:
        stats.update((await api.get(f"/api/v1/campaigns/{campaign_id}/stats")).json())
        return bool(stats["status"] == status)

    await eventually(reached, within, f"campaign status {status}")
    return stats
