"""Instances to back up and restore into: their directories, database and environment."""

from __future__ import annotations

import itertools
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.core.settings import Settings
from tests.helpers.consoles import WARTA, warta_env
from tests.helpers.servers import PostgresServer

_restored = itertools.count()


@dataclass
class Instance:
    """One Warta installation: a database and a var directory with spool and DKIM keys."""

    root: Path
    database_url: str
    secret_key: str = ""

    @property
    def var(self) -> Path:
        return self.root / "var"

    @property
    def spool(self) -> Path:
        return self.var / "spool"

    @property
    def dkim(self) -> Path:
        return self.var / "dkim"

    def env(self, **extra: str) -> dict[str, str]:
        """The WARTA_* environment of this instance's commands."""
        return warta_env(
            var_dir=str(self.var),
            database_url=self.database_url,
            mta_spool_dir=str(self.spool),
            dkim_dir=str(self.dkim),
            secret_key=self.secret_key,
            archive_dir=str(self.var / "archive"),
            mta_hostname="warta.test.example",
            **extra,
        )

    def settings(self) -> Settings:
        return Settings(
            database_url=self.database_url,
            var_dir=self.var,
            mta_spool_dir=self.spool,
            dkim_dir=self.dkim,
            secret_key=self.secret_key,
            _env_file=None,  # type: ignore[call-arg]
        )

    def warta(self, *args: str, **extra: str) -> subprocess.CompletedProcess[bytes]:
        """Run a `warta` command of this instance to its end; stdout kept as bytes."""
        return subprocess.run(
            [WARTA, *args],
            env=self.env(**extra),
            cwd=self.root,
            capture_output=True,
            timeout=300,
            check=False,
        )


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
