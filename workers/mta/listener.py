"""The MTA's SMTP listeners: submission (relays for trusted or authenticated clients) and
inbound (accepts only the bounce domain). The protocol is `workers.mta.smtp_server`; the
decisions are here, returned as reply strings, and nothing is acknowledged before the spool
has it on disk.

What happens to a message once the spool has it does not depend on the client's session:
the spool's committer hands it to the delivery agent, and recording its Message-ID for
sibling instances is shielded from cancellation (the protocol never cancels a handler, but
a shutdown may).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Protocol

from workers.mta.abuse import ClientGuard
from workers.mta.dedupe import SharedMessageIds
from workers.mta.message_id_log import envelope_key
from workers.mta.smtp_server import Authenticator, AuthGuard, ServerConfig, Session, Transaction
from workers.mta.smtp_server import serve as serve_smtp
from workers.mta.spool import Envelope as SpooledEnvelope
from workers.mta.spool import QueueId, Spool

logger = logging.getLogger(__name__)

OK_RCPT = "250 2.1.5 OK"
AUTH_REQUIRED = "530 5.7.0 Authentication required: submit from a trusted network or use AUTH"
RELAY_DENIED = "550 5.7.1 Relaying denied: this server accepts mail for {domain} only"
BAD_ADDRESS = "553 5.1.3 Bad recipient address syntax"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
NO_RECIPIENTS = "503 5.5.1 No valid recipients"
BARE_LINE_ENDING = "550 5.6.0 Bare CR or LF in message: line endings must be CRLF (RFC 5321 2.3.8)"
TOO_BIG = "552 5.3.4 Message too big"
SPOOL_FAILED = "451 4.3.0 Temporary failure: message not queued, try again"
QUEUED = "250 2.0.0 OK: queued as {queue_id}"
ALREADY_QUEUED = "250 2.0.0 OK: already queued as {queue_id}"

_ADDRESS = re.compile(
    r"^[^@\s<>\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,63}$|^[^@\s<>\"]+@\[[0-9.:A-Fa-f]+\]$"
)
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]{1,900}>)", re.IGNORECASE | re.MULTILINE)


def null_sender(address: str) -> str:
    """The protocol reports the null reverse-path as "<>"; the spool stores it as ""."""
    return "" if address in ("<>", "") else address


def header_block(data: bytes) -> bytes:
    """The header section of a message (up to the first empty line)."""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def message_id_of(data: bytes) -> str | None:
    """The Message-ID header's value, if the message has one."""
    match = _MESSAGE_ID.search(header_block(data))
    return match.group(1).decode("ascii", "replace") if match else None


@dataclass(frozen=True)
class Networks:
    """A set of CIDR ranges."""

    ranges: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, value: str) -> Networks:
        """`127.0.0.0/8,::1/128` → Networks; a bad entry raises ValueError naming it."""
        return cls(
            tuple(ipaddress.ip_network(part.strip()) for part in value.split(",") if part.strip())
        )

    def __contains__(self, address: object) -> bool:
        return _within(self.ranges, str(address))


@functools.lru_cache(maxsize=4096)
def _within(
    ranges: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], address: str
) -> bool:
    """Whether `address` lies in one of `ranges`; cached, as every session of a client asks
    again for the same few addresses (parsing one cost ~2 % of the MTA's CPU in a campaign)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in ranges)


class SubmissionHandler:
    """Submission: only trusted networks or authenticated sessions may relay.

    Delivery of what it spools is the spool's listeners' business (the delivery agent
    registers with the spool), so no session can strand a message it queued.
    """

    def __init__(
        self,
        spool: Spool,
        trusted: Networks,
        max_recipients: int,
        shared: SharedMessageIds | None = None,
    ) -> None:
        self.spool = spool
        self.trusted = trusted
        self.max_recipients = max_recipients
        # Other instances' acceptances: a resubmission may reach any of them.
        self.shared = shared
        # Spooling outlives a cancelled session; these references keep its task alive.
        self._spooling: set[asyncio.Task[QueueId | None]] = set()

    def _allowed(self, session: Session) -> bool:
        peer = session.peer[0] if isinstance(session.peer, tuple) else session.peer
        return bool(session.authenticated) or peer in self.trusted

    async def handle_MAIL(
        self, session: Session, envelope: Transaction, address: str, options: list[str]
    ) -> str:
        """Refuse unauthenticated clients outside the trusted networks before any recipient."""
        if not self._allowed(session):
            return AUTH_REQUIRED
        if null_sender(address) and not _ADDRESS.match(address):
            return "553 5.1.7 Bad sender address syntax"
        # Kept as "<>": the protocol refuses RCPT (503) while mail_from is unset.
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, session: Session, envelope: Transaction, address: str, options: list[str]
    ) -> str:
        """Check syntax and the recipient limit."""
        if not self._allowed(session):
            return AUTH_REQUIRED
        if not _ADDRESS.match(address):
            return BAD_ADDRESS
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return OK_RCPT

    async def handle_DATA(self, session: Session, envelope: Transaction) -> str:
        """Spool durably, then acknowledge; a message already queued (the same Message-ID
        to the same recipients) is not stored twice."""
        data = envelope.content
        problem = check_content(data, envelope)
        if problem:
            return problem
        spooled = SpooledEnvelope(
            mail_from=null_sender(envelope.mail_from or ""),
            recipients=list(dict.fromkeys(envelope.rcpt_tos)),
            message_id=message_id_of(data),
        )
        key = envelope_key(spooled)
        if key is not None and (earlier := await self._seen(key)):
            return ALREADY_QUEUED.format(queue_id=earlier)
        task = asyncio.create_task(self._spool(spooled, data, key))
        self._spooling.add(task)
        task.add_done_callback(self._spooling.discard)
        # If the client goes away now, this session is cancelled but the task goes on.
        queue_id = await asyncio.shield(task)
        if queue_id is None:
            return SPOOL_FAILED
        return QUEUED.format(queue_id=queue_id)

    async def _spool(
        self, spooled: SpooledEnvelope, data: bytes, key: str | None
    ) -> QueueId | None:
        """Spool durably and share the Message-ID; None if the spool could not take it."""
        try:
            queue_id = await self.spool.accept(spooled, data)
        except Exception:
            logger.exception("spooling failed")
            return None
        if spooled.queue_id == queue_id and key is not None and self.shared is not None:
            await self.shared.remember(key, queue_id)
        return queue_id

    async def _seen(self, key: str) -> str | None:
        earlier = await self.spool.seen(key)
        if earlier is None and self.shared is not None:
            return await self.shared.seen(key, legacy=self.spool.legacy_keys)
        return earlier


def has_bare_line_ending(data: bytes) -> bool:
    """Whether a CR or LF stands outside a CRLF pair (counted in C, not searched in Python)."""
    pairs = data.count(b"\r\n")
    return data.count(b"\n") != pairs or data.count(b"\r") != pairs


def check_content(data: bytes, envelope: Transaction) -> str | None:
    """Refuse what must never be relayed: no recipients, bare CR/LF (smuggling vectors)."""
    if not envelope.rcpt_tos:
        return NO_RECIPIENTS
    if has_bare_line_ending(data):
        return BARE_LINE_ENDING
    return None


class InboundSink(Protocol):
    """Stores one accepted inbound message durably (the MTA's inbound store)."""

    async def __call__(
        self, mail_from: str, recipients: list[str], data: bytes, *, client_ip: str, helo: str
    ) -> None:
        """Keep the message; return only once it is on disk."""


def _client_ip(session: Session) -> str:
    return str(session.peer[0]) if isinstance(session.peer, tuple) else ""


class InboundHandler:
    """Inbound: mail for the bounce (and reply) domain only; never a relay.

    With a `guard`, a client over its connection or message rate, or listed by a DNSBL, is
    refused during the session: a refusal is a reply, never a bounce message (no backscatter).
    """

    def __init__(
        self,
        bounce_domain: str,
        sink: InboundSink,
        max_recipients: int,
        *,
        reply_domain: str = "",
        guard: ClientGuard | None = None,
    ) -> None:
        self.bounce_domain = bounce_domain.lower()
        self.domains = {self.bounce_domain, (reply_domain or bounce_domain).lower()}
        self.sink = sink
        self.max_recipients = max_recipients
        self.guard = guard

    async def handle_CONNECT(self, session: Session) -> str | None:
        """Turn a client away before the greeting (rate, DNSBL); None greets it."""
        if self.guard is None:
            return None
        return await self.guard.on_connect(_client_ip(session))

    async def handle_MAIL(
        self, session: Session, envelope: Transaction, address: str, options: list[str]
    ) -> str:
        """Count the message against the client's rate."""
        if self.guard is not None and (refusal := await self.guard.on_mail(_client_ip(session))):
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, session: Session, envelope: Transaction, address: str, options: list[str]
    ) -> str:
        """Accept only local parts at the bounce (or reply) domain."""
        domain = address.rpartition("@")[2].lower()
        if domain not in self.domains:
            return RELAY_DENIED.format(domain=self.bounce_domain)
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        return OK_RCPT

    async def handle_DATA(self, session: Session, envelope: Transaction) -> str:
        """Hand the message to the inbound store (durable before 250)."""
        data = envelope.content
        problem = check_content(data, envelope)
        if problem:
            return problem
        try:
            await self.sink(
                null_sender(envelope.mail_from or ""),
                list(envelope.rcpt_tos),
                data,
                client_ip=_client_ip(session),
                helo=session.host_name or "",
            )
        except Exception:
            logger.exception("inbound processing failed")
            return SPOOL_FAILED
        return "250 2.0.0 OK"


async def serve(
    handler: SubmissionHandler | InboundHandler,
    address: str,
    *,
    hostname: str,
    max_message_size: int,
    idle_timeout: float,
    per_client: int,
    tls_context: ssl.SSLContext | None = None,
    authenticator: Authenticator | None = None,
    auth_guard: AuthGuard | None = None,
    reuse_port: bool = False,
) -> asyncio.Server:
    """Listen on `host:port` with the handler; close the returned server to stop.

    `reuse_port` lets sibling MTA processes share the port (the kernel balances them).
    AUTH is offered only after STARTTLS.
    """
    config = ServerConfig(
        hostname=hostname,
        max_message_size=max_message_size,
        idle_timeout=idle_timeout,
        per_client=per_client,
        tls_context=tls_context,
        authenticator=authenticator,
        auth_require_tls=True,
        auth_guard=auth_guard,
    )
    return await serve_smtp(handler, address, config, reuse_port=reuse_port)
