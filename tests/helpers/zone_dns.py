"""An authoritative DNS server on 127.0.0.1 answering from zone-file text (dnslib)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from dnslib import RCODE, DNSRecord
from dnslib.server import DNSHandler, DNSLogger, DNSServer
from dnslib.zoneresolver import ZoneResolver

POLL_INTERVAL = 0.02


class _Zone(ZoneResolver):
    """dnslib's zone resolver, answering NXDOMAIN for names the zone does not hold at all."""

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply: DNSRecord = super().resolve(request, handler)
        if not reply.rr and not any(name == request.q.qname for name, _, _ in self.zone):
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@contextmanager
def zone_dns(zone: str) -> Iterator[str]:
    """Serve `zone` (RFC 1035 text) over UDP on a free loopback port; yields `127.0.0.1:port`."""
    logger = DNSLogger("-request,-reply,-truncated,-error", prefix=False, logf=lambda _: None)
    server = DNSServer(_Zone(zone), address="127.0.0.1", port=0, logger=logger)
    thread = threading.Thread(
        target=server.server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}
    )
    thread.start()
    try:
        yield f"127.0.0.1:{server.server.server_address[1]}"
    finally:
        server.stop()
        server.server.server_close()  # dnslib's stop() leaves the socket open
        thread.join(timeout=5)
