"""`warta worker` as real processes, so a test can kill one with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.core.settings import Settings

BIN = Path(sys.executable).parent


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a worker process use the test's settings."""
    return {
        **os.environ,
        "WARTA_DATABASE_URL": settings.database_url,
        "WARTA_REDIS_URL": settings.redis_url,
        "WARTA_MTA_SUBMISSION": settings.mta_submission,
        "WARTA_SECRET_KEY": settings.secret_key,
        "WARTA_VAR_DIR": str(settings.var_dir),
        "WARTA_MTA_HOSTNAME": settings.mta_hostname,
        "WARTA_SEND_RATE": str(settings.send_rate),
        **extra,
    }


@contextmanager
def worker_process(
    settings: Settings, log: Path, **extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A `warta worker`; stopped with SIGTERM (or already killed) when the block ends."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [BIN / "warta", "worker"], env=worker_env(settings, **extra), stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
