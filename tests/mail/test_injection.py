"""Batch injection over pipelined SMTP, against Warta's own server protocol and aiosmtpd."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from app.mail.injection import PipelinedSender
from app.mail.result import Outcome
from tests.helpers.recorders import MESSAGE, RejectAtRcpt, StartServer
from tests.helpers.servers import free_port
from tests.helpers.stores import Store
from tests.mail.scripted import ScriptedServer, scripted_servers
from workers.mta.smtp_server import ServerConfig, Session, Transaction, serve

FROM = "bounces+c1-abc@bounces.example"


StartWarta = Callable[[Store], Awaitable[str]]


@pytest.fixture
async def warta_server() -> AsyncIterator[StartWarta]:
    """Start Warta's SMTP server protocol with a handler on 127.0.0.1; its `host:port`."""
    servers: list[asyncio.Server] = []

    async def start(handler: Store) -> str:
        port = free_port()
        config = ServerConfig("mta.test", 1_000_000, 30, 50)
        servers.append(await serve(handler, f"127.0.0.1:{port}", config))
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_concurrent_sends_are_pipelined_and_byte_exact(warta_server: StartWarta) -> None:
    store = Store(refuse={"gone@example.com"})
    address = await warta_server(store)
    async with PipelinedSender(address, connections=2, batch=16) as sender:
        results = await asyncio.gather(
            *(
                sender.send_one(FROM, f"r{n}@example.com", MESSAGE + b"%d\r\n" % n)
                for n in range(50)
            ),
            sender.send(FROM, ["a@example.com", "gone@example.com"], MESSAGE),
        )
    *singles, pair = results
    assert all(result.outcome is Outcome.DELIVERED for result in singles)
    assert pair["a@example.com"].outcome is Outcome.DELIVERED
    assert pair["gone@example.com"].outcome is Outcome.PERMANENT
    assert pair["gone@example.com"].code == 550
    by_recipient = {t.rcpt_tos[0]: t.content for t in store.transactions}
    assert len(store.transactions) == 51
    assert all(by_recipient[f"r{n}@example.com"] == MESSAGE + b"%d\r\n" % n for n in range(50))
    assert all(t.mail_from == FROM for t in store.transactions)


async def test_a_server_without_chunking_gets_one_command_at_a_time(
    smtp_server: StartServer,
) -> None:
    recorder = RejectAtRcpt(rejected={"gone@example.com"})
    async with PipelinedSender(smtp_server(recorder), connections=1) as sender:
        ok, pair = await asyncio.gather(
            sender.send_one(FROM, "a@example.com", MESSAGE),
            sender.send(FROM, ["b@example.com", "gone@example.com"], MESSAGE),
        )
        none = await sender.send_one(FROM, "gone@example.com", MESSAGE)
    assert ok.outcome is Outcome.DELIVERED
    assert pair["b@example.com"].outcome is Outcome.DELIVERED
    assert pair["gone@example.com"].code == 550
    assert none.code == 550
    assert [e.content for e in recorder.envelopes] == [MESSAGE, MESSAGE]  # dot-stuffing undone


async def test_no_server_is_a_temporary_failure_not_an_exception() -> None:
    async with PipelinedSender(f"127.0.0.1:{free_port()}", connections=1, timeout=2) as sender:
        result = await sender.send_one(FROM, "a@example.com", MESSAGE)
    assert result.outcome is Outcome.TEMPORARY


async def test_bad_addresses_are_refused_before_anything_is_sent(
    warta_server: StartWarta,
) -> None:
    store = Store()
    address = await warta_server(store)
    async with PipelinedSender(address, connections=1) as sender:
        injected = await sender.send_one(FROM, "a@example.com>\r\nRCPT TO:<b@example.com", MESSAGE)
        spoofed = await sender.send_one("x@example.com> BODY=8BITMIME", "a@example.com", MESSAGE)
    assert injected.outcome is Outcome.PERMANENT
    assert spoofed.outcome is Outcome.PERMANENT
    assert store.transactions == []


async def _flaky_server(connections: list[int]) -> tuple[asyncio.Server, str]:
    """Offers PIPELINING and CHUNKING; the first session is cut at MAIL, later ones work."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.write(b"220 flaky ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-flaky\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
        while line := await reader.readline():
            if line.startswith(b"MAIL") and len(connections) == 1:
                break
            if line.startswith(b"BDAT"):
                await reader.readexactly(int(line.split()[1]))
            if line.startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                break
            writer.write(b"250 2.0.0 OK\r\n")
        writer.close()

    port = free_port()
    return await asyncio.start_server(session, "127.0.0.1", port), f"127.0.0.1:{port}"


async def test_a_dropped_connection_fails_the_batch_temporarily_and_the_next_one_reconnects() -> (
    None
):
    connections: list[int] = []
    server, address = await _flaky_server(connections)
    try:
        async with PipelinedSender(address, connections=1) as sender:
            first = await sender.send_one(FROM, "a@example.com", MESSAGE)
            second = await sender.send_one(FROM, "b@example.com", MESSAGE)
    finally:
        server.close()
        await server.wait_closed()
    assert first.outcome is Outcome.TEMPORARY
    assert second.delivered
    assert len(connections) == 2


@dataclass
class GatedStore(Store):
    """Holds each DATA reply until the test opens the gate."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, session: Session, transaction: Transaction) -> str:
        self.entered.set()
        await self.gate.wait()
        return await super().handle_DATA(session, transaction)


async def test_a_caller_cancelled_mid_exchange_does_not_stop_the_sender(
    warta_server: StartWarta,
) -> None:
    # A batch cancelled while its message was on the wire (its lease lost) made the reply
    # land on a cancelled future: the connection loop died, and after one such death per
    # connection every later send of that worker waited forever.
    store = GatedStore()
    address = await warta_server(store)
    async with PipelinedSender(address, connections=1) as sender:
        abandoned = asyncio.create_task(sender.send_one(FROM, "a@example.com", MESSAGE))
        await asyncio.wait_for(store.entered.wait(), 10)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        store.gate.set()
        later = await asyncio.wait_for(sender.send_one(FROM, "b@example.com", MESSAGE), 10)
    assert later.delivered
    assert [t.rcpt_tos for t in store.transactions] == [["a@example.com"], ["b@example.com"]]


async def test_a_message_whose_caller_gave_up_while_queued_is_not_sent(
    warta_server: StartWarta,
) -> None:
    store = GatedStore()
    address = await warta_server(store)
    async with PipelinedSender(address, connections=1) as sender:
        first = asyncio.create_task(sender.send_one(FROM, "a@example.com", MESSAGE))
        await asyncio.wait_for(store.entered.wait(), 10)
        queued = asyncio.create_task(sender.send_one(FROM, "b@example.com", MESSAGE))
        await asyncio.sleep(0)  # one step: the task queues its message and waits
        assert sender._queue.qsize() == 1  # behind the exchange in flight
        queued.cancel()
        store.gate.set()
        assert (await asyncio.wait_for(first, 10)).delivered
        last = await asyncio.wait_for(sender.send_one(FROM, "c@example.com", MESSAGE), 10)
    assert last.delivered
    assert queued.cancelled()
    assert [t.rcpt_tos for t in store.transactions] == [["a@example.com"], ["c@example.com"]]


@pytest.mark.parametrize("extensions", [["PIPELINING"], ["PIPELINING", "CHUNKING"]])
async def test_a_reply_that_is_not_utf8_reads_as_text(extensions: list[str]) -> None:
    server = ScriptedServer(
        extensions=extensions, script={"RCPT": ["550 5.1.1 M\udcfcller: no such user"]}
    )
    async with scripted_servers() as start:
        address = await start(server)
        async with PipelinedSender(address, connections=1) as sender:
            result = await sender.send_one(FROM, "mueller@example.com", MESSAGE)
    assert result.outcome is Outcome.PERMANENT
    assert result.describe() == "550 5.1.1 M\ufffdller: no such user"


async def test_an_overlong_reply_line_drops_the_session_and_says_why() -> None:
    server = ScriptedServer(script={"RCPT": ["250 " + "x" * 9000]})
    async with scripted_servers() as start:
        address = await start(server)
        async with PipelinedSender(address, connections=1) as sender:
            result = await sender.send_one(FROM, "a@example.com", MESSAGE)
    assert result.outcome is Outcome.TEMPORARY
    assert result.code is None
    assert "reply line too long" in result.describe()
