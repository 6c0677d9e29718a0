"""Inbound mail kept durably in a Maildir until a processor reads it; written and fsynced
before the listener answers 250.

Two Maildirs: reports (DSNs, complaints, mailto unsubscribes, anything to the bounce domain)
for the bounce processor, and replies (`reply+<token>@…`, or anything at a separate inbound
domain) for the reply processor. Each message carries its envelope and client as trace lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from app.mail.reply_address import is_reply_address
from workers.mta.maildir import DurableMaildir


class ReplyListener(Protocol):
    """Hears that a reply was stored (the composition root wires the reply processor)."""

    def reply_stored(self) -> None:
        """A message is now in the replies Maildir."""

    async def stop(self) -> None:
        """Stop processing (called after the listeners closed)."""


def trace_lines(mail_from: str, recipients: list[str], client_ip: str, helo: str) -> bytes:
    """Return-Path, X-Warta-Rcpt-To and X-Warta-Client lines, in front of the message."""
    # The HELO name is the client's word: keep it on one line and out of the ; separators.
    helo = "".join(ch for ch in helo if ch.isprintable() and ch != ";")[:255]
    return (
        f"Return-Path: <{mail_from}>\r\n"
        f"X-Warta-Rcpt-To: {', '.join(recipients)}\r\n"
        f"X-Warta-Client: ip={client_ip}; helo={helo}\r\n"
    ).encode()


class InboundStore:
    """The inbound Maildirs; `store` picks one by the envelope recipients."""

    def __init__(
        self,
        directory: Path,
        on_stored: Callable[[], None] | None = None,
        *,
        replies: Path | None = None,
        reply_domain: str = "",
        bounce_domain: str = "",
        on_reply: Callable[[], None] | None = None,
    ) -> None:
        self.maildir = DurableMaildir(directory)
        self.on_stored = on_stored
        self.replies = DurableMaildir(replies) if replies is not None else None
        # A separate inbound domain is all replies; at the bounce domain only reply+ is.
        self.separate_domain = (
            reply_domain.lower() if reply_domain.lower() != bounce_domain.lower() else ""
        )
        self.on_reply = on_reply

    def is_reply(self, recipients: list[str]) -> bool:
        """Whether the message goes to the reply processor (a reply address is among them)."""
        if self.replies is None:
            return False
        return any(
            is_reply_address(address)
            or (self.separate_domain and address.rpartition("@")[2].lower() == self.separate_domain)
            for address in recipients
        )

    async def store(
        self,
        mail_from: str,
        recipients: list[str],
        data: bytes,
        *,
        client_ip: str = "",
        helo: str = "",
    ) -> None:
        """Keep one copy with its envelope and client as trace lines."""
        trace = trace_lines(mail_from, recipients, client_ip, helo)
        if self.replies is not None and self.is_reply(recipients):
            await asyncio.to_thread(self.replies.add, trace + data)
            if self.on_reply is not None:
                self.on_reply()
            return
        await asyncio.to_thread(self.maildir.add, trace + data)
        if self.on_stored is not None:
            self.on_stored()
