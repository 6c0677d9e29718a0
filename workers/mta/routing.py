"""Where to deliver a recipient domain: the transport map, the relay host or the domain's MX hosts.

The order follows Postfix: a transport map entry wins, then `relay` sends everything to the
smart host, and `mx` looks the domain up in DNS (RFC 5321 §5.1, RFC 7505). Lookups are cached
for their DNS TTL (capped), temporary failures briefly, and concurrent lookups of one domain
share a single query.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from app.core.settings import Settings
from app.mail.result import Outcome

SMTP_PORT = 25
DNS_PORT = 53

MAX_TTL = 3600.0
"""Longest time a lookup is cached, whatever TTL the zone asks for."""
TEMPORARY_FAILURE_TTL = 30.0
"""How long a DNS failure (timeout, SERVFAIL) is remembered before asking again."""
NEGATIVE_TTL = 300.0
"""How long a nonexistent domain is remembered when the answer carries no SOA."""
DNS_LIFETIME = 10.0
"""Seconds one lookup may take in total, across retries and name servers."""
DNS_ATTEMPT_TIMEOUT = 2.0
"""Seconds one query to one name server may take."""
CACHE_SIZE = 10_000
"""Domains remembered at most; the oldest entry goes first."""

STATUS_NO_SUCH_DOMAIN = "5.1.2"
"""RFC 3463: bad destination system address (NXDOMAIN, no MX and no address)."""
STATUS_NULL_MX = "5.1.10"
"""RFC 7505 §4.2: the domain publishes a null MX, it accepts no mail."""
STATUS_NO_ADDRESS = "5.4.4"
"""RFC 3463: unable to route, no MX host has an address."""
STATUS_DNS_DEFERRAL = "4.4.3"
"""RFC 3463: directory server failure; try again later."""

Delivery = Literal["capture", "mx", "relay"]


class RoutingConfigError(ValueError):
    """A routing setting (relay host, transport map, DNS servers) cannot be used."""


class RouteSource(StrEnum):
    """What decided a route."""

    TRANSPORT_MAP = "transport_map"
    RELAY = "relay"
    MX = "mx"
    IMPLICIT_MX = "implicit_mx"
    CAPTURE = "capture"


@dataclass(frozen=True, slots=True)
class NextHop:
    """One SMTP server to try; `addresses` empty means connect by host name."""

    host: str
    port: int = SMTP_PORT
    preference: int = 0
    addresses: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RouteFailure:
    """Why a domain cannot be delivered to: permanent (bounce) or temporary (defer)."""

    outcome: Outcome
    status: str
    text: str


@dataclass(frozen=True, slots=True)
class Route:
    """Next hops to try in order, or the failure that stops delivery to the domain."""

    domain: str
    source: RouteSource
    hops: list[NextHop] = field(default_factory=list)
    failure: RouteFailure | None = None

    @property
    def deliverable(self) -> bool:
        """Whether there is something to try (capture routes have no hops and need none)."""
        return self.failure is None


def destination_key(route: Route) -> str:
    """The shaping key: the route's sorted host set, so domains sharing MX hosts share a budget."""
    if route.failure is not None:
        return f"unroutable:{route.domain}"
    if not route.hops:
        return str(route.source)
    labels = {hop.host if hop.port == SMTP_PORT else f"{hop.host}:{hop.port}" for hop in route.hops}
    return ",".join(sorted(labels))


def parse_host_port(value: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port`, `[host]:port` or a bare IPv6 literal, lower-cased."""
    text = value.strip()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise RoutingConfigError(f"cannot read {value!r} as host:port")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    host = host.strip().rstrip(".").lower()
    if not host:
        raise RoutingConfigError(f"{value!r} names no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise RoutingConfigError(f"{value!r} has no valid port")
    return host, int(port_text)


def parse_transport_map(text: str) -> dict[str, tuple[str, int]]:
    """WARTA_MTA_TRANSPORT_MAP: JSON {"domain" or ".parent": "host:port"}."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RoutingConfigError(f"WARTA_MTA_TRANSPORT_MAP is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in raw.items()
    ):
        raise RoutingConfigError('WARTA_MTA_TRANSPORT_MAP must be {"domain": "host:port", …}')
    return {_domain_text(key): parse_host_port(value, SMTP_PORT) for key, value in raw.items()}


def parse_dns_servers(text: str) -> list[tuple[str, int]]:
    """WARTA_MTA_DNS_SERVERS: `ip[:port],…` (IPv6 as `[ip]:port`); empty means the system's."""
    servers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, port = parse_host_port(item, DNS_PORT)
        try:
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise RoutingConfigError(f"DNS server {item!r} is not an IP address") from exc
        servers.append((host, port))
    return servers


def _domain_text(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


def _next_hop(host: str, port: int) -> NextHop:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return NextHop(host, port)
    return NextHop(host, port, addresses=[host])


@dataclass(frozen=True, slots=True)
class _Exchange:
    preference: int
    host: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Lookup:
    """One cached DNS outcome for a domain, turned into a fresh `Route` on every use."""

    source: RouteSource
    ttl: float
    exchanges: tuple[_Exchange, ...] = ()
    failure: RouteFailure | None = None


@dataclass(frozen=True, slots=True)
class _Addresses:
    addresses: tuple[str, ...] = ()
    ttl: float | None = None
    error: str | None = None


def _permanent(status: str, text: str, ttl: float) -> _Lookup:
    return _Lookup(RouteSource.MX, ttl, failure=RouteFailure(Outcome.PERMANENT, status, text))


class Router:
    """Routes recipient domains per the delivery mode, the transport map and DNS."""

    def __init__(
        self,
        *,
        delivery: Delivery = "mx",
        relay_host: tuple[str, int] | None = None,
        transport_map: Mapping[str, tuple[str, int]] | None = None,
        dns_servers: Sequence[tuple[str, int]] = (),
        mx_port: int = SMTP_PORT,
        lifetime: float = DNS_LIFETIME,
        max_ttl: float = MAX_TTL,
        temporary_failure_ttl: float = TEMPORARY_FAILURE_TTL,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if delivery == "relay" and relay_host is None:
            raise RoutingConfigError("WARTA_MTA_DELIVERY=relay needs WARTA_MTA_RELAY_HOST")
        self._delivery = delivery
        self._relay = _next_hop(*relay_host) if relay_host else None
        self._transport_map = {
            _domain_text(key): _next_hop(*hop) for key, hop in (transport_map or {}).items()
        }
        self._dns_servers = list(dns_servers)
        self._mx_port = mx_port
        self._lifetime = lifetime
        self._max_ttl = max_ttl
        self._temporary_failure_ttl = temporary_failure_ttl
        self._clock = clock
        self._rng = rng or random.Random()
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._cache: dict[str, tuple[float, _Lookup]] = {}
        self._inflight: dict[str, asyncio.Task[_Lookup]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> Router:
        """A router for WARTA_MTA_DELIVERY, _RELAY_HOST, _TRANSPORT_MAP and _DNS_SERVERS."""
        relay = settings.mta_relay_host.strip()
        return cls(
            delivery=settings.mta_delivery,
            relay_host=parse_host_port(relay, SMTP_PORT) if relay else None,
            transport_map=parse_transport_map(settings.mta_transport_map),
            dns_servers=parse_dns_servers(settings.mta_dns_servers),
            **options,
        )

    async def route(self, domain: str) -> Route:
        """Where mail for `domain` goes: transport map entry, relay, capture or its MX hosts."""
        name = _domain_text(domain)
        hop = self._transport_hop(name)
        if hop is not None:
            return Route(name, RouteSource.TRANSPORT_MAP, [hop])
        if self._delivery == "relay" and self._relay is not None:
            return Route(name, RouteSource.RELAY, [self._relay])
        if self._delivery == "capture":
            return Route(name, RouteSource.CAPTURE)
        return self._build(name, await self._lookup_cached(name))

    def _transport_hop(self, name: str) -> NextHop | None:
        """Exact domain first, then `.parent` keys from the nearest parent up (Postfix style)."""
        if name in self._transport_map:
            return self._transport_map[name]
        labels = name.split(".")
        for index in range(1, len(labels)):
            hop = self._transport_map.get("." + ".".join(labels[index:]))
            if hop is not None:
                return hop
        return None

    def _build(self, name: str, lookup: _Lookup) -> Route:
        if lookup.failure is not None:
            return Route(name, lookup.source, failure=lookup.failure)
        hops: list[NextHop] = []
        for preference, group in itertools.groupby(lookup.exchanges, lambda ex: ex.preference):
            # RFC 5321 §5.1: hosts of equal preference are tried in random order, spreading load.
            exchanges = list(group)
            self._rng.shuffle(exchanges)
            hops.extend(
                NextHop(ex.host, self._mx_port, preference, list(ex.addresses)) for ex in exchanges
            )
        return Route(name, lookup.source, hops)

    async def _lookup_cached(self, name: str) -> _Lookup:
        cached = self._cache.get(name)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.ensure_future(self._lookup_and_store(name))
            self._inflight[name] = task
        # One caller giving up must not cancel the lookup the others wait for.
        return await asyncio.shield(task)

    async def _lookup_and_store(self, name: str) -> _Lookup:
        try:
            lookup = await self._lookup(name)
        finally:
            self._inflight.pop(name, None)
        ttl = min(lookup.ttl, self._max_ttl)
        if ttl > 0:
            if len(self._cache) >= CACHE_SIZE:
                self._evict()
            self._cache[name] = (self._clock() + ttl, lookup)
        return lookup

    def _evict(self) -> None:
        now = self._clock()
        for key in [key for key, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]
        while len(self._cache) >= CACHE_SIZE:
            del self._cache[next(iter(self._cache))]

    def _dns(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            if self._dns_servers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(ip, port) for ip, port in self._dns_servers
                ]
            else:
                resolver = dns.asyncresolver.Resolver()
            resolver.lifetime = self._lifetime
            resolver.timeout = min(DNS_ATTEMPT_TIMEOUT, self._lifetime)
            self._resolver = resolver
        return self._resolver

    async def _lookup(self, name: str) -> _Lookup:
        """MX records by preference, then the addresses of each host (RFC 5321 §5.1)."""
        if not name:
            return _permanent(STATUS_NO_SUCH_DOMAIN, "empty recipient domain", NEGATIVE_TTL)
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            return _permanent(
                STATUS_NO_SUCH_DOMAIN, f"invalid domain {name!r}: {exc}", NEGATIVE_TTL
            )
        try:
            answer = await self._dns().resolve(qname, dns.rdatatype.MX, search=False)
        except dns.resolver.NXDOMAIN as exc:
            text = f"domain {name} does not exist"
            return _permanent(STATUS_NO_SUCH_DOMAIN, text, self._negative_ttl(exc))
        except dns.resolver.NoAnswer:
            return await self._implicit_mx(name)
        except dns.exception.DNSException as exc:
            return self._deferral(f"MX lookup for {name} failed: {exc}")
        assert answer.rrset is not None  # resolve() raises NoAnswer otherwise
        mx_ttl = float(answer.rrset.ttl)
        records = [(int(rr.preference), rr.exchange) for rr in answer.rrset]
        if len(records) == 1 and records[0] == (0, dns.name.root):
            return _permanent(STATUS_NULL_MX, f"domain {name} accepts no mail (null MX)", mx_ttl)
        hosts: dict[str, int] = {}
        for preference, exchange in sorted(records, key=lambda record: record[0]):
            if exchange != dns.name.root:
                hosts.setdefault(exchange.to_text(omit_final_dot=True).lower(), preference)
        if not hosts:
            return _permanent(STATUS_NULL_MX, f"domain {name} accepts no mail (null MX)", mx_ttl)
        found = await asyncio.gather(*(self._addresses(host) for host in hosts))
        exchanges = tuple(
            _Exchange(preference, host, result.addresses)
            for (host, preference), result in zip(hosts.items(), found, strict=True)
            if result.addresses  # an MX host without addresses is skipped
        )
        errors = [result.error for result in found if result.error]
        if not exchanges:
            if errors:
                return self._deferral(f"no MX host for {name} could be resolved: {errors[0]}")
            text = f"no MX host for {name} has an address record"
            return _permanent(STATUS_NO_ADDRESS, text, min(mx_ttl, NEGATIVE_TTL))
        ttl = min([mx_ttl] + [result.ttl for result in found if result.ttl is not None])
        if errors:  # some hosts may only be missing for now: look again soon
            ttl = min(ttl, self._temporary_failure_ttl)
        return _Lookup(RouteSource.MX, ttl, exchanges)

    async def _implicit_mx(self, name: str) -> _Lookup:
        """No MX records: the domain itself is the only host, if it has an address."""
        result = await self._addresses(name)
        if result.addresses:
            ttl = result.ttl if result.ttl is not None else self._temporary_failure_ttl
            if result.error:
                ttl = min(ttl, self._temporary_failure_ttl)
            exchange = _Exchange(0, name, result.addresses)
            return _Lookup(RouteSource.IMPLICIT_MX, ttl, (exchange,))
        if result.error:
            return self._deferral(f"address lookup for {name} failed: {result.error}")
        text = f"domain {name} has no MX and no address record"
        return _permanent(STATUS_NO_SUCH_DOMAIN, text, NEGATIVE_TTL)

    async def _addresses(self, host: str) -> _Addresses:
        """A then AAAA records: IPv4 first, which the big mailbox providers trust more readily."""
        results = await asyncio.gather(
            self._query_addresses(host, dns.rdatatype.A),
            self._query_addresses(host, dns.rdatatype.AAAA),
        )
        ttls = [result.ttl for result in results if result.ttl is not None]
        return _Addresses(
            addresses=tuple(itertools.chain.from_iterable(result.addresses for result in results)),
            ttl=min(ttls) if ttls else None,
            error=next((result.error for result in results if result.error), None),
        )

    async def _query_addresses(self, host: str, rdtype: dns.rdatatype.RdataType) -> _Addresses:
        try:
            answer = await self._dns().resolve(host, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return _Addresses()
        except dns.exception.DNSException as exc:
            return _Addresses(error=f"{rdtype.name} lookup for {host} failed: {exc}")
        assert answer.rrset is not None
        return _Addresses(tuple(rr.address for rr in answer.rrset), float(answer.rrset.ttl))

    def _deferral(self, text: str) -> _Lookup:
        failure = RouteFailure(Outcome.TEMPORARY, STATUS_DNS_DEFERRAL, text)
        return _Lookup(RouteSource.MX, self._temporary_failure_ttl, failure=failure)

    @staticmethod
    def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> float:
        """RFC 2308: the SOA's TTL or MINIMUM, whichever is lower, from the NXDOMAIN answer."""
        responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses", {})
        for response in responses.values():
            for rrset in response.authority:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return float(min(rrset.ttl, rrset[0].minimum))
        return NEGATIVE_TTL
