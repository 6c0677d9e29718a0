"""A Maildir written durably: temp file, fsync, rename into new/, directory fsync."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from workers.mta.spool import write_atomically


class DurableMaildir:
    """Messages that must survive a crash once `add` returns (blocking: call in a thread)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        for sub in ("tmp", "new", "cur"):
            (directory / sub).mkdir(parents=True, exist_ok=True)

    def add(self, data: bytes) -> Path:
        """Store one message; returns its path under new/."""
        name = f"{time.time():.6f}.{secrets.token_hex(8)}.warta"
        final = self.directory / "new" / name
        write_atomically(final, self.directory / "tmp" / name, data)
        return final
