"""The SMTP server protocol (RFC 5321) of the MTA's listeners: state machine only.

Behaviour lives in a handler (`handle_CONNECT`, `handle_MAIL`, `handle_RCPT`, `handle_DATA`,
each returning a reply line), as in aiosmtpd, so the listener decides and this module only
speaks SMTP.
It exists for speed: commands and message data are read from one buffer per connection,
and the end of DATA is found with `bytes.find` instead of line by line. PIPELINING,
CHUNKING (BDAT), 8BITMIME, SMTPUTF8, SIZE, STARTTLS and AUTH PLAIN/LOGIN are supported.

What it guarantees, whatever the client sends:
- DATA ends only at `<CRLF>.<CRLF>`; a bare LF or CR anywhere is the handler's to refuse
  (the listener does, closing the SMTP smuggling vector).
- Commands pipelined behind STARTTLS are discarded, never run inside the TLS session.
- Memory per connection is bounded: command lines by `LINE_LIMIT`, message data by the
  size limit (an oversized message is read to its end, discarded, and refused with 552).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

logger = logging.getLogger(__name__)

LINE_LIMIT = 2048
"""Longest command line accepted (RFC 5321 says 512; extensions make it longer in practice)."""
MAX_BAD_COMMANDS = 10
"""Unrecognised or out-of-sequence commands before the client is disconnected."""
MAX_PENDING_DELIVERIES = 8
"""Completed transactions of one connection being stored at once (pipelined clients). Each
holds its message until its reply: at 64, two workers with 20 sender connections each could
keep 2,560 messages in memory (~12 MB of bytes seen in one campaign); at 8 a group commit
still gathers hundreds, and the peak RSS fell by ~10 MB with no loss of throughput."""

GREETING = "220 {hostname} ESMTP Warta"
BYE = "221 2.0.0 Bye"
OK = "250 2.0.0 OK"
SENDER_OK = "250 2.1.0 OK"
RECIPIENT_OK = "250 2.1.5 OK"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_LOCKED = "421 4.7.0 Too many failed authentications; try again later"
AUTH_ENCRYPTION = "538 5.7.11 Encryption required for requested authentication mechanism"
TLS_READY = "220 2.0.0 Ready to start TLS"
TIMEOUT = "421 4.4.2 {hostname} Error: timeout exceeded"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address, try later"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing the connection"
SHUTTING_DOWN = "421 4.3.2 Service shutting down"
LINE_TOO_LONG = "500 5.5.6 Line too long (see RFC 5321 4.5.3.1.6)"
UNKNOWN_COMMAND = "500 5.5.2 Error: command {verb!r} not recognized"
SYNTAX_MAIL = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
SYNTAX_RCPT = "501 5.5.4 Syntax: RCPT TO:<address> [parameters]"
SYNTAX_BDAT = "501 5.5.4 Syntax: BDAT <size> [LAST]"
SYNTAX_EHLO = "501 5.5.4 Syntax: EHLO <hostname>"
SYNTAX_AUTH = "501 5.5.2 Can't decode the authentication data"
AUTH_ABORTED = "501 5.7.0 Auth aborted"
NO_PARAMETERS = "501 5.5.4 Syntax: {verb} takes no parameters"
NEED_HELO = "503 5.5.1 Error: send HELO or EHLO first"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
ALREADY_AUTHENTICATED = "503 5.5.1 Already authenticated"
NOT_AVAILABLE = "502 5.5.1 Command not implemented: {verb}"
BAD_PARAMETER = "555 5.5.4 Unsupported parameter: {parameter}"
TOO_BIG = "552 5.3.4 Message too big"
VERIFY = "252 2.1.5 Cannot verify the user, but will accept the message"


@dataclass
class Session:
    """One client connection: who it is and what it proved."""

    peer: Any
    host_name: str | None = None
    extended_smtp: bool = False
    tls: bool = False
    authenticated: bool = False
    login: str | None = None


@dataclass
class Transaction:
    """One mail transaction (RFC 5321 3.3): the envelope and, at the end, the content."""

    mail_from: str | None = None
    mail_options: list[str] = field(default_factory=list)
    rcpt_tos: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)
    smtp_utf8: bool = False
    content: bytes = b""
    """The message as received, dot-unstuffed (DATA) or concatenated (BDAT)."""


class Handler(Protocol):
    """What a listener implements: `handle_DATA` always; MAIL and RCPT hooks optionally."""

    async def handle_DATA(self, session: Session, transaction: Transaction) -> str:
        """The transaction is complete: store it and say so (or refuse it)."""


Authenticator = Callable[[str, str], bool]
"""(login, password) → whether the credentials may submit."""


class AuthGuard(Protocol):
    """Counts failed AUTH attempts and says when a client or login must wait."""

    async def blocked(self, client: str, login: str | None) -> bool:
        """Whether this address, or this login once given, is locked out for now."""

    async def failed(self, client: str, login: str) -> None:
        """Count one failed attempt."""


@dataclass(frozen=True)
class ServerConfig:
    """Per-listener settings shared by its connections."""

    hostname: str
    max_message_size: int
    idle_timeout: float
    per_client: int
    tls_context: ssl.SSLContext | None = None
    authenticator: Authenticator | None = None
    auth_require_tls: bool = True
    auth_guard: AuthGuard | None = None


def _address(argument: str, prefix: str) -> tuple[str, list[str]] | None:
    """`FROM:<a@b> SIZE=10` → ("a@b", ["SIZE=10"]); `<>` is kept as "<>"; None if malformed."""
    if argument[: len(prefix)].upper() != prefix:
        return None
    rest = argument[len(prefix) :].strip()
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            return None
        address, params = rest[1:end], rest[end + 1 :]
        if params and not params.startswith(" "):
            return None
        return (address or "<>"), params.split()
    # Some clients omit the brackets; accept a bare address without spaces.
    parts = rest.split()
    if not parts:
        return None
    return parts[0], parts[1:]


class SmtpProtocol(asyncio.Protocol):
    """One SMTP connection, driven by a single task that reads from the connection's buffer."""

    def __init__(self, handler: Any, config: ServerConfig, counts: Counter[str]) -> None:
        self.handler = handler
        self.config = config
        self._counts = counts
        self._counted: str | None = None
        self._buffer = bytearray()
        # What the session task awaits for more bytes (a bare future: cheaper than an Event).
        self._more: asyncio.Future[None] | None = None
        self._closed = False
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0  # loop time of the last bytes received (the idle timer's base)
        self._paused = False
        # Replies written since the session last waited, sent as one write (one syscall).
        self._out: list[bytes] = []
        self._send_scheduled = False
        self.session = Session(peer=None)
        self.transaction = Transaction()
        # Replies in command order; a delivery still being stored holds back those after it.
        self._replies: deque[str | asyncio.Task[str]] = deque()
        self._deliveries: set[asyncio.Task[str]] = set()

    # --- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Greet the client, or turn it away if its address holds too many connections."""
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if self._counts[client] >= self.config.per_client:
            self._transport.write(TOO_MANY_CONNECTIONS.encode() + b"\r\n")
            transport.close()
            self._closed = True
            return
        self._counts[client] += 1
        self._counted = client
        self.session.peer = peer
        loop = asyncio.get_running_loop()
        self._last_read = loop.time()
        self._timer = loop.call_at(self._last_read + self.config.idle_timeout, self._idle_check)
        self._task = loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        """Buffer and wake the session task; pause reading while it lags far behind."""
        self._buffer += data
        self._wake()
        self._last_read = asyncio.get_running_loop().time()
        if len(self._buffer) > 4 * LINE_LIMIT + 1_048_576 and not self._paused:
            assert self._transport is not None
            self._transport.pause_reading()
            self._paused = True

    def eof_received(self) -> bool | None:
        """The client half-closed: run what it sent (replies may still reach it), then close."""
        self._closed = True
        self._wake()
        return not self.session.tls  # a TLS transport cannot stay half-open

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the client's slot; the session task sees the close and ends."""
        self._closed = True
        self._wake()
        if self._timer is not None:
            self._timer.cancel()
        if self._counted is not None:
            self._counts[self._counted] -= 1
            if self._counts[self._counted] <= 0:
                del self._counts[self._counted]
            self._counted = None

    # --- reading -------------------------------------------------------------------------

    def _idle_check(self) -> None:
        """Time out after `idle_timeout` without bytes from the client.

        One timer per connection, moved on only when it fires: re-arming it on every read
        (cancel, new handle) cost more than the read.
        """
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        due = self._last_read + self.config.idle_timeout
        if loop.time() < due:
            self._timer = loop.call_at(due, self._idle_check)
            return
        self._timed_out()

    def _timed_out(self) -> None:
        self._push(TIMEOUT.format(hostname=self.config.hostname))
        self._close()

    def _consume(self, size: int) -> bytes:
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        if self._paused and len(self._buffer) < LINE_LIMIT and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunk

    async def _wait(self) -> bool:
        """Wait for more bytes; False once the connection is gone."""
        if self._closed:
            return False
        self._send()
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        self._more = asyncio.get_running_loop().create_future()
        try:
            await self._more
        finally:
            self._more = None
        return True

    def _wake(self) -> None:
        """Resume the session task if it waits for bytes (or for the close)."""
        more = self._more
        if more is not None and not more.done():
            more.set_result(None)

    async def _line(self) -> bytes | None:
        """The next command line without its CRLF; None when the client went away."""
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                if end > LINE_LIMIT:
                    self._consume(end + 2)
                    self._push(LINE_TOO_LONG)
                    continue
                line = self._consume(end + 2)[:-2]
                return line
            if len(self._buffer) > LINE_LIMIT:
                # Drop the overlong line's start; keep a possible CR at the edge.
                self._consume(len(self._buffer) - 1)
                await self._skip_line()
                self._push(LINE_TOO_LONG)
                continue
            if not await self._wait():
                return None

    async def _skip_line(self) -> None:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > 1:
                self._consume(len(self._buffer) - 1)
            if not await self._wait():
                return
        self._consume(end + 2)

    async def _data(self) -> bytes | None:
        """Message data up to `CRLF.CRLF`, dot-unstuffed; None if too big (read and dropped)."""
        limit = self.config.max_message_size
        # The CRLF that ended the DATA line belongs to the terminator when the body is empty.
        while len(self._buffer) < 3 and self._buffer == b".\r\n"[: len(self._buffer)]:
            if not await self._wait():
                return None
        if self._buffer.startswith(b".\r\n"):
            self._consume(3)
            return b""
        searched = 0
        too_big = False
        while True:
            end = self._buffer.find(b"\r\n.\r\n", searched)
            if end >= 0:
                raw = self._consume(end + 5)[: end + 2]
                if too_big or len(raw) > limit + 2:
                    return None
                if raw.startswith(b"."):
                    raw = raw[1:]
                return raw.replace(b"\r\n..", b"\r\n.")
            searched = max(0, len(self._buffer) - 4)
            if len(self._buffer) > limit + 5:
                too_big = True
                keep = self._buffer[-4:]
                self._consume(len(self._buffer))
                self._buffer += keep
                searched = 0
            if not await self._wait():
                return None

    async def _chunk(self, size: int) -> bytes | None:
        while len(self._buffer) < size:
            if not await self._wait():
                return None
        return self._consume(size)

    # --- writing -------------------------------------------------------------------------

    def _push(self, reply: str) -> None:
        """Send a reply, after any earlier one still waiting for its delivery."""
        if self._replies:
            self._replies.append(reply)
        else:
            self._write(reply)

    def _write(self, reply: str) -> None:
        """Queue a reply line; it is sent once the session waits (`_send`)."""
        self._out.append(reply.encode("utf-8", "replace") + b"\r\n")
        if not self._send_scheduled:
            # Replies written outside the session task (a delivery's completion) and any
            # a command leaves before an await other than `_wait` still go out promptly.
            self._send_scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        """Write the queued replies in one go (PIPELINING's batch, RFC 2920 3)."""
        self._send_scheduled = False
        if not self._out:
            return
        out = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)

    def _flush(self, _: object = None) -> None:
        while self._replies:
            head = self._replies[0]
            if isinstance(head, str):
                self._write(head)
            elif head.done():
                self._write(self._outcome(head))
            else:
                return
            self._replies.popleft()

    @staticmethod
    def _outcome(task: asyncio.Task[str]) -> str:
        if task.cancelled():
            return "451 4.3.0 Interrupted, message not queued"
        error = task.exception()
        if error is not None:
            logger.error("SMTP handler failed", exc_info=error)
            return "451 4.3.0 Temporary failure, message not queued"
        return task.result()

    async def _settle(self) -> None:
        """Wait until every transaction of this connection is stored and answered."""
        while self._deliveries:
            await asyncio.wait(set(self._deliveries))
        self._flush()

    def _close(self) -> None:
        self._closed = True
        self._wake()
        self._send()
        if self._transport is not None:
            self._transport.close()

    # --- the session ---------------------------------------------------------------------

    async def _greet(self) -> bool:
        """Greet, unless the handler's `handle_CONNECT` turns the client away (its reply)."""
        hook = getattr(self.handler, "handle_CONNECT", None)
        refusal = await hook(self.session) if hook is not None else None
        if refusal:
            self._push(refusal)
            return False
        self._push(GREETING.format(hostname=self.config.hostname))
        return True

    async def _run(self) -> None:
        errors = 0
        try:
            if not await self._greet():
                self._close()
                return
            while True:
                line = await self._line()
                if line is None:
                    break
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError:
                    text = line.decode("latin-1")
                verb, _, argument = text.partition(" ")
                verb = verb.upper()
                command = _COMMANDS.get(verb)
                if command is None:
                    self._push(UNKNOWN_COMMAND.format(verb=verb[:32]))
                    ok = False
                else:
                    ok = await command(self, argument.strip())
                if ok is False:
                    errors += 1
                    if errors >= MAX_BAD_COMMANDS:
                        self._push(TOO_MANY_ERRORS)
                        break
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("SMTP session failed")
            self._push("421 4.3.0 Internal error, closing the connection")
        # Deliveries are never cancelled: what the spool committed must be scheduled.
        await self._settle()
        self._close()

    def _ehlo_lines(self) -> list[str]:
        lines = [
            self.config.hostname,
            f"SIZE {self.config.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "PIPELINING",
            "CHUNKING",
            "ENHANCEDSTATUSCODES",
        ]
        if self.config.tls_context is not None and not self.session.tls:
            lines.append("STARTTLS")
        if self.config.authenticator is not None and (
            self.session.tls or not self.config.auth_require_tls
        ):
            lines.append("AUTH PLAIN LOGIN")
        lines.append("HELP")
        return lines

    async def smtp_EHLO(self, argument: str) -> bool:
        """Greet back with the extensions."""
        if not argument:
            self._push(SYNTAX_EHLO)
            return False
        self.session.host_name = argument
        self.session.extended_smtp = True
        self.transaction = Transaction()
        lines = self._ehlo_lines()
        for line in lines[:-1]:
            self._push(f"250-{line}")
        self._push(f"250 {lines[-1]}")
        return True

    async def smtp_HELO(self, argument: str) -> bool:
        """Plain SMTP greeting."""
        if not argument:
            self._push("501 5.5.4 Syntax: HELO <hostname>")
            return False
        self.session.host_name = argument
        self.session.extended_smtp = False
        self.transaction = Transaction()
        self._push(f"250 {self.config.hostname}")
        return True

    async def smtp_NOOP(self, argument: str) -> bool:
        """Nothing."""
        self._push(OK)
        return True

    async def smtp_RSET(self, argument: str) -> bool:
        """Abandon the transaction."""
        if argument:
            self._push(NO_PARAMETERS.format(verb="RSET"))
            return False
        self.transaction = Transaction()
        self._push(OK)
        return True

    async def smtp_QUIT(self, argument: str) -> bool:
        """Say goodbye and close."""
        await self._settle()
        self._push(BYE)
        self._buffer.clear()  # nothing pipelined after QUIT runs
        self._close()
        return True

    async def smtp_VRFY(self, argument: str) -> bool:
        """Never confirm addresses (no harvesting)."""
        self._push(VERIFY)
        return True

    async def smtp_HELP(self, argument: str) -> bool:
        """The commands."""
        self._push("214 2.0.0 EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY STARTTLS AUTH")
        return True

    async def smtp_STARTTLS(self, argument: str) -> bool:
        """Switch to TLS; anything the client pipelined after the command is discarded."""
        context = self.config.tls_context
        if context is None or self.session.tls:
            self._push(NOT_AVAILABLE.format(verb="STARTTLS"))
            return False
        if argument:
            self._push(NO_PARAMETERS.format(verb="STARTTLS"))
            return False
        await self._settle()
        self._push(TLS_READY)
        self._send()  # in plaintext, before the handshake
        self._buffer.clear()  # the plaintext-injection defence (CVE-2011-0411 and kin)
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self._transport, self, context, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError):
            self._close()
            return True
        if transport is None:
            self._close()
            return True
        # Bytes already here arrived through TLS (the client's first command may beat us).
        self._transport = transport
        self.session = Session(peer=self.session.peer, tls=True)
        self.transaction = Transaction()
        return True

    async def smtp_AUTH(self, argument: str) -> bool:
        """AUTH PLAIN [initial-response] or AUTH LOGIN."""
        authenticator = self.config.authenticator
        if authenticator is None:
            self._push(UNKNOWN_COMMAND.format(verb="AUTH"))
            return False
        if not self.session.extended_smtp:
            self._push(NEED_HELO)
            return False
        if self.config.auth_require_tls and not self.session.tls:
            self._push(AUTH_ENCRYPTION)
            return False
        if self.session.authenticated:
            self._push(ALREADY_AUTHENTICATED)
            return False
        if self.transaction.mail_from is not None:
            self._push("503 5.5.1 AUTH not permitted during a mail transaction")
            return False
        await self._settle()
        guard = self.config.auth_guard
        client = str(self.session.peer[0]) if isinstance(self.session.peer, tuple) else ""
        if guard is not None and await guard.blocked(client, None):
            return self._locked_out()
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism == "PLAIN":
            credentials = await self._auth_plain(initial.strip())
        elif mechanism == "LOGIN":
            credentials = await self._auth_login(initial.strip())
        else:
            self._push("504 5.5.4 Unrecognized authentication type")
            return False
        if credentials is None:
            return False
        login, password = credentials
        if guard is not None and await guard.blocked(client, login):
            return self._locked_out()
        if authenticator(login, password):
            self.session.authenticated = True
            self.session.login = login
            self._push(AUTH_OK)
            return True
        if guard is not None:
            await guard.failed(client, login)
        self._push(AUTH_INVALID)
        return False

    def _locked_out(self) -> bool:
        self._push(AUTH_LOCKED)
        self._buffer.clear()
        self._close()
        return False

    async def _challenge(self, prompt: bytes) -> str | None:
        self._push("334 " + base64.b64encode(prompt).decode())
        line = await self._line()
        if line is None:
            return None
        if line == b"*":
            self._push(AUTH_ABORTED)
            return None
        return line.decode("ascii", "replace")

    @staticmethod
    def _b64(value: str) -> bytes | None:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None

    async def _auth_plain(self, initial: str) -> tuple[str, str] | None:
        if not initial:
            answer = await self._challenge(b"")
            if answer is None:
                return None
            initial = answer
        decoded = self._b64(initial)
        parts = decoded.split(b"\0") if decoded is not None else []
        if len(parts) != 3:
            self._push(SYNTAX_AUTH)
            return None
        return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")

    async def _auth_login(self, initial: str) -> tuple[str, str] | None:
        login_b64 = initial or await self._challenge(b"Username:")
        if login_b64 is None:
            return None
        login = self._b64(login_b64)
        if login is None:
            self._push(SYNTAX_AUTH)
            return None
        password_b64 = await self._challenge(b"Password:")
        if password_b64 is None:
            return None
        password = self._b64(password_b64)
        if password is None:
            self._push(SYNTAX_AUTH)
            return None
        return login.decode("utf-8", "replace"), password.decode("utf-8", "replace")

    async def smtp_MAIL(self, argument: str) -> bool:
        """Start a transaction: the reverse-path and its parameters."""
        if self.session.host_name is None:
            self._push(NEED_HELO)
            return False
        if self.transaction.mail_from is not None:
            self._push(NESTED_MAIL)
            return False
        parsed = _address(argument, "FROM:")
        if parsed is None:
            self._push(SYNTAX_MAIL)
            return False
        address, params = parsed
        transaction = Transaction()
        for param in params:
            key, _, value = param.partition("=")
            key = key.upper()
            if key == "SIZE" and value.isdigit() and value.isascii():
                if int(value) > self.config.max_message_size:
                    self._push(TOO_BIG)
                    return False
            elif key == "BODY" and value.upper() in ("7BIT", "8BITMIME", "BINARYMIME"):
                pass
            elif key == "SMTPUTF8" and not value:
                transaction.smtp_utf8 = True
            else:
                self._push(BAD_PARAMETER.format(parameter=param[:64]))
                return False
        self.transaction = transaction
        hook = getattr(self.handler, "handle_MAIL", None)
        if hook is None:
            transaction.mail_from = address
            transaction.mail_options.extend(params)
            self._push(SENDER_OK)
            return True
        reply: str = await hook(self.session, transaction, address, params)
        self._push(reply)
        if not reply.startswith("2"):
            self.transaction = Transaction()
            return False
        if transaction.mail_from is None:
            transaction.mail_from = address
        return True

    async def smtp_RCPT(self, argument: str) -> bool:
        """Add a forward-path."""
        if self.transaction.mail_from is None:
            self._push(NEED_MAIL)
            return False
        parsed = _address(argument, "TO:")
        if parsed is None or parsed[0] == "<>":
            self._push(SYNTAX_RCPT)
            return False
        address, params = parsed
        hook = getattr(self.handler, "handle_RCPT", None)
        if hook is None:
            self.transaction.rcpt_tos.append(address)
            self.transaction.rcpt_options.extend(params)
            self._push(RECIPIENT_OK)
            return True
        reply: str = await hook(self.session, self.transaction, address, params)
        self._push(reply)
        return reply.startswith("2")

    async def smtp_DATA(self, argument: str) -> bool:
        """Read the message to `CRLF.CRLF`, then let the handler decide."""
        if argument:
            self._push(NO_PARAMETERS.format(verb="DATA"))
            return False
        if self.transaction.mail_from is None:
            self._push(NEED_MAIL)
            return False
        if not self.transaction.rcpt_tos:
            self._push(NEED_RCPT)
            return False
        self._push(START_DATA)
        content = await self._data()
        if content is None:
            if not self._closed:
                self._push(TOO_BIG)
            self.transaction = Transaction()
            return not self._closed
        return await self._deliver(content)

    async def smtp_BDAT(self, argument: str) -> bool:
        """A chunk of exactly `size` octets; the LAST one completes the transaction."""
        words = argument.split()
        if not words or not words[0].isdigit() or len(words) > 2:
            self._push(SYNTAX_BDAT)
            return False
        last = len(words) == 2
        if last and words[1].upper() != "LAST":
            self._push(SYNTAX_BDAT)
            return False
        size = int(words[0])
        if self.transaction.mail_from is None or not self.transaction.rcpt_tos:
            await self._drain(size)  # the chunk must be read past, whatever the verdict
            self._push(NEED_MAIL if self.transaction.mail_from is None else NEED_RCPT)
            return False
        total = len(self.transaction.content) + size
        if total > self.config.max_message_size:
            await self._drain(size)
            self._push(TOO_BIG)
            self.transaction = Transaction()
            return False
        chunk = await self._chunk(size)
        if chunk is None:
            return False
        self.transaction.content += chunk
        if not last:
            self._push(f"250 2.0.0 {size} octets received")
            return True
        return await self._deliver(self.transaction.content)

    async def _drain(self, size: int) -> None:
        while size > 0:
            if not self._buffer and not await self._wait():
                return
            taken = min(size, len(self._buffer))
            self._consume(taken)
            size -= taken

    async def _deliver(self, content: bytes) -> bool:
        """Store the transaction while later pipelined commands are read; replies stay in order.

        A client that pipelines many messages (Warta's own sender) thus gets them stored
        together, sharing the spool's group commit, instead of one fsync per round trip.
        """
        transaction = self.transaction
        transaction.content = content
        self.transaction = Transaction()
        if len(self._deliveries) >= MAX_PENDING_DELIVERIES:
            await asyncio.wait(set(self._deliveries), return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(
            self.handler.handle_DATA(self.session, transaction)
        )
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        task.add_done_callback(self._flush)
        self._replies.append(task)
        return True


_COMMANDS: dict[str, Callable[[SmtpProtocol, str], Awaitable[bool]]] = {
    name.removeprefix("smtp_"): method
    for name, method in vars(SmtpProtocol).items()
    if name.startswith("smtp_")
}
"""Verb → its method (looked up once, not by name on every command)."""


async def serve(
    handler: Any, address: str, config: ServerConfig, *, reuse_port: bool = False
) -> asyncio.Server:
    """Listen on `host:port`; close the returned server to stop accepting.

    `reuse_port` lets sibling MTA processes share the port (the kernel balances them).
    """
    host, _, port = address.rpartition(":")
    counts: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SmtpProtocol(handler, config, counts),
        host.strip("[]") or "127.0.0.1",
        int(port),
        reuse_port=reuse_port or None,
    )
