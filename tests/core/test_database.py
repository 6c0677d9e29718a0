"""The PostgreSQL pool pings a connection at checkout only after it rested: a connection the
server closed while it rested is replaced unseen, one in steady use costs no round trip."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core import database
from app.core.settings import Settings


class Clock:
    """The pool's clock, moved by the test (a rest is a jump, not a sleep)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(database, "_clock", fake)
    return fake


@pytest.fixture
async def pg_engine(settings: Settings, clock: Clock) -> AsyncIterator[AsyncEngine]:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("the pool's ping is PostgreSQL's (SQLite has no server to lose)")
    engine = database.create_engine(settings.model_copy(update={"database_pool_size": 1}))
    yield engine
    await engine.dispose()


@pytest.fixture
def pings(pg_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Each ping the pool sends (the dialect's own ping, counted, still sent)."""
    dialect = pg_engine.sync_engine.dialect
    sent: list[object] = []
    real = dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        sent.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counted)
    return sent


async def _backend(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(sa.text("select pg_backend_pid()")))


async def _terminate(settings: Settings, pid: int) -> None:
    """Close a backend from the server's side, as a restart or an idle timeout does."""
    other = database.create_engine(settings)
    try:
        async with other.connect() as connection:
            # (With a timeout: it returns once the backend is gone, not once it was told.)
            ended = sa.text("select pg_terminate_backend(:pid, 10000)")
            assert await connection.scalar(ended, {"pid": pid})
            await connection.commit()
    finally:
        await other.dispose()


async def test_a_connection_in_steady_use_is_not_pinged(
    pg_engine: AsyncEngine, pings: list[object], clock: Clock
) -> None:
    first = await _backend(pg_engine)  # a new connection: nothing to ping
    clock.now += database.PING_AFTER_IDLE / 2
    again = await _backend(pg_engine)
    assert again == first
    assert pings == []


async def test_a_rested_connection_is_pinged_once(
    pg_engine: AsyncEngine, pings: list[object], clock: Clock
) -> None:
    first = await _backend(pg_engine)
    clock.now += database.PING_AFTER_IDLE + 0.1
    assert await _backend(pg_engine) == first  # alive: kept
    assert len(pings) == 1
    assert await _backend(pg_engine) == first  # just used again: no second ping
    assert len(pings) == 1


async def test_a_connection_closed_while_it_rested_is_replaced_unseen(
    pg_engine: AsyncEngine, pings: list[object], clock: Clock, settings: Settings
) -> None:
    first = await _backend(pg_engine)
    await _terminate(settings, first)
    clock.now += database.PING_AFTER_IDLE + 0.1
    second = await _backend(pg_engine)  # no error: the ping failed, a new connection served
    assert second != first
    assert len(pings) == 1


async def test_a_connection_lost_within_the_window_fails_once_then_is_replaced(
    pg_engine: AsyncEngine, pings: list[object], settings: Settings
) -> None:
    """The window's known cost: the first statement on a connection lost moments after its
    last use fails (as any statement whose connection drops does), and the pool is
    replaced by it, so the next checkout works."""
    first = await _backend(pg_engine)
    await _terminate(settings, first)
    with pytest.raises(sa.exc.DBAPIError) as failed:
        await _backend(pg_engine)
    assert failed.value.connection_invalidated
    assert await _backend(pg_engine) != first
    assert pings == []
