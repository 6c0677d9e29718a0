"""The database engine and session factory, built from settings on demand."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.core.address_hash import SQLITE_FUNCTION, sqlite_sha256
from app.core.settings import Settings


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; busy_timeout makes writers queue, not fail.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
    # The hash of erased addresses, which PostgreSQL computes natively (app.core.address_hash).
    dbapi_connection.create_function(SQLITE_FUNCTION, 1, sqlite_sha256, deterministic=True)


def create_engine(settings: Settings) -> AsyncEngine:
    """An async engine for the configured URL, with SQLite tuned for one writer."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(url, pool_size=settings.database_pool_size, max_overflow=10)
    _ping_when_idle(engine)
    return engine


PING_AFTER_IDLE = 0.5
"""Seconds a pooled connection may rest before its next checkout pings it first."""

_clock: Callable[[], float] = time.monotonic
_RETURNED = "warta_returned_at"


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection at checkout only if it rested longer than `PING_AFTER_IDLE`.

    SQLAlchemy's `pool_pre_ping` pings at every checkout, and on asyncpg a ping is three
    round trips (BEGIN, `;`, ROLLBACK): under load that was a third of a group's statements.
    A connection handed back moments ago is almost surely alive, so it goes out unpinged
    (HikariCP's rule); one that rested is pinged: if the ping finds the server gone (it
    restarted, or closed the connection), every pooled connection from before is replaced,
    as with `pool_pre_ping`; any other failure replaces this connection. The window's cost: a connection whose server went away in the last
    half second fails its first statement, which SQLAlchemy sees as a disconnect and which
    also replaces the pool; the caller's error path (a 503, a job retried, an outcome batch
    flushed again) handles it, as it must any error mid-statement.
    """
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    def connected(dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED] = _clock()

    def returned(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            record.info[_RETURNED] = _clock()

    def checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get(_RETURNED)
        if returned_at is not None and _clock() - returned_at < PING_AFTER_IDLE:
            return
        _ping(dialect, dbapi_connection)

    event.listen(pool, "connect", connected)
    event.listen(pool, "checkin", returned)
    event.listen(pool, "checkout", checked_out)


def _ping(dialect: Dialect, dbapi_connection: Any) -> None:
    try:
        dialect.do_ping(dbapi_connection)
    except Exception as error:
        disconnected = isinstance(error, dialect.loaded_dbapi.Error) and dialect.is_disconnect(
            error, dbapi_connection, None
        )
        if disconnected:  # the server went away: every connection pooled before now too
            raise exc.InvalidatePoolError(f"ping failed: {error}") from error
        # This connection is unusable: the pool replaces it and retries the checkout.
        raise exc.DisconnectionError(f"ping failed: {error}") from error


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def unit_of_work(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One transaction: commit on success, roll back on any error."""
    async with sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


def on_postgresql(session: AsyncSession) -> bool:
    """Whether the session's database is PostgreSQL (where batched array statements apply)."""
    return session.get_bind().dialect.name == "postgresql"
