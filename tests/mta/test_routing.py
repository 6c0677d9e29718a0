"""Routing against a real DNS server on 127.0.0.1 (dnslib, UDP and TCP) with a fake clock."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, RR, DNSError, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from app.core.settings import Settings
from app.mail.result import Outcome
from tests.helpers.servers import free_port
from workers.mta.routing import (
    MAX_TTL,
    TEMPORARY_FAILURE_TTL,
    NextHop,
    Route,
    Router,
    RouteSource,
    RoutingConfigError,
    destination_key,
    parse_dns_servers,
    parse_transport_map,
)

UDP_LIMIT = 512
"""Classic DNS-over-UDP payload limit without EDNS (RFC 1035 §2.3.4)."""
BIG_MX_RECORDS = 40
"""Enough MX records that the answer exceeds 512 bytes and must be retried over TCP."""

ZONE = "\n".join(
    [
        "$TTL 300",
        "single.test. MX 10 mx.single.test.",
        "mx.single.test. A 192.0.2.1",
        "mx.single.test. AAAA 2001:db8::1",
        # Two hosts of equal preference, a backup, and a host that does not exist.
        "multi.test. MX 10 mx-a.multi.test.",
        "multi.test. MX 10 mx-b.multi.test.",
        "multi.test. MX 20 backup.multi.test.",
        "multi.test. MX 30 ghost.multi.test.",
        "mx-a.multi.test. A 192.0.2.10",
        "mx-a.multi.test. A 192.0.2.11",
        "mx-b.multi.test. AAAA 2001:db8::20",
        "backup.multi.test. A 192.0.2.30",
        # Two hosted domains on the same MX host set, spelled differently.
        "alpha.test. MX 10 mx-a.multi.test.",
        "alpha.test. MX 10 mx-b.multi.test.",
        "beta.test. MX 5 MX-B.Multi.Test.",
        "beta.test. MX 50 mx-a.multi.test.",
        "implicit.test. A 192.0.2.40",
        "implicit.test. AAAA 2001:db8::40",
        "bare.test. TXT nothing-to-deliver-to",
        "nullmx.test. MX 0 .",
        "noaddr.test. MX 10 ghost.noaddr.test.",
        "partial.test. MX 10 silent.test.",
        "partial.test. MX 20 mx.single.test.",
        "stuck.test. MX 10 silent.test.",
        "shortttl.test. 60 MX 10 mx.shortttl.test.",
        "mx.shortttl.test. 120 A 192.0.2.50",
        "longttl.test. 86400 MX 10 mx.longttl.test.",
        "mx.longttl.test. 86400 A 192.0.2.60",
        *(
            f"big.test. MX {n} mx-{n:02d}.a-rather-long-mail-exchanger-name.big.test."
            for n in range(BIG_MX_RECORDS)
        ),
        "mx-07.a-rather-long-mail-exchanger-name.big.test. A 192.0.2.70",
    ]
)
SOA = RR.fromZone("test. 600 SOA ns.test. hostmaster.test. 1 3600 600 86400 120")
SERVFAIL_NAMES = frozenset({"servfail.test."})
SILENT_NAMES = frozenset({"silent.test."})
NEGATIVE_TTL_FROM_SOA = 120
POLL_INTERVAL = 0.02
"""How often the server threads check for shutdown (socketserver's default is 0.5 s)."""


class _NoReply(DNSError):
    """Raised by the resolver to make dnslib's handler send nothing at all."""


class ZoneResolver(BaseResolver):
    """Answers from ZONE, SERVFAILs or stays silent for some names, and logs every query."""

    def __init__(self) -> None:
        self.records = RR.fromZone(ZONE)
        self.names = {str(rr.rname).lower() for rr in self.records}
        self.queries: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        qname, qtype = str(request.q.qname).lower(), QTYPE[request.q.qtype]
        with self.lock:
            self.queries.append((qname, qtype, handler.protocol))
        if qname in SILENT_NAMES:
            raise _NoReply(f"not answering {qname}")
        reply = request.reply()
        if qname in SERVFAIL_NAMES:
            reply.header.rcode = RCODE.SERVFAIL
        elif qname not in self.names:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(SOA[0])
        else:
            for rr in self.records:
                if str(rr.rname).lower() == qname and QTYPE[rr.rtype] == qtype:
                    reply.add_answer(rr)
            if not reply.rr:
                reply.add_auth(SOA[0])
        return reply

    def count(self, qname: str, qtype: str | None = None) -> int:
        with self.lock:
            return sum(
                1 for name, kind, _ in self.queries if name == qname and qtype in {None, kind}
            )


class TruncatingHandler(DNSHandler):
    """Classic 512-byte UDP limit, so large answers come back truncated (TC) over UDP.

    dnslib's own `udplen` truncation drops the question section too, which dnspython
    (rightly) ignores as an unrelated packet; a real server keeps the question.
    """

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        rdata: bytes = self.server.resolver.resolve(request, self).pack()
        if self.protocol == "udp" and len(rdata) > UDP_LIMIT:
            truncated = request.reply()
            truncated.header.tc = 1
            rdata = truncated.pack()
        return rdata


@dataclass
class FakeDns:
    port: int
    resolver: ZoneResolver


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dns_server() -> Iterator[FakeDns]:
    resolver = ZoneResolver()
    logger = DNSLogger("-request,-reply,-truncated,-error", prefix=False, logf=lambda _: None)
    port = free_port()
    servers = [
        DNSServer(
            resolver, address="127.0.0.1", port=port, logger=logger, handler=TruncatingHandler
        ),
        DNSServer(resolver, address="127.0.0.1", port=port, logger=logger, tcp=True),
    ]
    threads = [
        threading.Thread(
            target=server.server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}
        )
        for server in servers
    ]
    for thread in threads:
        thread.start()
    try:
        yield FakeDns(port, resolver)
    finally:
        for server, thread in zip(servers, threads, strict=True):
            server.stop()
            server.server.server_close()  # dnslib's stop() leaves the socket open
            thread.join(timeout=5)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.fixture
def router(dns_server: FakeDns, clock: FakeClock) -> Router:
    settings = make_settings(mta_delivery="mx", mta_dns_servers=f"127.0.0.1:{dns_server.port}")
    return Router.from_settings(settings, clock=clock, lifetime=1.0)


def hosts(route: Route) -> list[str]:
    return [hop.host for hop in route.hops]


# MX resolution


async def test_mx_host_with_ipv4_then_ipv6_addresses(router: Router) -> None:
    route = await router.route("Single.TEST.")

    assert route.failure is None and route.deliverable
    assert route.domain == "single.test"
    assert route.source is RouteSource.MX
    assert route.hops == [NextHop("mx.single.test", 25, 10, ["192.0.2.1", "2001:db8::1"])]


async def test_preference_order_and_a_host_without_addresses_is_skipped(router: Router) -> None:
    route = await router.route("multi.test")

    assert sorted(hosts(route)[:2]) == ["mx-a.multi.test", "mx-b.multi.test"]
    assert hosts(route)[2:] == ["backup.multi.test"]
    assert [hop.preference for hop in route.hops] == [10, 10, 20]
    by_host = {hop.host: hop.addresses for hop in route.hops}
    assert by_host == {
        "mx-a.multi.test": ["192.0.2.10", "192.0.2.11"],
        "mx-b.multi.test": ["2001:db8::20"],
        "backup.multi.test": ["192.0.2.30"],
    }


async def test_equal_preferences_are_shuffled_on_every_resolution(router: Router) -> None:
    orders = {tuple(hosts(await router.route("multi.test"))) for _ in range(200)}

    assert orders == {
        ("mx-a.multi.test", "mx-b.multi.test", "backup.multi.test"),
        ("mx-b.multi.test", "mx-a.multi.test", "backup.multi.test"),
    }


async def test_seeded_rng_makes_the_order_reproducible(dns_server: FakeDns) -> None:
    def seeded() -> Router:
        return Router(dns_servers=[("127.0.0.1", dns_server.port)], rng=random.Random(7))

    first, second = seeded(), seeded()
    for _ in range(10):
        assert hosts(await first.route("multi.test")) == hosts(await second.route("multi.test"))


async def test_implicit_mx_uses_the_domains_own_addresses(router: Router) -> None:
    route = await router.route("implicit.test")

    assert route.source is RouteSource.IMPLICIT_MX
    assert route.hops == [NextHop("implicit.test", 25, 0, ["192.0.2.40", "2001:db8::40"])]


async def test_no_mx_and_no_address_is_permanent(router: Router) -> None:
    route = await router.route("bare.test")

    assert route.failure is not None and not route.deliverable
    assert (route.failure.outcome, route.failure.status) == (Outcome.PERMANENT, "5.1.2")


async def test_null_mx_is_permanent_5_1_10(router: Router, dns_server: FakeDns) -> None:
    route = await router.route("nullmx.test")

    assert route.failure is not None
    assert (route.failure.outcome, route.failure.status) == (Outcome.PERMANENT, "5.1.10")
    assert "null MX" in route.failure.text
    assert route.hops == []
    assert dns_server.resolver.count("nullmx.test.", "A") == 0  # no implicit MX fallback


async def test_nxdomain_is_permanent_5_1_2(router: Router) -> None:
    route = await router.route("missing.test")

    assert route.failure is not None
    assert (route.failure.outcome, route.failure.status) == (Outcome.PERMANENT, "5.1.2")
    assert "missing.test" in route.failure.text


async def test_servfail_is_a_temporary_deferral(router: Router) -> None:
    route = await router.route("servfail.test")

    assert route.failure is not None
    assert (route.failure.outcome, route.failure.status) == (Outcome.TEMPORARY, "4.4.3")


async def test_timeout_is_a_temporary_deferral(dns_server: FakeDns, clock: FakeClock) -> None:
    router = Router(dns_servers=[("127.0.0.1", dns_server.port)], clock=clock, lifetime=0.3)

    route = await router.route("silent.test")

    assert route.failure is not None
    assert (route.failure.outcome, route.failure.status) == (Outcome.TEMPORARY, "4.4.3")
    assert dns_server.resolver.count("silent.test.", "MX") >= 1


async def test_mx_hosts_that_do_not_exist_are_permanent_5_4_4(router: Router) -> None:
    route = await router.route("noaddr.test")

    assert route.failure is not None
    assert (route.failure.outcome, route.failure.status) == (Outcome.PERMANENT, "5.4.4")


async def test_unresolvable_mx_host_falls_back_to_the_next(
    dns_server: FakeDns, clock: FakeClock
) -> None:
    router = Router(dns_servers=[("127.0.0.1", dns_server.port)], clock=clock, lifetime=0.3)

    route = await router.route("partial.test")

    assert hosts(route) == ["mx.single.test"]
    # The silent host may answer next time: the route is only kept briefly.
    clock.now += TEMPORARY_FAILURE_TTL + 1
    await router.route("partial.test")
    assert dns_server.resolver.count("partial.test.", "MX") == 2


async def test_only_mx_host_timing_out_defers(dns_server: FakeDns, clock: FakeClock) -> None:
    router = Router(dns_servers=[("127.0.0.1", dns_server.port)], clock=clock, lifetime=0.3)

    route = await router.route("stuck.test")

    assert route.failure is not None
    assert (route.failure.outcome, route.failure.status) == (Outcome.TEMPORARY, "4.4.3")


async def test_truncated_udp_answer_is_retried_over_tcp(
    router: Router, dns_server: FakeDns
) -> None:
    route = await router.route("big.test")

    assert hosts(route) == ["mx-07.a-rather-long-mail-exchanger-name.big.test"]
    protocols = {proto for name, kind, proto in dns_server.resolver.queries if kind == "MX"}
    assert protocols == {"udp", "tcp"}


async def test_invalid_domain_is_permanent(router: Router) -> None:
    for domain in ("", "a..b", "x" * 64 + ".test"):
        route = await router.route(domain)
        assert route.failure is not None, domain
        assert route.failure.status == "5.1.2"


# Caching


async def test_answers_are_cached_for_their_smallest_ttl(
    router: Router, dns_server: FakeDns, clock: FakeClock
) -> None:
    await router.route("shortttl.test")
    clock.now += 59
    await router.route("shortttl.test")
    assert dns_server.resolver.count("shortttl.test.", "MX") == 1

    clock.now += 2
    route = await router.route("shortttl.test")
    assert dns_server.resolver.count("shortttl.test.", "MX") == 2
    assert hosts(route) == ["mx.shortttl.test"]


async def test_long_ttls_are_capped(router: Router, dns_server: FakeDns, clock: FakeClock) -> None:
    await router.route("longttl.test")
    clock.now += MAX_TTL - 1
    await router.route("longttl.test")
    assert dns_server.resolver.count("longttl.test.", "MX") == 1

    clock.now += 2
    await router.route("longttl.test")
    assert dns_server.resolver.count("longttl.test.", "MX") == 2


async def test_temporary_failures_are_cached_briefly(
    router: Router, dns_server: FakeDns, clock: FakeClock
) -> None:
    await router.route("servfail.test")
    clock.now += TEMPORARY_FAILURE_TTL - 1
    assert (await router.route("servfail.test")).failure is not None
    assert dns_server.resolver.count("servfail.test.", "MX") == 1

    clock.now += 2
    await router.route("servfail.test")
    assert dns_server.resolver.count("servfail.test.", "MX") == 2


async def test_nxdomain_is_cached_for_the_soa_negative_ttl(
    router: Router, dns_server: FakeDns, clock: FakeClock
) -> None:
    await router.route("missing.test")
    clock.now += NEGATIVE_TTL_FROM_SOA - 1
    await router.route("missing.test")
    assert dns_server.resolver.count("missing.test.", "MX") == 1

    clock.now += 2
    await router.route("missing.test")
    assert dns_server.resolver.count("missing.test.", "MX") == 2


async def test_concurrent_lookups_of_one_domain_share_one_query(
    router: Router, dns_server: FakeDns
) -> None:
    routes = await asyncio.gather(*(router.route("single.test") for _ in range(20)))

    assert {tuple(hosts(route)) for route in routes} == {("mx.single.test",)}
    assert dns_server.resolver.count("single.test.", "MX") == 1


# Transport map and relay


async def test_transport_map_overrides_dns(dns_server: FakeDns) -> None:
    transport_map = (
        '{"Example.TEST": "127.0.0.1:2525", ".corp.test": "[::1]:2526", "named.test": "relay.lan"}'
    )
    settings = make_settings(
        mta_delivery="mx",
        mta_transport_map=transport_map,
        mta_dns_servers=f"127.0.0.1:{dns_server.port}",
    )
    router = Router.from_settings(settings)

    exact = await router.route("example.test.")
    assert exact.source is RouteSource.TRANSPORT_MAP
    assert exact.hops == [NextHop("127.0.0.1", 2525, 0, ["127.0.0.1"])]
    assert (await router.route("a.b.corp.test")).hops == [NextHop("::1", 2526, 0, ["::1"])]
    assert (await router.route("named.test")).hops == [NextHop("relay.lan", 25)]
    assert dns_server.resolver.queries == []

    # As in Postfix: "example.test" is not a parent match, ".corp.test" not an exact one.
    assert (await router.route("sub.example.test")).source is RouteSource.MX
    assert (await router.route("corp.test")).source is RouteSource.MX


async def test_relay_sends_everything_to_the_smart_host(dns_server: FakeDns) -> None:
    settings = make_settings(
        mta_delivery="relay",
        mta_relay_host="smarthost.lan:587",
        mta_transport_map='{"local.test": "127.0.0.1:2525"}',
        mta_dns_servers=f"127.0.0.1:{dns_server.port}",
    )
    router = Router.from_settings(settings)

    route = await router.route("gmail.com")
    assert route.source is RouteSource.RELAY
    assert route.hops == [NextHop("smarthost.lan", 587)]
    assert (await router.route("local.test")).source is RouteSource.TRANSPORT_MAP
    assert dns_server.resolver.queries == []


async def test_capture_needs_no_hops() -> None:
    route = await Router.from_settings(make_settings(mta_delivery="capture")).route("gmail.com")

    assert route.source is RouteSource.CAPTURE and route.deliverable and route.hops == []
    assert destination_key(route) == "capture"


def test_relay_without_a_host_is_refused() -> None:
    with pytest.raises(RoutingConfigError, match="RELAY_HOST"):
        Router.from_settings(make_settings(mta_delivery="relay"))


@pytest.mark.parametrize(
    "value", ["not json", '["a"]', '{"a.test": 25}', '{"a.test": "h:0"}', '{"a.test": "h:x"}']
)
def test_bad_transport_maps_are_refused(value: str) -> None:
    with pytest.raises(RoutingConfigError):
        parse_transport_map(value)


def test_dns_servers_are_parsed_with_ports() -> None:
    assert parse_dns_servers(" 127.0.0.1:5353, [::1]:54 ,10.0.0.1,::2 ") == [
        ("127.0.0.1", 5353),
        ("::1", 54),
        ("10.0.0.1", 53),
        ("::2", 53),
    ]
    assert parse_dns_servers("") == []
    with pytest.raises(RoutingConfigError, match="not an IP"):
        parse_dns_servers("dns.example:53")


# Destination keys


async def test_domains_on_the_same_mx_hosts_share_a_destination(router: Router) -> None:
    alpha, beta, multi = [await router.route(d) for d in ("alpha.test", "beta.test", "multi.test")]

    assert destination_key(alpha) == destination_key(beta) == "mx-a.multi.test,mx-b.multi.test"
    assert destination_key(multi) != destination_key(alpha)
    # Shuffling changes the order, never the key.
    assert len({destination_key(await router.route("multi.test")) for _ in range(50)}) == 1


async def test_destination_keys_of_other_routes(router: Router) -> None:
    assert destination_key(await router.route("implicit.test")) == "implicit.test"
    assert destination_key(await router.route("nullmx.test")) == "unroutable:nullmx.test"
    mapped = Router(transport_map={"a.test": ("127.0.0.1", 2525), "b.test": ("mx.lan", 25)})
    assert destination_key(await mapped.route("a.test")) == "127.0.0.1:2525"
    assert destination_key(await mapped.route("b.test")) == "mx.lan"
