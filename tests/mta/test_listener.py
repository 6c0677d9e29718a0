"""The MTA listeners, phase by phase, with a real spool and real SMTP clients."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.servers import free_port
from workers.mta.listener import InboundHandler, Networks, SubmissionHandler, serve
from workers.mta.spool import QueueId, Spool

MESSAGE = (
    b"From: news@example.com\r\nTo: a@example.com\r\nSubject: hi\r\n"
    b"Message-ID: <c1.abc@warta.example>\r\n\r\nHello\r\n"
)


async def _submission(
    tmp_path: Path, trusted: str = "127.0.0.0/8", per_client: int = 50, size: int = 100_000
) -> tuple[Spool, asyncio.Server, int]:
    spool = Spool(tmp_path / "spool")
    spool.recover()
    handler = SubmissionHandler(spool, Networks.parse(trusted), max_recipients=3)
    port = free_port()
    server = await serve(
        handler,
        f"127.0.0.1:{port}",
        hostname="mta.example.com",
        max_message_size=size,
        idle_timeout=30,
        per_client=per_client,
    )
    return spool, server, port


@pytest.fixture
async def submission(tmp_path: Path) -> AsyncIterator[tuple[Spool, int]]:
    spool, server, port = await _submission(tmp_path)
    yield spool, port
    server.close()
    await server.wait_closed()
    await spool.close()


def _client(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.ehlo("client.example.com")
    return client


async def _in_thread(function, *args):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(function, *args)


async def test_trusted_client_gets_250_only_after_the_spool_has_it(
    submission: tuple[Spool, int],
) -> None:
    spool, port = submission

    def send() -> tuple[int, bytes]:
        with _client(port) as client:
            client.mail("bounces+c1-x@bounces.example.com")
            client.rcpt("a@example.com")
            return client.data(MESSAGE)

    code, reply = await _in_thread(send)
    assert code == 250
    queue_id = reply.decode().rsplit(" ", 1)[1]
    assert spool.load(queue_id) == MESSAGE
    assert spool.envelope_path(queue_id).exists()


async def test_a_resubmitted_message_id_is_acknowledged_once(
    submission: tuple[Spool, int],
) -> None:
    spool, port = submission

    def send() -> bytes:
        with _client(port) as client:
            client.mail("s@example.com")
            client.rcpt("a@example.com")
            return client.data(MESSAGE)[1]

    first = await _in_thread(send)
    second = await _in_thread(send)
    assert b"queued as" in first
    assert second.startswith(b"2.0.0 OK: already queued as")
    assert len(list(spool.messages.iterdir())) == 1


async def test_the_same_message_id_to_other_recipients_is_another_transaction(
    submission: tuple[Spool, int],
) -> None:
    # A client that splits its recipients over several transactions (Postfix past its
    # recipient limit, or Bcc copies sent apart) sends one Message-ID more than once; each
    # transaction must be queued. Only the same recipients again is a resubmission, in any
    # order or case.
    spool, port = submission

    def send(*recipients: str) -> bytes:
        with _client(port) as client:
            client.mail("s@example.com")
            for recipient in recipients:
                client.rcpt(recipient)
            return client.data(MESSAGE)[1]

    first = await _in_thread(send, "a@example.com", "b@example.com")
    second = await _in_thread(send, "c@example.com")
    again = await _in_thread(send, "B@example.com", "a@example.com")
    assert b"queued as" in first and b"already" not in first
    assert b"queued as" in second and b"already" not in second
    assert again == b"2.0.0 OK: already queued as " + first.rsplit(b" ", 1)[1]
    envelopes = await spool.read_envelopes([QueueId(p.stem) for p in spool.messages.iterdir()])
    queued = sorted(envelope.recipients for envelope in envelopes if envelope is not None)
    assert queued == [["a@example.com", "b@example.com"], ["c@example.com"]]


async def test_untrusted_client_must_authenticate(tmp_path: Path) -> None:
    spool, server, port = await _submission(tmp_path, trusted="10.0.0.0/8")
    try:

        def send() -> tuple[int, bytes]:
            with _client(port) as client:
                return client.mail("s@example.com")

        code, reply = await _in_thread(send)
        assert code == 530
        assert b"5.7.0" in reply
    finally:
        server.close()
        await server.wait_closed()
        await spool.close()


async def test_recipient_syntax_and_limit(submission: tuple[Spool, int]) -> None:
    _, port = submission

    def rcpts() -> list[int]:
        with _client(port) as client:
            client.mail("s@example.com")
            codes = [client.rcpt("not an address")[0]]
            codes += [client.rcpt(f"r{i}@example.com")[0] for i in range(4)]
            return codes

    assert await _in_thread(rcpts) == [553, 250, 250, 250, 452]


async def test_the_null_sender_is_accepted_and_spooled_as_empty(
    submission: tuple[Spool, int],
) -> None:
    spool, port = submission

    def send() -> tuple[int, int]:
        with _client(port) as client:
            client.mail("<>")
            code = client.rcpt("r@example.com")[0]
            data = b"From: MAILER-DAEMON@example.com\r\nSubject: notice\r\n\r\nbody\r\n"
            return code, client.data(data)[0]

    assert await _in_thread(send) == (250, 250)
    (envelope,) = spool.recover()
    assert envelope.mail_from == ""


async def _raw(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        writer.write(payload)
        await writer.drain()
        replies = b""
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), 2)
            except TimeoutError:
                break
            if not line:
                break
            replies += line
            if line.startswith(b"221"):
                break
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


async def test_bare_lf_and_smtp_smuggling_are_refused(submission: tuple[Spool, int]) -> None:
    spool, port = submission
    smuggled = (
        b"EHLO c.example.com\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"
        b"Subject: one\r\n\r\nbody\n.\nMAIL FROM:<evil@example.com>\nRCPT TO:<victim@example.com>\n"
        b"DATA\nSubject: smuggled\n\nspoof\r\n.\r\nQUIT\r\n"
    )
    replies = await _raw(port, smuggled)
    assert b"550 5.6.0" in replies
    assert b"victim" not in replies
    assert list(spool.messages.iterdir()) == []


async def test_size_limit(tmp_path: Path) -> None:
    spool, server, port = await _submission(tmp_path, size=2000)
    try:

        def send() -> int:
            with _client(port) as client:
                try:
                    client.sendmail("s@example.com", ["a@example.com"], MESSAGE + b"x" * 5000)
                except smtplib.SMTPDataError as exc:
                    return exc.smtp_code
                except smtplib.SMTPSenderRefused as exc:
                    return exc.smtp_code
                return 250

        assert await _in_thread(send) == 552
        assert list(spool.messages.iterdir()) == []
    finally:
        server.close()
        await server.wait_closed()
        await spool.close()


async def test_connections_per_client_are_limited(tmp_path: Path) -> None:
    spool, server, port = await _submission(tmp_path, per_client=2)
    clients = []
    try:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert (await reader.readline()).startswith(b"220")
            clients.append(writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        clients.append(writer)
        assert (await reader.readline()).startswith(b"421 4.7.0")
    finally:
        for writer in clients:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await spool.close()


async def test_inbound_accepts_only_the_bounce_domain() -> None:
    received: list[tuple[str, list[str], bytes]] = []

    async def sink(mail_from: str, rcpts: list[str], data: bytes, **client: str) -> None:
        received.append((mail_from, rcpts, data))

    port = free_port()
    server = await serve(
        InboundHandler("bounces.example.com", sink, max_recipients=10),
        f"127.0.0.1:{port}",
        hostname="mta.example.com",
        max_message_size=100_000,
        idle_timeout=30,
        per_client=10,
    )
    try:

        def send() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
            with _client(port) as client:
                client.mail("")
                foreign = client.rcpt("someone@elsewhere.example.com")
                ours = client.rcpt("bounces+c1-abc@bounces.example.com")
                client.data(MESSAGE)
                return foreign, ours

        foreign, ours = await _in_thread(send)
        assert foreign[0] == 550 and b"5.7.1" in foreign[1]
        assert ours[0] == 250
        assert received == [("", ["bounces+c1-abc@bounces.example.com"], MESSAGE)]
    finally:
        server.close()
        await server.wait_closed()
