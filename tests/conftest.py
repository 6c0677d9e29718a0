"""Fixtures: a migrated database per test (SQLite file or PostgreSQL), the app, a client.

`WARTA_TEST_DB=postgresql` runs the suite against a real PostgreSQL started for the session;
anything else runs it on SQLite. Each test gets its own database cloned from one migrated
template, so tests are isolated and the migrations are what every test runs on.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.api.app import create_app
from app.core.database import create_engine, create_sessionmaker
from app.core.migrate import upgrade
from app.core.settings import Settings
from tests.helpers.api import ADMIN_TOKEN
from tests.helpers.daemons import clamd_server, silent_daemon, spamd_server  # noqa: F401
from tests.helpers.recorders import StartServer
from tests.helpers.servers import PostgresServer, RedisServer, free_port
from tests.helpers.sinks import SinkHandler, smtp_sink
from workers.worker import run_worker

BACKEND = os.environ.get("WARTA_TEST_DB", "sqlite")
_counter = itertools.count()


def pytest_report_header() -> str:
    return f"warta database backend: {BACKEND}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | None]:
    if BACKEND != "postgresql":
        yield None
        return
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def template_database(
    postgres: PostgresServer | None, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A migrated database every test clones: a file on SQLite, a template DB on PostgreSQL."""
    if postgres is None:
        path = tmp_path_factory.mktemp("template") / "template.db"
        upgrade(f"sqlite+aiosqlite:///{path}")
        return str(path)
    url = postgres.create_database("warta_template")
    upgrade(url)
    return "warta_template"


@pytest.fixture
def database_url(postgres: PostgresServer | None, template_database: str, tmp_path: Path) -> str:
    if postgres is None:
        path = tmp_path / "warta.db"
        shutil.copyfile(template_database, path)
        return f"sqlite+aiosqlite:///{path}"
    return postgres.create_database(f"test_{next(_counter)}", template=template_database)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A real Redis, emptied before each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        var_dir=tmp_path / "var",
        secret_key="test-secret-key-" + "x" * 40,
        bootstrap_api_key=ADMIN_TOKEN,
        mta_hostname="warta.test.example",
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


@pytest.fixture
async def session(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session:
        yield session


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process, with the admin key, lifespan running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as client:
            yield client


# The engine fixtures: an SMTP sink as the submission host, the API, a worker.
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


@pytest.fixture
def smtp_server() -> Iterator[StartServer]:
    """Start aiosmtpd servers on 127.0.0.1; returns their `host:port`; stops them after."""
    controllers: list[Controller] = []

    def start(handler: Any, **options: Any) -> str:
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return f"127.0.0.1:{port}"

    yield start
    for controller in controllers:
        controller.stop()
