"""Outbound STARTTLS against a remote MX with a certificate from a test CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from app.mail.result import Outcome
from tests.helpers.api import eventually
from tests.helpers.servers import connections_held, free_port, wait_for_hangups
from tests.helpers.tls import Pki, make_pki
from workers.mta.routing import NextHop, Route, RouteSource
from workers.mta.transports import SmtpTransport

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: tls\r\n\r\nsecret\r\n"


class Recorder:
    def __init__(self) -> None:
        self.sessions: list[bool] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.sessions.append(session.ssl is not None)
        return "250 2.0.0 OK"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def tls_mx(pki: Pki) -> Iterator[tuple[int, Recorder]]:
    recorder = Recorder()
    port = free_port()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=port,
        tls_context=pki.server_context(),
        require_starttls=True,
    )
    controller.start()
    yield port, recorder
    try:
        assert wait_for_hangups(port), "the MX still holds a connection its client left"
    finally:
        controller.stop()


async def _closed_by_client(port: int) -> None:
    """Let the loop finish closing the client's connections to `port` (within 5 s): closing
    a TLS session waits for the server's close_notify, and a loop ended before it leaves the
    socket open (an unclosed transport, reported in whatever test collects it)."""

    async def closed() -> bool:
        return connections_held(port, by_clients=True) == 0

    await eventually(closed, within=5, what="the client closing its connection")


def _route(port: int) -> Route:
    return Route("example.com", RouteSource.MX, [NextHop("127.0.0.1", port, 10, ["127.0.0.1"])])


async def test_opportunistic_starttls_with_a_verified_certificate(
    tls_mx: tuple[int, Recorder], pki: Pki
) -> None:
    port, recorder = tls_mx
    transport = SmtpTransport(
        hostname="mta.example.com",
        tls="opportunistic",
        verify=True,
        tls_context=pki.client_context(),
    )
    try:
        results = await transport.deliver(_route(port), "a@example.com", ["b@example.com"], MESSAGE)
    finally:
        await transport.aclose()
        await _closed_by_client(port)
    assert results["b@example.com"].outcome is Outcome.DELIVERED
    assert recorder.sessions == [True]


async def test_an_unverifiable_certificate_defers_and_never_falls_back_to_plaintext(
    tls_mx: tuple[int, Recorder],
) -> None:
    port, recorder = tls_mx
    transport = SmtpTransport(hostname="mta.example.com", tls="opportunistic", verify=True)
    try:
        results = await transport.deliver(_route(port), "a@example.com", ["b@example.com"], MESSAGE)
    finally:
        await transport.aclose()
        await _closed_by_client(port)
    assert results["b@example.com"].outcome is Outcome.TEMPORARY
    assert recorder.sessions == []


async def test_tls_disabled_against_a_server_that_requires_it_is_refused(
    tls_mx: tuple[int, Recorder],
) -> None:
    port, recorder = tls_mx
    transport = SmtpTransport(hostname="mta.example.com", tls="none")
    try:
        results = await transport.deliver(_route(port), "a@example.com", ["b@example.com"], MESSAGE)
    finally:
        await transport.aclose()
        await _closed_by_client(port)
    assert results["b@example.com"].outcome is not Outcome.DELIVERED
    assert recorder.sessions == []
