"""Delivery transports: where a spooled message goes for one set of recipients.

`capture` writes a Maildir a person can read; `smtp` speaks SMTP to a route's next hops
(MX hosts, a relay or a transport-map entry), reusing connections per destination. A
shaped destination's pool has exactly its rule's `max_connections` sessions, each closed
after `messages_per_connection` messages; other next hops get the transport's defaults.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Protocol

from app.mail.result import SendResult
from app.mail.sender import SmtpSender, SubmissionHost
from workers.mta.maildir import DurableMaildir
from workers.mta.routing import Route, RouteSource
from workers.mta.shaping import ConnectionLimits

CAPTURED = "250 2.0.0 captured in the local Maildir"


class Transport(Protocol):
    """Delivers one message to some recipients along a route; one result per recipient."""

    async def deliver(
        self,
        route: Route,
        mail_from: str,
        recipients: list[str],
        data: bytes,
        limits: ConnectionLimits | None = None,
    ) -> dict[str, SendResult]: ...

    async def aclose(self) -> None: ...


class CaptureTransport:
    """Writes each message once per recipient into a Maildir (the development default)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.maildir = DurableMaildir(directory)

    async def deliver(
        self,
        route: Route,
        mail_from: str,
        recipients: list[str],
        data: bytes,
        limits: ConnectionLimits | None = None,
    ) -> dict[str, SendResult]:
        """Store with Return-Path and Delivered-To, as a local delivery agent would.

        Durable before it returns: the spool drops its copy once this reports delivered.
        Concurrent deliveries share one fsync pass (the Maildir's group commit).
        """
        await self.maildir.store(
            [
                f"Return-Path: <{mail_from}>\r\nDelivered-To: {recipient}\r\n".encode() + data
                for recipient in recipients
            ]
        )
        return {recipient: SendResult.from_reply(250, CAPTURED[4:]) for recipient in recipients}

    async def aclose(self) -> None:
        """Let the Maildir finish the commits under way."""
        await self.maildir.close()


class SmtpTransport:
    """SMTP to the route's hops, with a small connection pool per destination."""

    def __init__(
        self,
        *,
        hostname: str,
        connections: int = 5,
        per_connection: int = 100,
        tls: str = "opportunistic",
        verify: bool = False,
        tls_context: ssl.SSLContext | None = None,
        relay_auth: tuple[str, str] | None = None,
    ) -> None:
        self.hostname = hostname
        self.connections = connections
        self.per_connection = per_connection
        self.start_tls: bool | None = {"none": False, "required": True}.get(tls)
        self.verify = verify
        self.tls_context = tls_context
        self.relay_auth = relay_auth
        self._senders: dict[tuple[frozenset[tuple[SubmissionHost, int]], bool], SmtpSender] = {}

    def _sender(self, route: Route, limits: ConnectionLimits | None) -> SmtpSender:
        hosts = [
            (SubmissionHost(address, hop.port), hop.preference)
            for hop in route.hops
            for address in (hop.addresses or [hop.host])
        ]
        auth = self.relay_auth if route.source is RouteSource.RELAY else None
        # Keyed by the host set, not its order: equal-preference MX hosts come shuffled on
        # every lookup, and one destination must keep one pool (its connection limit).
        # The relay's login must not leak to other routes.
        key = (frozenset(hosts), auth is not None)
        sender = self._senders.get(key)
        if sender is None:
            sender = SmtpSender(
                [host for host, _ in hosts],
                preferences=[preference for _, preference in hosts],
                pool_size=limits.max_connections if limits else self.connections,
                messages_per_connection=(
                    limits.messages_per_connection if limits else self.per_connection
                ),
                local_hostname=self.hostname,
                start_tls=self.start_tls,
                validate_certs=self.verify,
                tls_context=self.tls_context,
                username=auth[0] if auth else None,
                password=auth[1] if auth else None,
            )
            self._senders[key] = sender
        return sender

    async def deliver(
        self,
        route: Route,
        mail_from: str,
        recipients: list[str],
        data: bytes,
        limits: ConnectionLimits | None = None,
    ) -> dict[str, SendResult]:
        """One transaction for all recipients of this destination; replies per recipient."""
        return await self._sender(route, limits).send(mail_from, recipients, data)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        for sender in self._senders.values():
            await sender.aclose()
        self._senders.clear()
