"""Warta installations for backup tests: their directories, environment and processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.core.settings import Settings
from tests.helpers.consoles import WARTA, warta_env


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

    def warta(
        self, *args: str, stdin: bytes = b"", **extra: str
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a `warta` command of this instance to its end; stdout kept as bytes."""
        return subprocess.run(
            [WARTA, *args],
            env=self.env(**extra),
            cwd=self.root,
            input=stdin,
            capture_output=True,
            timeout=300,
            check=False,
        )

    @contextlib.contextmanager
    def process(self, name: str, *args: str, **extra: str) -> Iterator[subprocess.Popen[bytes]]:
        """`warta <args>` in its own process group, SIGKILLed with its children at the end."""
        with (self.root / f"{name}.log").open("ab") as log:
            started = subprocess.Popen(
                [WARTA, *args],
                env=self.env(**extra),
                cwd=self.root,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            yield started
        finally:
            kill_group(started)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and every process of its group (an MTA's children too)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
