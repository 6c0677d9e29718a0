"""Sample spooled messages and envelopes, numbered, for spool tests and their child processes."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from workers.mta.message_id_log import dedupe_key
from workers.mta.spool import Envelope

RECIPIENTS = ("a@example.com", "b@example.net")


def message(n: int, size: int = 5_000) -> bytes:
    head = f"Message-ID: <m{n}@warta.test>\r\nSubject: {n}\r\n\r\n".encode()
    return head + bytes([65 + n % 26]) * size + b"\r\n"


def envelope(n: int, message_id: str | None = None) -> Envelope:
    return Envelope(
        mail_from=f"sender{n}@warta.test",
        recipients=list(RECIPIENTS),
        message_id=message_id,
    )


def key(message_id: str) -> str:
    """The `dedupe_key` of `envelope`'s messages with this Message-ID."""
    return dedupe_key(message_id, RECIPIENTS)


def record_fsyncs(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[str], None] | None = None
) -> list[str]:
    """The path of every file or directory fsynced from now on (the real fsync still runs,
    after `before(path)` if given)."""
    paths: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        paths.append(path)
        if before is not None:
            before(path)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return paths
