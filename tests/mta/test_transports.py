"""The SMTP transport keeps each destination's connection limits from its shaping rule."""

from __future__ import annotations

import asyncio

from tests.helpers.recorders import MESSAGE, Recorder, StartServer
from workers.mta.routing import NextHop, Route, RouteSource
from workers.mta.shaping import ConnectionLimits
from workers.mta.transports import SmtpTransport


def _route(address: str, *, preference: int = 10) -> Route:
    host, _, port = address.rpartition(":")
    return Route("example.com", RouteSource.MX, [NextHop(host, int(port), preference, [host])])


async def _send_many(
    transport: SmtpTransport, route: Route, count: int, limits: ConnectionLimits | None = None
) -> None:
    results = await asyncio.gather(
        *(
            transport.deliver(route, "bounces@b.example", [f"r{i}@example.com"], MESSAGE, limits)
            for i in range(count)
        )
    )
    assert all(result[f"r{i}@example.com"].delivered for i, result in enumerate(results))


async def test_a_shaped_destination_gets_its_rules_sessions(smtp_server: StartServer) -> None:
    remote = Recorder()
    transport = SmtpTransport(hostname="mta.test.example", tls="none")
    try:
        limits = ConnectionLimits(max_connections=2, messages_per_connection=5)
        await _send_many(transport, _route(smtp_server(remote)), 20, limits=limits)
    finally:
        await transport.aclose()
    # Two sessions at a time, each closed after five messages: 20 messages, 4 sessions.
    assert len(remote.envelopes) == 20
    assert remote.sessions == 4


async def test_unshaped_routes_use_the_transport_defaults(smtp_server: StartServer) -> None:
    remote = Recorder()
    transport = SmtpTransport(hostname="mta.test.example", tls="none", connections=3)
    try:
        await _send_many(transport, _route(smtp_server(remote)), 12)
    finally:
        await transport.aclose()
    assert remote.sessions == 3


async def test_one_pool_per_host_set_whatever_the_order(smtp_server: StartServer) -> None:
    first, second = smtp_server(Recorder()), smtp_server(Recorder())
    hops = [_route(first).hops[0], _route(second).hops[0]]
    transport = SmtpTransport(hostname="mta.test.example", tls="none")
    try:
        limits = ConnectionLimits(max_connections=2, messages_per_connection=100)
        for order in (hops, hops[::-1]):
            route = Route("example.com", RouteSource.MX, list(order))
            await _send_many(transport, route, 4, limits=limits)
        assert len(transport._senders) == 1
    finally:
        await transport.aclose()
