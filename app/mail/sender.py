"""The SMTP sender: a pool of persistent aiosmtplib connections to the submission hosts.

Each pooled connection carries many transactions and is replaced after
`messages_per_connection` of them or after any error whose effect on the session is
unknown. A failed transaction is always followed by RSET, and a connection whose RSET
fails is dropped, so no send ever starts on a connection in an unknown state.

When the server offers PIPELINING (RFC 2920), a transaction is the envelope and DATA in one
write and the message in a second (with CHUNKING, RFC 3030, all in one: `BDAT <n> LAST`),
its replies read in order (`app.mail.pipelining`); aiosmtplib keeps the session (connect,
EHLO, STARTTLS, AUTH, RSET, QUIT) and the one-command-at-a-time path for other servers.

Nothing raises to the caller for a mail problem: every recipient gets a `SendResult`.
Connection loss after the message was sent but before the reply arrived is reported as
temporary; the retry is safe because the MTA acknowledges a message it already accepted
(the same Message-ID to the same recipient) without a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import ssl
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from aiosmtplib import (
    SMTP,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPSenderRefused,
)
from aiosmtplib.email import parse_address

from app.core.settings import Settings
from app.mail import pipelining
from app.mail.result import SendResult

DEFAULT_POOL_SIZE = 10
DEFAULT_MESSAGES_PER_CONNECTION = 1000
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 30.0
DEFAULT_DATA_TIMEOUT = 120.0
DEFAULT_HOST_COOLOFF = 30.0
QUIT_TIMEOUT = 5.0
_NOT_IN_BARE_ADDRESS = re.compile(r"[\x00-\x20<>()\x7f]")
_PARSEADDR_SPECIALS = re.compile(r'[",:;\[\]\\]')
"""Characters that can make `parseaddr` read an address as something else."""

STATUS_BAD_ADDRESS = "5.1.3"
"""RFC 3463: bad destination mailbox address syntax."""
STATUS_BAD_SENDER = "5.1.7"
"""RFC 3463: bad sender's mailbox address syntax."""
STATUS_NO_SMTPUTF8 = "5.6.7"
"""RFC 6531: a non-ASCII address, and the server does not offer SMTPUTF8."""


class SenderClosedError(RuntimeError):
    """The sender was closed; nothing more can be sent through it."""


@dataclass(frozen=True, slots=True)
class SubmissionHost:
    """One `host:port` the sender submits to."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_submission_hosts(value: str) -> list[SubmissionHost]:
    """Parse `host:port[,host:port…]` (IPv6 hosts in brackets) as in WARTA_MTA_SUBMISSION."""
    hosts: list[SubmissionHost] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"submission host {item!r} is not host:port")
        hosts.append(SubmissionHost(host.removeprefix("[").removesuffix("]"), int(port)))
    if not hosts:
        raise ValueError("no submission host given")
    return hosts


class Sender(Protocol):
    """Anything that submits a message and says what became of it, per recipient."""

    async def send(
        self, envelope_from: str, recipients: Sequence[str], message: bytes
    ) -> dict[str, SendResult]:
        """Submit `message` to all `recipients` in one transaction."""
        ...

    async def send_one(self, envelope_from: str, recipient: str, message: bytes) -> SendResult:
        """Submit `message` to one recipient."""
        ...


@dataclass(slots=True)
class _Connection:
    """One pool slot: an SMTP session (or none yet) and how many transactions it carried."""

    smtp: SMTP | None = None
    host: SubmissionHost | None = None
    transactions: int = 0


class SmtpSender:
    """Submits mail over a pool of persistent SMTP connections spread across the hosts."""

    def __init__(
        self,
        hosts: Sequence[SubmissionHost] | str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        messages_per_connection: int = DEFAULT_MESSAGES_PER_CONNECTION,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        data_timeout: float = DEFAULT_DATA_TIMEOUT,
        host_cooloff: float = DEFAULT_HOST_COOLOFF,
        local_hostname: str | None = None,
        start_tls: bool | None = False,
        validate_certs: bool = True,
        tls_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        preferences: Sequence[int] | None = None,
    ) -> None:
        self.hosts = parse_submission_hosts(hosts) if isinstance(hosts, str) else list(hosts)
        if not self.hosts:
            raise ValueError("no submission host given")
        if preferences is not None and len(preferences) != len(self.hosts):
            raise ValueError("one preference per host")
        # MX preference (RFC 5321 §5.1): a live host of a better tier is always tried first;
        # load and rotation only spread sessions among hosts of the same tier.
        self.preferences = dict(zip(self.hosts, preferences or [0] * len(self.hosts), strict=True))
        if pool_size < 1 or messages_per_connection < 1:
            raise ValueError("pool_size and messages_per_connection must be at least 1")
        self.pool_size = pool_size
        self.messages_per_connection = messages_per_connection
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout
        self.host_cooloff = host_cooloff
        # The EHLO name; given, so aiosmtplib does not look up the FQDN per connection.
        self.local_hostname = local_hostname
        # None: STARTTLS when the server offers it; True: required; False: never.
        self.start_tls = start_tls
        self.validate_certs = validate_certs
        self.tls_context = tls_context
        self.username = username
        self.password = password
        self._connections = [_Connection() for _ in range(pool_size)]
        self._idle: asyncio.Queue[_Connection] = asyncio.Queue()
        for connection in self._connections:
            self._idle.put_nowait(connection)
        self._down_until: dict[SubmissionHost, float] = {}
        self._rotation = itertools.count()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, *, pool_size: int = DEFAULT_POOL_SIZE) -> SmtpSender:
        """A sender for WARTA_MTA_SUBMISSION that greets with WARTA_MTA_HOSTNAME."""
        return cls(
            settings.mta_submission, pool_size=pool_size, local_hostname=settings.mta_hostname
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
        """Connect every pool slot now; a slot that cannot connect retries at its next send."""
        held = [await self._idle.get() for _ in range(self.pool_size)]
        try:
            await asyncio.gather(*(self._connect(connection) for connection in held))
        finally:
            for connection in held:
                self._idle.put_nowait(connection)

    async def aclose(self) -> None:
        """Wait for the sends in flight, then QUIT every connection."""
        if self._closed:
            return
        self._closed = True
        held = [await self._idle.get() for _ in range(self.pool_size)]
        await asyncio.gather(*(self._quit(connection) for connection in held))

    def cooling_off(self) -> list[SubmissionHost]:
        """Hosts skipped for now because a connection to them failed recently."""
        now = time.monotonic()
        return [host for host in self.hosts if self._down_until.get(host, 0.0) > now]

    async def send_one(self, envelope_from: str, recipient: str, message: bytes) -> SendResult:
        """Submit `message` to one recipient (campaign mail's usual case)."""
        return (await self.send(envelope_from, [recipient], message))[recipient]

    async def send(
        self, envelope_from: str, recipients: Sequence[str], message: bytes
    ) -> dict[str, SendResult]:
        """Submit `message` to all `recipients` in one transaction; a result per recipient."""
        if self._closed:
            raise SenderClosedError("the sender is closed")
        if not recipients:
            return {}
        refused, sendable = refuse_malformed(envelope_from, recipients)
        if not sendable:
            return refused
        results = await self._submit(envelope_from, sendable, message)
        return {recipient: refused.get(recipient) or results[recipient] for recipient in recipients}

    async def _submit(
        self, envelope_from: str, recipients: Sequence[str], message: bytes
    ) -> dict[str, SendResult]:
        """One transaction on a pooled connection, connecting it first if need be."""
        connection = await self._idle.get()
        try:
            failure = await self._connect(connection)
            if failure is not None:
                return dict.fromkeys(recipients, failure)
            return await self._transact(connection, envelope_from, recipients, message)
        except BaseException:
            # Cancelled (or a bug) mid-transaction: the session state is unknown, so it goes.
            self._discard(connection)
            raise
        finally:
            self._idle.put_nowait(connection)

    async def _transact(
        self,
        connection: _Connection,
        envelope_from: str,
        recipients: Sequence[str],
        message: bytes,
    ) -> dict[str, SendResult]:
        smtp = connection.smtp
        assert smtp is not None
        envelope = _envelope_options(smtp, envelope_from, recipients, message)
        if isinstance(envelope, SendResult):
            return dict.fromkeys(recipients, envelope)
        options, encoding = envelope
        connection.transactions += 1
        if smtp.supports_extension("pipelining"):
            exchange = await pipelining.transact(
                smtp,
                pipelining.envelope_commands(envelope_from, recipients, options, encoding),
                len(recipients),
                message,
                chunking=smtp.supports_extension("chunking"),
                command_timeout=self.command_timeout,
                data_timeout=self.data_timeout,
            )
            results = pipelining.results(exchange, recipients, str(connection.host))
            if exchange.broken is not None or exchange.closing:
                self._discard(connection)
            elif not exchange.clean:
                await self._reset(connection)
        else:
            results = await self._transact_lockstep(
                connection, envelope_from, recipients, message, options, encoding
            )
        if connection.smtp is not None and connection.transactions >= self.messages_per_connection:
            await self._quit(connection)
        return results

    async def _transact_lockstep(
        self,
        connection: _Connection,
        envelope_from: str,
        recipients: Sequence[str],
        message: bytes,
        options: list[str],
        encoding: str,
    ) -> dict[str, SendResult]:
        """One command, one reply, through aiosmtplib (a server without PIPELINING)."""
        smtp = connection.smtp
        assert smtp is not None
        host = str(connection.host)
        results: dict[str, SendResult] = {}
        try:
            try:
                await smtp.mail(envelope_from, options=options, encoding=encoding)
            except SMTPSenderRefused as exc:
                await self._reset(connection)
                return dict.fromkeys(recipients, SendResult.from_reply(exc.code, exc.message, host))
            except ValueError as exc:  # nothing was sent: the session is still clean
                return dict.fromkeys(recipients, SendResult.refused(str(exc), STATUS_BAD_SENDER))
            accepted = await self._add_recipients(smtp, recipients, encoding, host, results)
            if not accepted:
                await self._reset(connection)
                return results
            try:
                reply = await smtp.data(message, timeout=self.data_timeout)
            except SMTPDataError as exc:
                outcome = SendResult.from_reply(exc.code, exc.message, host)
                await self._reset(connection)
            else:
                outcome = SendResult.from_reply(reply.code, reply.message, host)
            results.update(dict.fromkeys(accepted, outcome))
        except (SMTPException, OSError) as exc:
            # Disconnects, timeouts, and replies outside a transaction step (EHLO again):
            # the session cannot be trusted, and nothing in it was the recipient's fault.
            self._discard(connection)
            failure = SendResult.connection_failure(f"{host}: {_describe(exc)}", host)
            return {recipient: results.get(recipient, failure) for recipient in recipients}
        return results

    @staticmethod
    async def _add_recipients(
        smtp: SMTP,
        recipients: Sequence[str],
        encoding: str,
        host: str,
        results: dict[str, SendResult],
    ) -> list[str]:
        """RCPT each recipient; record refusals in `results` and return those accepted."""
        accepted: list[str] = []
        for recipient in recipients:
            try:
                await smtp.rcpt(recipient, encoding=encoding)
            except SMTPRecipientRefused as exc:
                results[recipient] = SendResult.from_reply(exc.code, exc.message, host)
            except ValueError as exc:
                results[recipient] = SendResult.refused(str(exc), STATUS_BAD_ADDRESS)
            else:
                accepted.append(recipient)
        return accepted

    async def _connect(self, connection: _Connection) -> SendResult | None:
        """Make sure `connection` has a live session; the failure if no host would take one."""
        if connection.smtp is not None and connection.smtp.is_connected:
            return None
        self._discard(connection)
        failure = SendResult.connection_failure("no submission host configured")
        for host in self._candidates():
            connection.host = host  # counted as load at once, so concurrent opens spread
            smtp = SMTP(
                hostname=host.host,
                port=host.port,
                timeout=self.command_timeout,
                local_hostname=self.local_hostname,
                start_tls=self.start_tls,
                validate_certs=self.validate_certs,
                tls_context=self.tls_context,
                username=self.username,
                password=self.password,
            )
            try:
                await smtp.connect(timeout=self.connect_timeout)
                await _greet(smtp)
            except (SMTPException, OSError) as exc:
                smtp.close()
                self._down_until[host] = time.monotonic() + self.host_cooloff
                failure = SendResult.connection_failure(f"{host}: {_describe(exc)}", str(host))
                continue
            except BaseException:
                smtp.close()
                raise
            self._down_until.pop(host, None)
            connection.smtp, connection.transactions = smtp, 0
            return None
        connection.host = None
        return failure

    def _candidates(self) -> list[SubmissionHost]:
        """Hosts to try, best first: live ones by load, then those cooling off by expiry."""
        now = time.monotonic()
        load = Counter(c.host for c in self._connections if c.host is not None)
        turn = next(self._rotation)
        position = {host: (index - turn) % len(self.hosts) for index, host in enumerate(self.hosts)}
        live = [host for host in self.hosts if self._down_until.get(host, 0.0) <= now]
        down = [host for host in self.hosts if host not in live]
        live.sort(key=lambda host: (self.preferences[host], load[host], position[host]))
        down.sort(key=lambda host: self._down_until[host])
        return live + down

    async def _reset(self, connection: _Connection) -> None:
        """End a failed transaction with RSET, or drop the connection if that fails."""
        smtp = connection.smtp
        if smtp is None or not smtp.is_connected:
            self._discard(connection)
            return
        try:
            await smtp.rset()
        except (SMTPException, OSError):
            self._discard(connection)

    async def _quit(self, connection: _Connection) -> None:
        """Say QUIT politely, then drop the connection whatever the answer."""
        smtp = connection.smtp
        if smtp is not None and smtp.is_connected:
            with contextlib.suppress(SMTPException, OSError):
                await smtp.quit(timeout=QUIT_TIMEOUT)
        self._discard(connection)

    @staticmethod
    def _discard(connection: _Connection) -> None:
        if connection.smtp is not None:
            connection.smtp.close()
        connection.smtp, connection.host, connection.transactions = None, None, 0


async def _greet(smtp: SMTP) -> None:
    """EHLO (HELO if refused) right away, so a host that will not talk counts as down."""
    try:
        await smtp.ehlo()
    except SMTPHeloError:
        await smtp.helo()


def refuse_malformed(
    envelope_from: str, recipients: Sequence[str]
) -> tuple[dict[str, SendResult], list[str]]:
    """Results for addresses that must not reach an SMTP command line, and the rest.

    A malformed sender refuses every recipient; a malformed recipient only itself.
    """
    if envelope_from and not is_bare_address(envelope_from):
        bad_sender = SendResult.refused(f"bad sender {envelope_from!r}", STATUS_BAD_SENDER)
        return dict.fromkeys(recipients, bad_sender), []
    refused = {
        recipient: SendResult.refused(f"bad recipient {recipient!r}", STATUS_BAD_ADDRESS)
        for recipient in recipients
        if not is_bare_address(recipient)
    }
    return refused, [recipient for recipient in recipients if recipient not in refused]


def is_bare_address(address: str) -> bool:
    """Whether `address` is a bare mailbox, not a display form aiosmtplib would rewrite.

    aiosmtplib passes addresses through `email.utils.parseaddr`, which quietly turns
    "x@a.example> junk" into x@a.example and "a:b@x.example" into b@x.example; the sender
    refuses such input instead, so the pipelined path (which writes addresses as given)
    and aiosmtplib's send the same envelope or none.
    """
    if not address or _NOT_IN_BARE_ADDRESS.search(address) is not None:
        return False
    if address.count("@") == 1 and _PARSEADDR_SPECIALS.search(address) is None:
        return True  # a plain local@domain: parseaddr leaves it as it is
    try:
        return parse_address(address) == address
    except ValueError:  # e.g. a stray quote: aiosmtplib would refuse it too
        return False


def _envelope_options(
    smtp: SMTP, envelope_from: str, recipients: Sequence[str], message: bytes
) -> tuple[list[str], str] | SendResult:
    """MAIL options and address encoding for this envelope, or why it cannot be sent here."""
    options: list[str] = []
    if not message.isascii() and smtp.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    if envelope_from.isascii() and all(recipient.isascii() for recipient in recipients):
        return options, "ascii"
    if not smtp.supports_extension("smtputf8"):
        return SendResult.refused(
            "a non-ASCII address, and the submission host does not offer SMTPUTF8",
            STATUS_NO_SMTPUTF8,
        )
    return [*options, "SMTPUTF8"], "utf-8"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SMTPResponseException):
        return f"{exc.code} {exc.message}"
    return str(exc) or type(exc).__name__
