"""A Maildir written durably: temp file, fsync, rename into new/, directory fsync."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path


class DurableMaildir:
    """Messages that must survive a crash once `add` returns (blocking: call in a thread)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        for sub in ("tmp", "new", "cur"):
            (directory / sub).mkdir(parents=True, exist_ok=True)

    def add(self, data: bytes) -> Path:
        """Store one message; returns its path under new/."""
        name = f"{time.time():.6f}.{secrets.token_hex(8)}.warta"
        temp = self.directory / "tmp" / name
        with temp.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        final = self.directory / "new" / name
        os.rename(temp, final)
        directory = os.open(self.directory / "new", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return final
