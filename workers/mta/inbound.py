"""Inbound mail (DSNs, complaints, replies to the bounce domain) kept durably in a Maildir
until the bounce processor reads it; written and fsynced before the listener answers 250."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path


class InboundStore:
    """A Maildir (`tmp/`, `new/`, `cur/`) written with fsync before rename."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        for sub in ("tmp", "new", "cur"):
            (directory / sub).mkdir(parents=True, exist_ok=True)

    async def store(self, mail_from: str, recipients: list[str], data: bytes) -> None:
        """Keep one copy with its envelope as trace headers."""
        trace = f"Return-Path: <{mail_from}>\r\nX-Warta-Rcpt-To: {', '.join(recipients)}\r\n"
        await asyncio.to_thread(self._write, trace.encode() + data)

    def _write(self, data: bytes) -> None:
        name = f"{time.time():.6f}.{secrets.token_hex(8)}.warta"
        temp = self.directory / "tmp" / name
        with temp.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.rename(temp, self.directory / "new" / name)
        directory = os.open(self.directory / "new", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
