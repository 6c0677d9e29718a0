"""Real SMTP servers on 127.0.0.1 standing in for the MTA or a remote MX."""

from __future__ import annotations

import email
import email.policy
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.helpers.servers import free_port


@dataclass(frozen=True)
class Received:
    """One accepted transaction."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    received_at: float = 0.0

    @property
    def message(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


@dataclass
class SinkHandler:
    """Records what it accepts. With `dedupe`, a Message-ID seen before is acknowledged and
    not stored again — what Warta's MTA promises for resubmissions after a crash."""

    dedupe: bool = False
    # address -> replies to give at RCPT, one per attempt (then accept): e.g. ["451 4.7.1 later"]
    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    duplicates: int = 0
    _seen: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self._lock:
            replies = self.rcpt_replies.get(address)
            if replies:
                return replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        item = Received(
            str(envelope.mail_from),
            tuple(envelope.rcpt_tos),
            envelope.original_content or b"",
            time.monotonic(),
        )
        with self._lock:
            if self.dedupe:
                message_id = item.message_id
                if message_id in self._seen:
                    self.duplicates += 1
                    return "250 2.0.0 already accepted"
                self._seen.add(message_id)
            self.received.append(item)
        return "250 2.0.0 OK"

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)


@contextmanager
def smtp_sink(dedupe: bool = False) -> Iterator[tuple[str, SinkHandler]]:
    """An aiosmtpd sink on a free port; yields ("127.0.0.1:port", handler)."""
    handler = SinkHandler(dedupe=dedupe)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield f"127.0.0.1:{port}", handler
    finally:
        controller.stop()
