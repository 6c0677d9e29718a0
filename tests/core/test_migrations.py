"""The migrations and the models describe the same schema; data survives the upgrades."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.app import create_app
from app.core import api_keys
from app.core.database import create_engine, create_sessionmaker
from app.core.migrate import upgrade_async
from app.core.settings import Settings
from app.models import ApiKey, Base
from tests.helpers.servers import PostgresServer


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "render_as_batch": connection.dialect.name == "sqlite"},
    )
    return list(compare_metadata(context, Base.metadata))


async def test_models_and_migrations_agree(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        differences = await connection.run_sync(_diff)
    assert differences == []


@pytest.fixture
def empty_database_url(postgres: PostgresServer | None, tmp_path: Path) -> str:
    """A database with no tables yet, for migrating step by step."""
    if postgres is None:
        return f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    return postgres.create_database(f"empty_{uuid.uuid4().hex}")


async def test_0007_keeps_old_keys_working_and_forgets_their_secret_characters(
    empty_database_url: str, settings: Settings
) -> None:
    await upgrade_async(empty_database_url, "0006")
    old_token = "wk_" + secrets.token_urlsafe(32)  # the format before 0007
    config = settings.model_copy(update={"database_url": empty_database_url})
    engine = create_engine(config)
    try:
        async with create_sessionmaker(engine)() as session:
            # As 0006-era code stored it: the first 10 characters beside the hash.
            session.add(
                ApiKey(
                    name="old",
                    prefix=old_token[:10],
                    token_hash=hashlib.sha256(old_token.encode()).hexdigest(),
                    scopes=["lists:read"],
                )
            )
            await session.commit()
        await engine.dispose()
        await upgrade_async(empty_database_url, "head")
        async with create_sessionmaker(engine)() as session:
            (stored,) = (await session.scalars(sa.select(ApiKey))).all()
            assert stored.prefix == ""
            assert await api_keys.authenticate(session, old_token) is not None
    finally:
        await engine.dispose()
    app = create_app(config)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        headers = {"Authorization": f"Bearer {old_token}"}
        assert (await client.get("/api/v1/lists", headers=headers)).status_code == 200
