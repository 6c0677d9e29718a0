"""Fixtures of the content-safety tests: the app started with given settings. spamd, clamd
and the other daemons are `tests/helpers/daemons.py`'s, registered in `tests/conftest.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import httpx
import pytest

from app.api.app import create_app
from app.core.settings import Settings

MakeApi = Callable[[Settings], Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def make_api() -> AsyncIterator[MakeApi]:
    """Start the app with given settings (lifespan running); an admin client to it."""
    async with AsyncExitStack() as stack:

        async def start(settings: Settings) -> httpx.AsyncClient:
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            return await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://testserver",
                    headers={"Authorization": f"Bearer {settings.bootstrap_api_key}"},
                )
            )

        yield start
