"""A scripted DNS server on 127.0.0.1: the public DNS whoever owns a name controls."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

POLL_INTERVAL = 0.02
"""How often the server thread checks for shutdown (socketserver's default is 0.5 s)."""


@dataclass
class ScriptedResolver(BaseResolver):
    """Answers A queries for a scripted name with `script(n)`, n = its A queries so far.

    TTL 0, as a rebinding attacker sets it; AAAA gets no records; other names NXDOMAIN.
    """

    scripts: dict[str, Callable[[int], str]] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        name = str(request.q.qname).rstrip(".").lower()
        reply = request.reply()
        script = self.scripts.get(name)
        if script is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif QTYPE[request.q.qtype] == "A":
            with self.lock:
                asked = self.queries.count(name)
                self.queries.append(name)
            reply.add_answer(RR(name, QTYPE.A, rdata=A(script(asked)), ttl=0))
        return reply


@dataclass(frozen=True)
class ScriptedDns:
    """The server's port and its resolver."""

    port: int
    resolver: ScriptedResolver

    @property
    def servers(self) -> str:
        """The value for WARTA_WEBHOOK_DNS_SERVERS."""
        return f"127.0.0.1:{self.port}"

    def script(self, name: str, answer: Callable[[int], str]) -> None:
        """Answer A queries for `name` with `answer(n)`."""
        self.resolver.scripts[name] = answer

    def count(self, name: str) -> int:
        """A queries received for `name`."""
        with self.resolver.lock:
            return self.resolver.queries.count(name)


@contextmanager
def scripted_dns() -> Iterator[ScriptedDns]:
    """A UDP DNS server on 127.0.0.1 (a free port) for the block."""
    resolver = ScriptedResolver()
    logger = DNSLogger("-request,-reply,-truncated,-error", prefix=False, logf=lambda _: None)
    server = DNSServer(resolver, address="127.0.0.1", port=0, logger=logger)
    thread = threading.Thread(
        target=server.server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}
    )
    thread.start()
    try:
        yield ScriptedDns(server.server.server_address[1], resolver)
    finally:
        server.stop()
        server.server.server_close()  # dnslib's stop() leaves the socket open
        thread.join(timeout=5)
