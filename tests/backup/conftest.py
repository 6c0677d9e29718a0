"""Instances to back up and restore into."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from app.core.settings import Settings
from tests.helpers.backup_instances import Instance
from tests.helpers.servers import PostgresServer

_restored = itertools.count()


@pytest.fixture
def source(settings: Settings, tmp_path: Path) -> Instance:
    """The instance the test's database fixture belongs to (migrated, empty)."""
    (tmp_path / "source").mkdir()
    return Instance(tmp_path / "source", settings.database_url, settings.secret_key)


@pytest.fixture
def fresh(postgres: PostgresServer | None, tmp_path: Path) -> Instance:
    """A new instance: an empty database (not even migrated) and no var directory."""
    root = tmp_path / "fresh"
    root.mkdir()
    if postgres is None:
        return Instance(root, f"sqlite+aiosqlite:///{root / 'var' / 'warta.db'}")
    return Instance(root, postgres.create_database(f"restored_{next(_restored)}"))
