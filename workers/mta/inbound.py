"""Inbound mail (DSNs, complaints, replies to the bounce domain) kept durably in a Maildir
until the bounce processor reads it; written and fsynced before the listener answers 250."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from workers.mta.maildir import DurableMaildir


class InboundStore:
    """The inbound Maildir; each message carries its envelope as trace headers."""

    def __init__(self, directory: Path, on_stored: Callable[[], None] | None = None) -> None:
        self.maildir = DurableMaildir(directory)
        self.on_stored = on_stored

    async def store(self, mail_from: str, recipients: list[str], data: bytes) -> None:
        """Keep one copy with its envelope as trace headers."""
        trace = f"Return-Path: <{mail_from}>\r\nX-Warta-Rcpt-To: {', '.join(recipients)}\r\n"
        await asyncio.to_thread(self.maildir.add, trace.encode() + data)
        if self.on_stored is not None:
            self.on_stored()
