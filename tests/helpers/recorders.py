"""aiosmtpd servers that record what they are sent, or misbehave on purpose, on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

FROM = "bounces+c1-abc@bounces.example"
TO = "reader@example.com"
# Lines that SMTP transparency must carry intact: leading dots, a lone dot, 8-bit UTF-8.
MESSAGE = (
    b"From: News <news@example.org>\r\n"
    b"To: reader@example.com\r\n"
    b"Subject: Hello\r\n"
    b"\r\n"
    b".starts with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"caf\xc3\xa9\r\n"
)
OK_REPLY = "250 2.0.0 Queued as 1234"


@dataclass
class Recorder:
    """An aiosmtpd handler that accepts everything, records it and counts sessions."""

    envelopes: list[Envelope] = field(default_factory=list)
    sessions: int = 0
    resets: int = 0

    async def handle_EHLO(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RSET(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.resets += 1
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return OK_REPLY


@dataclass
class RejectAtRcpt(Recorder):
    """Answers `reply` to RCPT for `rejected` addresses (all if None), accepts the rest."""

    reply: str = "550 5.1.1 No such user"
    rejected: set[str] | None = None

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if self.rejected is None or address in self.rejected:
            return self.reply
        envelope.rcpt_tos.append(address)
        return "250 OK"


@dataclass
class DropInData(Recorder):
    """Closes the connection instead of answering the first `drops` messages."""

    drops: int = 1

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.drops > 0:
            self.drops -= 1
            assert server.transport is not None
            server.transport.close()
            return "250 never seen"
        return await super().handle_DATA(server, session, envelope)


@dataclass
class SlowData(Recorder):
    """Takes `delay` seconds to answer the first message."""

    delay: float = 1.0

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.delay:
            delay, self.delay = self.delay, 0.0
            await asyncio.sleep(delay)
        return await super().handle_DATA(server, session, envelope)


StartServer = Callable[..., str]
