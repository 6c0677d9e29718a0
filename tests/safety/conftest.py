"""Fixtures of the content-safety tests: a real spamd and a real clamd, started once a run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack

import httpx
import pytest

from app.api.app import create_app
from app.core.settings import Settings
from tests.helpers.safety_servers import ClamdServer, SpamdServer

MakeApi = Callable[[Settings], Awaitable[httpx.AsyncClient]]


@pytest.fixture(scope="session")
def spamd_server() -> Iterator[SpamdServer]:
    """SpamAssassin's spamd on 127.0.0.1 with stock rules and no network tests."""
    with SpamdServer() as server:
        yield server


@pytest.fixture(scope="session")
def clamd_server() -> Iterator[ClamdServer]:
    """ClamAV's clamd on 127.0.0.1 (and a unix socket) with the test signature only."""
    with ClamdServer() as server:
        yield server


@pytest.fixture
async def silent_daemon() -> AsyncIterator[str]:
    """`host:port` of a server that accepts connections and never answers (a hung daemon)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


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
