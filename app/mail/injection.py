"""Batch injection into Warta's MTA: many messages per round trip, over pipelined SMTP.

The general sender (`app.mail.sender.SmtpSender`, aiosmtplib) waits for every reply before
the next command: one round trip per command, and one spool commit per message. This
sender is for the hand-over from Warta's workers to Warta's own MTA (or any server that
offers PIPELINING, RFC 2920, and CHUNKING, RFC 3030): concurrent `send` calls queue up,
and each connection takes up to `batch` of them, writes all their MAIL, RCPT and
`BDAT <n> LAST` commands with the message bytes in one write, then reads the replies in
order. The MTA stores the messages of one batch together, sharing one group commit.

Its contract is `Sender`'s: every recipient gets a `SendResult`, nothing raises for a mail
problem, and a connection lost before a reply arrived is a temporary failure (the retry is
safe: the MTA acknowledges a message it already accepted, the same Message-ID to the same
recipient, without a second copy). A server that offers neither
extension still works, one command at a time, with DATA.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from app.core.settings import Settings
from app.mail.pipelining import SessionBroken, reply_line, reply_text, stuffed_body
from app.mail.result import SendResult
from app.mail.sender import (
    STATUS_NO_SMTPUTF8,
    SenderClosedError,
    SmtpSender,
    SubmissionHost,
    parse_submission_hosts,
    refuse_malformed,
)

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 64
DEFAULT_CONNECTIONS = 4
DEFAULT_MESSAGES_PER_CONNECTION = 100_000
DEFAULT_TIMEOUT = 60.0
RECONNECT_DELAY = 1.0
REPLY_LIMIT = 64 * 1024


class _Disconnected(Exception):
    """The session broke: what was not answered is a temporary failure."""


@dataclass(eq=False)
class _Item:
    envelope_from: str
    recipients: list[str]
    message: bytes
    future: asyncio.Future[dict[str, SendResult]] = field(repr=False)


@dataclass
class _Session:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    host: SubmissionHost
    features: set[str]
    transactions: int = 0

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.features

    @property
    def chunking(self) -> bool:
        return "CHUNKING" in self.features


class PipelinedSender:
    """Submits queued messages in pipelined batches over a few persistent connections."""

    def __init__(
        self,
        hosts: Sequence[SubmissionHost] | str,
        *,
        connections: int = DEFAULT_CONNECTIONS,
        batch: int = DEFAULT_BATCH,
        messages_per_connection: int = DEFAULT_MESSAGES_PER_CONNECTION,
        timeout: float = DEFAULT_TIMEOUT,
        local_hostname: str | None = None,
    ) -> None:
        self.hosts = parse_submission_hosts(hosts) if isinstance(hosts, str) else list(hosts)
        if connections < 1 or batch < 1 or messages_per_connection < 1:
            raise ValueError("connections, batch and messages_per_connection must be at least 1")
        self.connections = connections
        self.batch = batch
        self.messages_per_connection = messages_per_connection
        self.timeout = timeout
        self.local_hostname = local_hostname or "localhost"
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, *, connections: int) -> PipelinedSender:
        """A sender for WARTA_MTA_SUBMISSION that greets with WARTA_MTA_HOSTNAME."""
        return cls(
            settings.mta_submission, connections=connections, local_hostname=settings.mta_hostname
        )

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Start the connection loops (each connects on its first batch)."""
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._serve(), name=f"injection-{n}") for n in range(self.connections)
        ]

    async def aclose(self) -> None:
        """Send what is queued, then QUIT every connection."""
        if self._closed:
            return
        self._closed = True
        for _ in self._workers:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def send_one(self, envelope_from: str, recipient: str, message: bytes) -> SendResult:
        """Submit `message` to one recipient."""
        return (await self.send(envelope_from, [recipient], message))[recipient]

    async def send(
        self, envelope_from: str, recipients: Sequence[str], message: bytes
    ) -> dict[str, SendResult]:
        """Queue `message` for all `recipients` (one transaction); a result per recipient."""
        if self._closed:
            raise SenderClosedError("the sender is closed")
        if not recipients:
            return {}
        refused, sendable = refuse_malformed(envelope_from, recipients)
        if not sendable:
            return refused
        future: asyncio.Future[dict[str, SendResult]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(envelope_from, sendable, message, future))
        results = await future
        return {recipient: refused.get(recipient) or results[recipient] for recipient in recipients}

    # --- one connection ------------------------------------------------------------------

    async def _serve(self) -> None:
        session: _Session | None = None
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            items = [first]
            while len(items) < self.batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                items.append(item)
            # A caller that gave up (its batch lost its lease, the worker stops) no longer
            # waits: its message is not sent, its ledger row is retried with the same
            # Message-ID. Sending it anyway would only load the MTA with work nobody records.
            items = [item for item in items if not item.future.done()]
            if not items:
                continue
            if session is None:
                session, failure = await self._connect()
                if session is None:
                    self._settle(items, failure)
                    await asyncio.sleep(RECONNECT_DELAY)
                    continue
            try:
                await asyncio.wait_for(self._exchange(session, items), self.timeout)
            except (TimeoutError, OSError, _Disconnected, asyncio.IncompleteReadError) as exc:
                text = f"{session.host}: {exc or type(exc).__name__}"
                self._settle(items, SendResult.connection_failure(text, str(session.host)))
                await self._close(session, polite=False)
                session = None
                continue
            except Exception:
                # A bug must cost this round and its connection, never the connection loop:
                # a dead loop left every later send waiting forever.
                logger.exception("injection to %s failed; reconnecting", session.host)
                self._settle(items, SendResult.connection_failure("sender failed"))
                await self._close(session, polite=False)
                session = None
                continue
            except BaseException:
                self._settle(items, SendResult.connection_failure("sender stopped"))
                await self._close(session, polite=False)
                raise
            if session.transactions >= self.messages_per_connection:
                await self._close(session, polite=True)
                session = None
        if session is not None:
            await self._close(session, polite=True)

    @staticmethod
    def _settle(items: Sequence[_Item], failure: SendResult) -> None:
        for item in items:
            _answer(item, dict.fromkeys(item.recipients, failure))

    async def _connect(self) -> tuple[_Session | None, SendResult]:
        failure = SendResult.connection_failure("no submission host configured")
        for host in self.hosts:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host.host, host.port, limit=REPLY_LIMIT), self.timeout
                )
            except (OSError, TimeoutError) as exc:
                failure = SendResult.connection_failure(f"{host}: {exc}", str(host))
                continue
            session = _Session(reader, writer, host, set())
            try:
                await asyncio.wait_for(self._greet(session), self.timeout)
            except (OSError, TimeoutError, _Disconnected, asyncio.IncompleteReadError) as exc:
                failure = SendResult.connection_failure(f"{host}: {exc}", str(host))
                await self._close(session, polite=False)
                continue
            return session, failure
        return None, failure

    async def _greet(self, session: _Session) -> None:
        code, text = await self._reply(session)
        if code != 220:
            raise _Disconnected(f"greeting {code} {text}")
        session.writer.write(b"EHLO %s\r\n" % self.local_hostname.encode())
        code, text = await self._reply(session)
        if code != 250:
            raise _Disconnected(f"EHLO refused: {code} {text}")
        session.features = {line.split(" ", 1)[0].upper() for line in text.splitlines()[1:]}

    @staticmethod
    async def _reply(session: _Session) -> tuple[int, str]:
        lines: list[bytes] = []
        while True:
            line = await session.reader.readline()
            if not line.endswith(b"\n"):
                raise _Disconnected("connection closed" if not line else "malformed reply")
            try:
                code, more, text = reply_line(line)
            except SessionBroken as exc:
                raise _Disconnected(str(exc)) from None
            lines.append(text)
            if not more:
                return code, reply_text(lines)

    def _mail_command(self, session: _Session, item: _Item) -> bytes | SendResult:
        options = ""
        if not item.message.isascii() and "8BITMIME" in session.features:
            options += " BODY=8BITMIME"
        if not (item.envelope_from.isascii() and all(r.isascii() for r in item.recipients)):
            if "SMTPUTF8" not in session.features:
                return SendResult.refused(
                    "a non-ASCII address, and the submission host does not offer SMTPUTF8",
                    STATUS_NO_SMTPUTF8,
                )
            options += " SMTPUTF8"
        return f"MAIL FROM:<{item.envelope_from}>{options}\r\n".encode()

    async def _exchange(self, session: _Session, items: list[_Item]) -> None:
        """One pipelined round: every item's commands written at once, replies read in order."""
        host = str(session.host)
        sendable: list[tuple[_Item, bytes]] = []
        for item in items:
            mail = self._mail_command(session, item)
            if isinstance(mail, SendResult):
                _answer(item, dict.fromkeys(item.recipients, mail))
                continue
            sendable.append((item, mail))
            if session.pipelining and session.chunking:
                session.writer.write(
                    mail
                    + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in item.recipients)
                    + b"BDAT %d LAST\r\n" % len(item.message)
                )
                session.writer.write(item.message)
        await session.writer.drain()
        for item, mail in sendable:
            session.transactions += 1
            if session.pipelining and session.chunking:
                results = await self._read_transaction(session, item, host)
            else:
                results = await self._lockstep(session, item, mail, host)
            _answer(item, results)

    async def _read_transaction(
        self, session: _Session, item: _Item, host: str
    ) -> dict[str, SendResult]:
        mail = await self._reply(session)
        rcpts = [await self._reply(session) for _ in item.recipients]
        final = await self._reply(session)
        return self._results(item, mail, rcpts, final, host)

    async def _lockstep(
        self, session: _Session, item: _Item, mail_command: bytes, host: str
    ) -> dict[str, SendResult]:
        """No PIPELINING or no CHUNKING: one command, one reply, and DATA with dot-stuffing."""
        session.writer.write(mail_command)
        mail = await self._reply(session)
        rcpts: list[tuple[int, str]] = []
        for recipient in item.recipients:
            if mail[0] // 100 != 2:
                rcpts.append(mail)
                continue
            session.writer.write(b"RCPT TO:<%s>\r\n" % recipient.encode())
            rcpts.append(await self._reply(session))
        if mail[0] // 100 != 2 or not any(code // 100 == 2 for code, _ in rcpts):
            session.writer.write(b"RSET\r\n")
            await self._reply(session)
            return self._results(item, mail, rcpts, mail, host)
        session.writer.write(b"DATA\r\n")
        start = await self._reply(session)
        if start[0] != 354:
            return self._results(item, mail, rcpts, start, host)
        session.writer.write(stuffed_body(item.message))
        final = await self._reply(session)
        return self._results(item, mail, rcpts, final, host)

    @staticmethod
    def _results(
        item: _Item,
        mail: tuple[int, str],
        rcpts: list[tuple[int, str]],
        final: tuple[int, str],
        host: str,
    ) -> dict[str, SendResult]:
        if mail[0] // 100 != 2:
            return dict.fromkeys(item.recipients, SendResult.from_reply(*mail, host))
        outcome = SendResult.from_reply(*final, host)
        results: dict[str, SendResult] = {}
        for recipient, (code, text) in zip(item.recipients, rcpts, strict=True):
            results[recipient] = (
                outcome if code // 100 == 2 else SendResult.from_reply(code, text, host)
            )
        return results

    async def _close(self, session: _Session, *, polite: bool) -> None:
        if polite and not session.writer.is_closing():
            with contextlib.suppress(
                OSError, TimeoutError, _Disconnected, asyncio.IncompleteReadError
            ):
                session.writer.write(b"QUIT\r\n")
                await asyncio.wait_for(self._reply(session), 5)
        session.writer.close()
        with contextlib.suppress(OSError):
            await session.writer.wait_closed()


def _answer(item: _Item, results: dict[str, SendResult]) -> None:
    """Give the caller its results, unless it was cancelled meanwhile (nobody waits then)."""
    if not item.future.done():
        item.future.set_result(results)


def submission_sender(settings: Settings, *, connections: int) -> PipelinedSender | SmtpSender:
    """The sender a worker hands its mail to the MTA with (WARTA_SENDER_PIPELINING)."""
    if settings.sender_pipelining:
        return PipelinedSender.from_settings(settings, connections=connections)
    return SmtpSender.from_settings(settings, pool_size=connections)
