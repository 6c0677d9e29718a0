"""Sample spooled messages and envelopes, numbered, for spool tests and their child processes."""

from __future__ import annotations

from workers.mta.spool import Envelope


def message(n: int, size: int = 5_000) -> bytes:
    head = f"Message-ID: <m{n}@warta.test>\r\nSubject: {n}\r\n\r\n".encode()
    return head + bytes([65 + n % 26]) * size + b"\r\n"


def envelope(n: int, message_id: str | None = None) -> Envelope:
    return Envelope(
        mail_from=f"sender{n}@warta.test",
        recipients=["a@example.com", "b@example.net"],
        message_id=message_id,
    )
