"""Fixtures of the content-safety tests: a real spamd and a real clamd, started once a run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.helpers.safety_servers import ClamdServer, SpamdServer


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
