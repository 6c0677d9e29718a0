"""A DNS server on 127.0.0.1 serving zone-file records the test writes (dnslib)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

POLL_INTERVAL = 0.02


@dataclass
class ZoneResolver(BaseResolver):
    """Answers from records in zone-file syntax; a name without records is NXDOMAIN."""

    records: list[RR] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = request.q.qname
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries.append(f"{str(name).rstrip('.').lower()} {qtype}")
            found = [rr for rr in self.records if rr.rname == name]
        for rr in found:
            if QTYPE[rr.rtype] == qtype:
                reply.add_answer(rr)
        if not found:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@dataclass(frozen=True)
class ZoneDns:
    """The server's port and its records."""

    port: int
    resolver: ZoneResolver

    @property
    def servers(self) -> str:
        """The value for WARTA_*_DNS_SERVERS."""
        return f"127.0.0.1:{self.port}"

    def add(self, zone: str) -> None:
        """Serve these records too (zone-file lines with absolute names)."""
        with self.resolver.lock:
            self.resolver.records.extend(RR.fromZone(zone))

    def asked(self, name: str) -> int:
        """Queries received for `name` (any type)."""
        with self.resolver.lock:
            return sum(1 for q in self.resolver.queries if q.split()[0] == name.lower())


@contextmanager
def zone_dns() -> Iterator[ZoneDns]:
    """A UDP DNS server on 127.0.0.1 (a free port) for the block."""
    resolver = ZoneResolver()
    logger = DNSLogger("-request,-reply,-truncated,-error", prefix=False, logf=lambda _: None)
    server = DNSServer(resolver, address="127.0.0.1", port=0, logger=logger)
    thread = threading.Thread(
        target=server.server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}
    )
    thread.start()
    try:
        yield ZoneDns(server.server.server_address[1], resolver)
    finally:
        server.stop()
        server.server.server_close()
        thread.join(timeout=5)
