"""The delivery agent delivers every message the spool commits, whatever becomes of the
SMTP session that submitted it, and its sweep finds any message it does not hold."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from redis.asyncio import Redis

from app.core.settings import Settings
from tests.helpers.api import eventually
from tests.helpers.servers import free_port
from tests.helpers.sinks import SinkHandler
from workers.mta import delivery
from workers.mta.dedupe import SharedMessageIds
from workers.mta.delivery import DeliveryAgent
from workers.mta.message_id_log import dedupe_key
from workers.mta.routing import Router, parse_host_port
from workers.mta.service import MtaService
from workers.mta.shaping import Shaping
from workers.mta.spool import Envelope, Spool
from workers.mta.transports import CaptureTransport, SmtpTransport
from workers.mta.unreachable import HOLD

SESSIONS = 24
"""Clients that vanish mid-transaction: even ones close (FIN), odd ones reset (RST)."""


def _message_id(n: int) -> str:
    return f"<vanish-{n}@warta.example>"


def _message(n: int) -> bytes:
    return (
        f"From: news@example.com\r\nTo: r{n}@example.com\r\nSubject: {n}\r\n"
        f"Message-ID: {_message_id(n)}\r\n\r\nHello {n}\r\n"
    ).encode()


async def _reply(reader: asyncio.StreamReader) -> str:
    """One (possibly multi-line) SMTP reply."""
    while True:
        line = (await reader.readline()).decode()
        assert line, "the server closed the connection"
        if line[3:4] != "-":
            return line.strip()


async def _until_data(address: str, n: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A session that has been told 354 for a message to r{n}@example.com."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    await _reply(reader)
    for command, code in (
        ("EHLO client.example.com", "250"),
        ("MAIL FROM:<news@example.com>", "250"),
        (f"RCPT TO:<r{n}@example.com>", "250"),
        ("DATA", "354"),
    ):
        writer.write(command.encode() + b"\r\n")
        reply = await _reply(reader)
        assert reply.startswith(code), (command, reply)
    return reader, writer


def _vanish(writer: asyncio.StreamWriter, reset: bool) -> None:
    """Disconnect without reading the reply: a plain close (FIN), or a reset (RST)."""
    if reset:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()


def _smtp_agent(
    spool: Spool, transport_map: dict[str, tuple[str, int]], **options: Any
) -> DeliveryAgent:
    """A delivery agent on `spool` that sends over SMTP to the hosts `transport_map` names."""
    return DeliveryAgent(
        spool,
        Router(transport_map=transport_map),
        Shaping(),
        {"smtp": SmtpTransport(hostname="mta.example.com", tls="none")},
        **options,
    )


async def _submit(address: str, n: int) -> str:
    reader, writer = await _until_data(address, n)
    writer.write(_message(n) + b".\r\n")
    reply = await _reply(reader)
    writer.write(b"QUIT\r\n")
    writer.close()
    return reply


async def test_a_message_committed_after_its_client_vanished_is_delivered(
    mta: MtaService, mta_settings: Settings, remote: tuple[str, SinkHandler]
) -> None:
    address = mta_settings.mta_submission
    spool = mta.spool
    # Hold each group commit open for a second, so that every client is gone (and its
    # session cancelled) while the commit it waits for is still in progress.
    spool.commit_delay = 1.0
    sessions = [await _until_data(address, n) for n in range(SESSIONS)]
    for n, (_, writer) in enumerate(sessions):
        writer.write(_message(n) + b".\r\n")

    async def all_spooling() -> bool:
        return spool.waiting + spool.stats.accepted == SESSIONS

    await eventually(all_spooling, within=10, what="every message handed to the spool")
    for n, (_, writer) in enumerate(sessions):
        _vanish(writer, reset=n % 2 == 1)

    async def committed() -> bool:
        return spool.waiting == 0

    await eventually(committed, within=10, what="the commits")
    spool.commit_delay = 0.0
    # The message is durable, so the sender was owed a 250: it must be delivered.
    assert spool.stats.accepted == SESSIONS
    expected = {f"r{n}@example.com" for n in range(SESSIONS)}

    async def all_delivered() -> bool:
        return {item.rcpt_tos[0] for item in remote[1].snapshot()} == expected

    # Well within the sweep interval (30 s by default): the commit itself must schedule.
    assert mta_settings.mta_sweep_interval >= 30
    await eventually(all_delivered, within=10, what="delivery of every committed message")

    # A sibling instance would recognise each Message-ID too: recording it for them
    # outlives the cancelled session as well.
    sibling = SharedMessageIds(Redis.from_url(mta_settings.redis_url), 60, "sibling")

    async def all_shared() -> bool:
        keys = [dedupe_key(_message_id(n), [f"r{n}@example.com"]) for n in range(SESSIONS)]
        return all([await sibling.seen(key) for key in keys])

    try:
        await eventually(all_shared, within=10, what="every Message-ID shared")
    finally:
        await sibling.redis.aclose()

    # The clients resubmit, as a sender does when it never got its reply: each is
    # recognised as already queued and not delivered a second time.
    replies = await asyncio.gather(*(_submit(address, n) for n in range(SESSIONS)))
    assert all("already queued as" in reply for reply in replies), replies
    assert spool.stats.accepted == SESSIONS

    async def spool_empty() -> bool:
        return not any(spool.messages.iterdir())

    await eventually(spool_empty, within=10, what="an empty spool")
    counts = Counter(item.rcpt_tos[0] for item in remote[1].snapshot())
    assert set(counts) == expected
    assert max(counts.values()) == 1


@pytest.fixture
async def agent(tmp_path: Path, remote: tuple[str, SinkHandler]) -> AsyncIterator[DeliveryAgent]:
    """A delivery agent on its own spool, sweeping every 0.1 s, example.com to `remote`."""
    spool = Spool(tmp_path / "spool")
    agent = DeliveryAgent(
        spool,
        Router(transport_map={"example.com": parse_host_port(remote[0], 25)}),
        Shaping(),
        {
            "capture": CaptureTransport(tmp_path / "maildir"),
            "smtp": SmtpTransport(hostname="mta.example.com", tls="none"),
        },
        sweep_interval=0.1,
    )
    agent.start()
    yield agent
    await agent.drain(grace=5)
    await spool.close()


async def test_the_sweep_delivers_a_message_spooled_behind_the_agents_back(
    agent: DeliveryAgent, remote: tuple[str, SinkHandler], caplog: pytest.LogCaptureFixture
) -> None:
    # Another spool object on the same directory: the agent hears nothing of this commit.
    async with Spool(agent.spool.directory) as elsewhere:
        queue_id = await elsewhere.accept(
            Envelope("news@example.com", ["stray@example.com"]), _message(0)
        )
    assert not agent.holds(queue_id)

    async def delivered() -> bool:
        return [item.rcpt_tos for item in remote[1].snapshot()] == [("stray@example.com",)]

    with caplog.at_level(logging.WARNING, logger="workers.mta.delivery"):
        await eventually(delivered, within=10, what="the sweep's delivery")
    assert any(
        record.levelno == logging.WARNING and queue_id in record.getMessage()
        for record in caplog.records
    )

    async def removed() -> bool:  # the spool forgets a message just after its delivery
        return not agent.spool.envelope_path(queue_id).exists()

    await eventually(removed, within=10, what="the delivered message removed from the spool")


async def test_the_sweep_leaves_alone_what_the_agent_holds(
    agent: DeliveryAgent, remote: tuple[str, SinkHandler], caplog: pytest.LogCaptureFixture
) -> None:
    later = Envelope(
        "news@example.com", ["later@example.com"], next_attempt_at=agent.clock() + 3600
    )
    await agent.spool.accept(later, _message(1))
    now = Envelope("news@example.com", ["now@example.com"])
    await agent.spool.accept(now, _message(2))
    assert agent.holds(later.queue_id) and agent.holds(now.queue_id)

    async def delivered() -> bool:
        return [item.rcpt_tos for item in remote[1].snapshot()] == [("now@example.com",)]

    with caplog.at_level(logging.WARNING, logger="workers.mta.delivery"):
        await eventually(delivered, within=10, what="delivery of the due message")
        assert await agent.sweep() == 0
    assert agent.queued() == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_urgent_mail_is_delivered_before_a_backlog_of_bulk_mail(
    tmp_path: Path, remote: tuple[str, SinkHandler]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.recover()
    for n in range(20):
        await spool.accept(Envelope("news@example.com", [f"bulk{n}@example.com"]), _message(n))
    await spool.accept(Envelope("app@example.com", ["reset@example.com"]), _message(99))
    agent = _smtp_agent(
        spool,
        {"example.com": parse_host_port(remote[0], 25)},
        concurrency=1,  # one delivery at a time: the order at the sink is the agent's order
        urgent=lambda sender: sender == "app@example.com",
    )
    agent.start()
    try:

        async def all_delivered() -> bool:
            return len(remote[1].snapshot()) == 21

        await eventually(all_delivered, within=30, what="the backlog delivered")
    finally:
        await agent.drain(grace=5)
        await spool.close()
    order = [item.rcpt_tos[0] for item in remote[1].snapshot()]
    assert order[0] == "reset@example.com", order


async def test_a_backlog_beyond_the_schedule_waits_on_disk_and_is_all_delivered(
    tmp_path: Path, remote: tuple[str, SinkHandler], caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool")
    agent = _smtp_agent(
        spool,
        {"example.com": parse_host_port(remote[0], 25)},
        max_held=4,
        # Far beyond the test: the schedule must refill itself as it drains, not wait.
        sweep_interval=3600,
    )
    later = Envelope("news@example.com", ["later@example.com"], next_attempt_at=1e12)
    await spool.accept(later, _message(99))
    # Committed before the agent runs: its commits schedule up to four, the rest stay on disk.
    for n in range(10):
        await spool.accept(Envelope("news@example.com", [f"r{n}@example.com"]), _message(n))
    # The message deferred for later does not take a place in the schedule.
    assert agent.queued() == 5
    assert agent.holds(later.queue_id)
    with caplog.at_level(logging.WARNING, logger="workers.mta.delivery"):
        agent.start()
        try:

            async def all_delivered() -> bool:
                return len(remote[1].snapshot()) == 10

            await eventually(all_delivered, within=10, what="the whole backlog delivered")
        finally:
            await agent.drain(grace=5)
            await spool.close()
    counts = Counter(item.rcpt_tos[0] for item in remote[1].snapshot())
    assert set(counts) == {f"r{n}@example.com" for n in range(10)}
    assert max(counts.values()) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_scheduled_message_wakes_one_idle_worker_not_all(
    tmp_path: Path, remote: tuple[str, SinkHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every idle worker woke for every message before: 16 % of the MTA's CPU while
    deliveries failed (nothing kept the workers busy)."""
    spool = Spool(tmp_path / "spool")
    agent = _smtp_agent(
        spool,
        {"example.com": parse_host_port(remote[0], 25)},
        concurrency=100,
    )
    woken_idle = timed_out = 0
    look = agent._next

    async def counted() -> Envelope | None:
        nonlocal woken_idle
        envelope = await look()
        woken_idle += envelope is None
        return envelope

    release = delivery._release

    def timer(waiter: asyncio.Future[None]) -> None:  # an idle worker's own look, once a second
        nonlocal timed_out
        timed_out += 1
        release(waiter)

    monkeypatch.setattr(agent, "_next", counted)
    monkeypatch.setattr(delivery, "_release", timer)
    agent.start()
    try:
        for n in range(20):  # one commit each: twenty separate wake-ups
            await spool.accept(Envelope("news@example.com", [f"r{n}@example.com"]), _message(n))

        async def all_delivered() -> bool:
            return len(remote[1].snapshot()) == 20

        await eventually(all_delivered, within=10, what="the twenty messages delivered")
        by_messages = woken_idle - timed_out  # before the drain, which wakes every one
    finally:
        await agent.drain(grace=5)
        await spool.close()
    assert by_messages <= 2 * 20, (woken_idle, timed_out)  # ~2,000 when all woke each time


async def test_mail_for_a_destination_refusing_connections_is_held_not_tried_per_message(
    tmp_path: Path,
) -> None:
    """Postfix's dead destination: after three deliveries without a reply, the rest of the
    queue for that destination waits untried; when the hold ends a probe finds it back."""
    port = free_port()  # nothing listens: every connection is refused
    now = [1_000_000.0]
    spool = Spool(tmp_path / "spool", clock=lambda: now[0])
    agent = _smtp_agent(
        spool,
        {"down.example": ("127.0.0.1", port)},
        concurrency=1,
        clock=lambda: now[0],
    )
    agent.start()
    try:
        for n in range(10):
            await spool.accept(Envelope("news@example.com", [f"r{n}@down.example"]), _message(n))

        def attempts() -> list[int]:
            return sorted(
                e.states[e.recipients[0]].attempts for _, _, e in agent.pending_envelopes()
            )

        async def all_looked_at() -> bool:
            scheduled = agent.pending_envelopes()  # in flight: not in the schedule
            return len(scheduled) == 10 and all(e.next_attempt_at > now[0] for *_, e in scheduled)

        await eventually(all_looked_at, within=10, what="every message tried or held")
        assert attempts() == [0] * 7 + [1] * 3
        held = [
            e for _, _, e in agent.pending_envelopes() if not e.states[e.recipients[0]].attempts
        ]
        assert {e.next_attempt_at for e in held} == {now[0] + HOLD}
        assert agent.unreachable.snapshot(now[0]) == {f"127.0.0.1:{port}": now[0] + HOLD}

        sink = SinkHandler()
        controller = Controller(sink, hostname="127.0.0.1", port=port)
        controller.start()  # the destination is back
        try:
            now[0] += HOLD  # the hold is over: the held messages are due, the first probes
            delivered = {f"r{n}@down.example" for n in range(10)}

            async def held_ones_delivered() -> bool:
                return len(sink.snapshot()) == 7

            await eventually(held_ones_delivered, within=10, what="the held messages")
            assert not agent.unreachable.snapshot(now[0])
            now[0] += 3600  # the three tried ones are due again
            await eventually(
                lambda: _delivered_to(sink, delivered), within=10, what="all ten delivered"
            )
        finally:
            controller.stop()
    finally:
        await agent.drain(grace=5)
        await spool.close()


async def _delivered_to(sink: SinkHandler, expected: set[str]) -> bool:
    return {item.rcpt_tos[0] for item in sink.snapshot()} == expected
