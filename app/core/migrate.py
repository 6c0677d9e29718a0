"""Running Alembic migrations from code (used by `warta migrate`, `warta dev` and tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import migrations

if TYPE_CHECKING:
    from alembic.config import Config


def alembic_config(database_url: str) -> Config:
    """An Alembic config that finds the migrations wherever the package is installed."""
    from alembic.config import Config  # here: Alembic costs every `warta` process ~8 MB

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (blocking; runs its own event loop)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """Apply migrations from inside a running event loop (in a worker thread)."""
    await asyncio.to_thread(upgrade, database_url, revision)
