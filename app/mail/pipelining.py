"""One SMTP transaction in two writes (RFC 2920 PIPELINING), or one (RFC 3030 CHUNKING).

`app.mail.sender` keeps aiosmtplib for the session (connect, EHLO, STARTTLS, AUTH, RSET,
QUIT); this module is the per-message part when the server offers PIPELINING. It writes
`MAIL`, every `RCPT` and `DATA` at once, reads their replies in order and, only after a
354, writes the dot-stuffed message and its terminator at once. With CHUNKING as well it
writes `MAIL`, the `RCPT`s, `BDAT <size> LAST` and the message in one go: no stuffing, no
second round trip.

aiosmtplib's protocol cannot read pipelined replies (it drops bytes that arrive while no
command waits), so for the span of one transaction a `ReplyReader` stands in for it on
the same transport; the session's protocol is put back afterwards.

The message bytes are those aiosmtplib would send (`canonical_body`, `stuffed_body`), made
with `bytes` operations: a CRLF-only message, the usual case, is never passed to a regex.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from aiosmtplib import SMTP

from app.mail.result import SendResult

Reply = tuple[int, str]
"""An SMTP reply: its code and its text (continuation lines joined by a newline)."""

MAIL_OK = 250
RCPT_OK = (250, 251)
START_INPUT = 354
CLOSING = 421
"""The server is closing the session (RFC 5321 §3.8): whatever follows is not answered."""

MAX_LINE_LENGTH = 8192
MAX_REPLIES_LENGTH = 1 << 20
"""Bytes of replies buffered unread: bounds memory if a server streams garbage."""

_LINE_ENDINGS = re.compile(rb"(?:\r\n|\n|\r(?!\n))")
"""aiosmtplib's line-ending normaliser: bare LF and bare CR become CRLF."""


class SessionBroken(Exception):
    """The session ended or went out of step mid-transaction; it cannot be used again."""


def canonical_body(message: bytes) -> bytes:
    """`message` with CRLF line endings throughout, ending in CRLF (aiosmtplib's DATA form)."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LINE_ENDINGS.sub(b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


def stuffed_body(message: bytes) -> bytes:
    """The DATA payload: canonical, every line starting with a period doubled, then `.CRLF`."""
    body = canonical_body(message).replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    return body + b".\r\n"


def envelope_commands(
    envelope_from: str, recipients: Sequence[str], options: Sequence[str], encoding: str
) -> bytes:
    """`MAIL FROM` and one `RCPT TO` per recipient, as aiosmtplib spells them.

    The addresses are bare (`refuse_malformed` has seen them), so they go in as given.
    """
    mail = b"MAIL FROM:<%s>" % envelope_from.encode(encoding)
    if options:
        mail += b" " + " ".join(options).encode("ascii")
    rcpts = b"".join(b"RCPT TO:<%s>\r\n" % r.encode(encoding) for r in recipients)
    return mail + b"\r\n" + rcpts


def reply_line(line: bytes) -> tuple[int, bool, bytes]:
    """One line of a reply, with its line end: its code, whether more lines follow (a `-`
    after the code) and its text; `SessionBroken` if it is no reply line."""
    if len(line) > MAX_LINE_LENGTH:
        raise SessionBroken("reply line too long")
    if not line[:3].isdigit():
        raise SessionBroken(f"malformed reply {line[:80]!r}")
    return int(line[:3]), line[3:4] == b"-", line[4:].strip(b" \t\r\n")


def reply_text(lines: Sequence[bytes]) -> str:
    """The text of a reply's lines, one per line (bytes that are not UTF-8 as U+FFFD)."""
    return b"\n".join(lines).decode("utf-8", "replace")


class ReplyReader(asyncio.Protocol):
    """Reads pipelined replies off a transport in place of the session's own protocol.

    Flow control and the connection's end are passed on to the session's protocol, so
    aiosmtplib knows the connection is gone if it ends while this reader is in place.
    """

    def __init__(self, session_protocol: asyncio.BaseProtocol) -> None:
        self._session_protocol = session_protocol
        self._buffer = bytearray()
        self._offset = 0
        self._waiter: asyncio.Future[None] | None = None
        self._ended: str | None = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > MAX_REPLIES_LENGTH:
            self._end("replies too long")
        self._wake()

    def eof_received(self) -> bool:
        self._end("connection closed by the server")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"connection lost: {exc}" if exc else "connection lost")
        self._session_protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._session_protocol.pause_writing()

    def resume_writing(self) -> None:
        self._session_protocol.resume_writing()

    @property
    def unread(self) -> int:
        """Bytes received beyond the replies read so far."""
        return len(self._buffer) - self._offset

    async def read(self, seconds: float) -> Reply:
        """The next reply within `seconds`; `SessionBroken` if the session ends first."""
        async with asyncio.timeout(seconds):
            while True:
                reply = self._parse()
                if reply is not None:
                    return reply
                if self._ended is not None:
                    raise SessionBroken(self._ended)
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    def _parse(self) -> Reply | None:
        """One complete reply from the buffer, or None until more arrives."""
        buffer, start = self._buffer, self._offset
        lines: list[bytes] = []
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                if len(buffer) - start > MAX_LINE_LENGTH:
                    raise SessionBroken("reply line too long")
                return None
            code, more, text = reply_line(bytes(buffer[start : end + 1]))
            lines.append(text)
            start = end + 1
            if not more:
                break
        self._offset = start
        if start == len(buffer):
            buffer.clear()
            self._offset = 0
        return code, reply_text(lines)

    def _end(self, reason: str) -> None:
        if self._ended is None:
            self._ended = reason
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


@dataclass
class Exchange:
    """The replies one pipelined transaction got, in order, and whether the session broke."""

    mail: Reply | None = None
    rcpts: list[Reply] = field(default_factory=list)
    data: Reply | None = None
    """DATA's reply (354 to go on); None with BDAT, whose one reply is `final`."""
    final: Reply | None = None
    broken: str | None = None
    """Why the session cannot be used again (dropped, timed out, out of step), if it cannot."""

    @property
    def mail_accepted(self) -> bool:
        """Whether MAIL got its 250."""
        return self.mail is not None and self.mail[0] == MAIL_OK

    def accepted(self) -> list[int]:
        """Indexes of the recipients whose RCPT was accepted."""
        if not self.mail_accepted:
            return []
        return [index for index, (code, _) in enumerate(self.rcpts) if code in RCPT_OK]

    @property
    def clean(self) -> bool:
        """Whether the transaction completed with the server's 250, so no RSET is needed."""
        return self.broken is None and self.final is not None and self.final[0] == MAIL_OK

    @property
    def closing(self) -> bool:
        """Whether the server said 421: it is closing the session."""
        replies = [self.mail, *self.rcpts, self.data, self.final]
        return any(reply is not None and reply[0] == CLOSING for reply in replies)


async def transact(
    smtp: SMTP,
    envelope: bytes,
    recipients: int,
    message: bytes,
    *,
    chunking: bool,
    command_timeout: float,
    data_timeout: float,
) -> Exchange:
    """Send one transaction pipelined on `smtp`'s connection; the replies it got.

    `envelope` is `envelope_commands(...)` for `recipients` recipients. Nothing raises for
    a broken session (`Exchange.broken` says why); cancellation does, and leaves the
    connection in an unknown state for the caller to drop.
    """
    exchange = Exchange()
    transport = cast(asyncio.Transport, smtp.transport)
    session_protocol = smtp.protocol
    if transport is None or session_protocol is None or transport.is_closing():
        exchange.broken = "connection lost"
        return exchange
    reader = ReplyReader(session_protocol)
    transport.set_protocol(reader)
    try:
        if chunking:
            body = canonical_body(message)
            transport.write(b"%sBDAT %d LAST\r\n%s" % (envelope, len(body), body))
        else:
            transport.write(envelope + b"DATA\r\n")
        exchange.mail = await _envelope_reply(reader, command_timeout)
        for _ in range(recipients):
            exchange.rcpts.append(await _envelope_reply(reader, command_timeout))
        if chunking:
            # RFC 3030 §2, §4.2: the server reads the chunk whatever became of the envelope
            # and refuses it if no RCPT was accepted; after a refused BDAT, RSET.
            exchange.final = await reader.read(data_timeout)
        else:
            exchange.data = await reader.read(command_timeout)
            if exchange.data[0] // 100 in (2, 3) and exchange.data[0] != START_INPUT:
                # DATA is answered 354 or refused: a success here is an earlier command's
                # reply, and taking it as the message's would report mail never sent.
                raise SessionBroken(
                    f"out of step: {exchange.data[0]} {exchange.data[1]} where DATA's reply was due"
                )
            if exchange.data[0] == START_INPUT:
                if not exchange.accepted():
                    # RFC 2920 §3.1 says a server must refuse DATA here; one that did not
                    # wants a message for no one. Nothing is sent: the session goes.
                    raise SessionBroken("354 to DATA without an accepted recipient")
                if transport.is_closing():  # uvloop raises on a write to a closed transport
                    raise SessionBroken("connection lost")
                transport.write(stuffed_body(message))
                exchange.final = await reader.read(data_timeout)
        if reader.unread:
            raise SessionBroken("data after the last reply")
    except SessionBroken as exc:
        exchange.broken = str(exc)
    except TimeoutError:
        exchange.broken = "timed out waiting for the server's reply"
    finally:
        if not transport.is_closing():
            transport.set_protocol(session_protocol)
    return exchange


async def _envelope_reply(reader: ReplyReader, seconds: float) -> Reply:
    """MAIL's or a RCPT's reply; a 3xx there means the replies are out of step."""
    reply = await reader.read(seconds)
    if reply[0] // 100 == 3:
        raise SessionBroken(
            f"out of step: {reply[0]} {reply[1]} where MAIL or RCPT's reply was due"
        )
    return reply


def results(exchange: Exchange, recipients: Sequence[str], host: str) -> dict[str, SendResult]:
    """A result per recipient from the replies a pipelined transaction got.

    MAIL refused: its reply for everyone. A RCPT refused: its own reply. Accepted: the
    final reply, or DATA's refusal. No reply because the session broke: temporary.
    """
    failure = SendResult.connection_failure(f"{host}: {exchange.broken}", host)
    if exchange.mail is None:
        return dict.fromkeys(recipients, failure)
    if not exchange.mail_accepted:
        return dict.fromkeys(recipients, SendResult.from_reply(*exchange.mail, host))
    decided = exchange.final
    if decided is None and exchange.data is not None and exchange.data[0] // 100 in (4, 5):
        decided = exchange.data  # DATA refused: that is the accepted recipients' answer
    outcome = failure if decided is None else SendResult.from_reply(*decided, host)
    results = dict.fromkeys(recipients, failure)
    for recipient, (code, text) in zip(recipients, exchange.rcpts, strict=False):
        accepted = code in RCPT_OK
        results[recipient] = outcome if accepted else SendResult.from_reply(code, text, host)
    return results
