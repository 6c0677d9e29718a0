"""A capture-only SMTP listener for development: accepted mail lands in a readable Maildir.

It stands on the submission address until the embedded MTA (its own issue) replaces it, so
`warta dev` and `warta demo` work on a fresh machine with nothing else installed. It relays
nothing: every message is written, with its envelope, to `var/maildir`.
"""

from __future__ import annotations

import mailbox
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from app.settings import Settings

OK = "250 2.0.0 OK: captured"


class CaptureHandler:
    """Writes each message to the Maildir with Return-Path and Delivered-To prepended."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = mailbox.Maildir(maildir, create=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message once per recipient, as a local delivery would."""
        content = envelope.original_content or b""
        for recipient in envelope.rcpt_tos:
            trace = f"Return-Path: <{envelope.mail_from}>\r\nDelivered-To: {recipient}\r\n"
            self.maildir.add(trace.encode() + content)
        return OK


class CaptureListener:
    """An aiosmtpd controller running the capture handler in its own thread."""

    def __init__(self, host: str, port: int, maildir: Path) -> None:
        self.maildir = maildir
        self.controller = Controller(CaptureHandler(maildir), hostname=host, port=port)

    @classmethod
    def from_settings(cls, settings: Settings) -> CaptureListener:
        """Listen on the first WARTA_MTA_SUBMISSION address, write to var/maildir."""
        host, _, port = settings.mta_submission.split(",")[0].strip().rpartition(":")
        return cls(host or "127.0.0.1", int(port), settings.ensure_var_dir() / "maildir")

    def start(self) -> None:
        """Start listening."""
        self.controller.start()

    def stop(self) -> None:
        """Stop listening."""
        self.controller.stop()
