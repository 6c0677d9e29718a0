"""The SMTP server protocol, phase by phase, against real clients (smtplib and raw sockets)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import smtplib
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.api import eventually
from tests.helpers.servers import free_port
from tests.helpers.tls import Pki, make_pki
from workers.mta.smtp_server import ServerConfig, Session, SmtpProtocol, Transaction, serve

MESSAGE = (
    b"From: news@example.com\r\nTo: a@example.com\r\nSubject: hi\r\n\r\n"
    b".starts with a dot\r\n..two dots\r\n.\r\ncaf\xc3\xa9\r\n"
)


@dataclass
class Recording:
    """A handler that keeps every transaction and answers as told."""

    transactions: list[Transaction] = field(default_factory=list)
    reply: str = "250 2.0.0 OK: queued"
    delay: float = 0.0

    async def handle_DATA(self, session: Session, transaction: Transaction) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.transactions.append(transaction)
        return self.reply


@dataclass
class Listener:
    port: int
    handler: Recording
    pki: Pki


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Listener]:
    pki = make_pki(tmp_path)
    handler = Recording()
    port = free_port()
    server = await serve(
        handler,
        f"127.0.0.1:{port}",
        ServerConfig(
            hostname="mta.example.com",
            max_message_size=10_000,
            idle_timeout=5,
            per_client=20,
            tls_context=pki.server_context(),
            authenticator=lambda login, password: (login, password) == ("app", "s3cret"),
        ),
    )
    yield Listener(port, handler, pki)
    server.close()
    await server.wait_closed()


async def _exchange(port: int, *writes: bytes, until: bytes = b"221", wait: float = 3) -> bytes:
    """Send each write in one piece (pipelined), collect replies until `until` or silence."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        replies = await reader.readline()
        for chunk in writes:
            writer.write(chunk)
        await writer.drain()
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), wait)
            except TimeoutError:
                break
            if not line:
                break
            replies += line
            if line.startswith(until):
                break
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


def _codes(replies: bytes) -> list[int]:
    return [int(line[:3]) for line in replies.split(b"\r\n") if line[3:4] == b" "]


async def test_ehlo_advertises_the_extensions(listener: Listener) -> None:
    def ehlo() -> dict[str, str]:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=5) as client:
            client.ehlo("client.example.com")
            return dict(client.esmtp_features)

    features = await asyncio.to_thread(ehlo)
    for name in ("pipelining", "chunking", "8bitmime", "smtputf8", "starttls", "size"):
        assert name in features
    assert features["size"] == "10000"
    assert "auth" not in features  # only over TLS


async def test_data_is_byte_exact_with_dot_stuffing(listener: Listener) -> None:
    def send() -> None:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=5) as client:
            client.sendmail("s@example.com", ["a@example.com", "b@example.net"], MESSAGE)

    await asyncio.to_thread(send)
    [transaction] = listener.handler.transactions
    assert transaction.content == MESSAGE
    assert transaction.mail_from == "s@example.com"
    assert transaction.rcpt_tos == ["a@example.com", "b@example.net"]


async def test_an_empty_message_and_the_null_sender(listener: Listener) -> None:
    replies = await _exchange(
        listener.port,
        b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n",
        b".\r\nQUIT\r\n",
    )
    assert _codes(replies)[-4:] == [250, 354, 250, 221]
    [transaction] = listener.handler.transactions
    assert (transaction.mail_from, transaction.content) == ("<>", b"")


async def test_a_pipelined_session_is_answered_in_order(listener: Listener) -> None:
    session = (
        b"EHLO c\r\n"
        + b"".join(
            b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"
            + b"Subject: %d\r\n\r\nbody %d\r\n.\r\n" % (n, n)
            for n in range(20)
        )
        + b"QUIT\r\n"
    )
    replies = await _exchange(listener.port, session)
    assert _codes(replies)[1:] == [250] + [250, 250, 354, 250] * 20 + [221]
    assert [t.content for t in listener.handler.transactions] == [
        b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(20)
    ]


async def test_bdat_chunks_are_joined_and_binary_safe(listener: Listener) -> None:
    first, last = b"Subject: x\r\n\r\n.\r\n", b"not the end\r\n.\r\n"
    replies = await _exchange(
        listener.port,
        b"EHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\n",
        b"BDAT %d\r\n%s" % (len(first), first),
        b"BDAT %d LAST\r\n%s" % (len(last), last),
        b"QUIT\r\n",
    )
    assert _codes(replies)[-4:] == [250, 250, 250, 221]
    assert [t.content for t in listener.handler.transactions] == [first + last]


async def test_too_big_is_refused_and_the_session_goes_on(listener: Listener) -> None:
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 20
    replies = await _exchange(
        listener.port,
        b"EHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n",
        big + b".\r\n",
        b"MAIL FROM:<s@example.com> SIZE=20000\r\n",
        b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nok\r\n.\r\nQUIT\r\n",
    )
    assert _codes(replies)[1:] == [250, 250, 250, 354, 552, 552, 250, 250, 354, 250, 221]
    assert [t.content for t in listener.handler.transactions] == [b"ok\r\n"]


async def test_an_overlong_line_is_refused_and_the_next_command_runs(listener: Listener) -> None:
    replies = await _exchange(listener.port, b"EHLO " + b"a" * 5000 + b"\r\nNOOP\r\nQUIT\r\n")
    assert _codes(replies)[1:] == [500, 250, 221]


async def test_sequence_errors(listener: Listener) -> None:
    replies = await _exchange(
        listener.port,
        b"MAIL FROM:<s@example.com>\r\nEHLO c\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"
        b"MAIL FROM:<s@example.com>\r\nMAIL FROM:<t@example.com>\r\nDATA\r\nRSET\r\n"
        b"MAIL FROM:<s@example.com> FOO=1\r\nXYZZY\r\nQUIT\r\n",
    )
    assert _codes(replies)[1:] == [503, 250, 503, 503, 250, 503, 503, 250, 555, 500, 221]


async def test_too_many_errors_end_the_session(listener: Listener) -> None:
    replies = await _exchange(listener.port, b"XYZZY\r\n" * 12, until=b"421")
    assert _codes(replies)[-1] == 421
    assert _codes(replies).count(500) == 10


async def test_commands_pipelined_behind_starttls_are_discarded(listener: Listener) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        await reader.readline()
        writer.write(b"EHLO c\r\n")
        while not (await reader.readline()).startswith(b"250 "):
            pass
        # The injected MAIL must not run inside the TLS session (CVE-2011-0411).
        writer.write(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
        assert (await reader.readline()).startswith(b"220")
        await writer.start_tls(listener.pki.client_context(), server_hostname="localhost")
        writer.write(b"EHLO c\r\nRCPT TO:<a@example.com>\r\nQUIT\r\n")
        replies = b""
        while line := await asyncio.wait_for(reader.readline(), 5):
            replies += line
        assert _codes(replies) == [250, 503, 221]
        assert b"AUTH PLAIN LOGIN" in replies
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def test_auth_needs_tls_and_right_credentials(listener: Listener) -> None:
    plain = base64.b64encode(b"\0app\0s3cret")
    replies = await _exchange(listener.port, b"EHLO c\r\nAUTH PLAIN " + plain + b"\r\nQUIT\r\n")
    assert _codes(replies)[1:] == [250, 538, 221]

    def login(password: str) -> str:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=5) as client:
            client.starttls(context=listener.pki.client_context())
            try:
                client.login("app", password)
            except smtplib.SMTPAuthenticationError as exc:
                return f"refused {exc.smtp_code}"
            return "in"

    assert await asyncio.to_thread(login, "s3cret") == "in"
    assert await asyncio.to_thread(login, "wrong") == "refused 535"


async def test_a_client_that_vanishes_after_the_final_dot_is_still_answered_by_the_handler(
    listener: Listener,
) -> None:
    listener.handler.delay = 0.2  # the handler is still storing when the client is gone
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    await reader.readline()
    writer.write(
        b"EHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"
        b"Subject: gone\r\n\r\nbye\r\n.\r\n"
    )
    await writer.drain()
    writer.transport.abort()

    async def stored() -> bool:
        return len(listener.handler.transactions) == 1

    deadline = asyncio.get_running_loop().time() + 5
    while not await stored():
        assert asyncio.get_running_loop().time() < deadline, "the transaction was dropped"
        await asyncio.sleep(0.02)
    assert listener.handler.transactions[0].content == b"Subject: gone\r\n\r\nbye\r\n"


async def test_an_idle_client_is_disconnected(tmp_path: Path) -> None:
    port = free_port()
    server = await serve(
        Recording(),
        f"127.0.0.1:{port}",
        ServerConfig(
            hostname="mta.example.com", max_message_size=1000, idle_timeout=0.3, per_client=5
        ),
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"220")
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"421 4.4.2")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


def test_the_tls_context_fixture_is_a_server_context(tmp_path: Path) -> None:
    assert make_pki(tmp_path).server_context().protocol == ssl.PROTOCOL_TLS_SERVER


@dataclass
class Overlapping:
    """Stores slower the earlier a message came, and says which message each reply is for."""

    active: int = 0
    most: int = 0

    async def handle_DATA(self, session: Session, transaction: Transaction) -> str:
        number = int(transaction.content.split(b"\r\n", 1)[0].split()[-1])
        self.active += 1
        self.most = max(self.most, self.active)
        await asyncio.sleep(0.01 * (10 - number))
        self.active -= 1
        return f"250 2.0.0 OK: stored {number}"


async def test_pipelined_messages_are_stored_together_and_answered_in_order() -> None:
    handler = Overlapping()
    port = free_port()
    server = await serve(
        handler,
        f"127.0.0.1:{port}",
        ServerConfig(hostname="m", max_message_size=10_000, idle_timeout=5, per_client=5),
    )
    try:
        session = b"EHLO c\r\n" + b"".join(
            b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nBDAT %d LAST\r\n%s"
            % (len(body), body)
            for body in (b"Subject: %d\r\n\r\nx\r\n" % n for n in range(10))
        )
        replies = await _exchange(port, session, b"QUIT\r\n")
    finally:
        server.close()
        await server.wait_closed()
    stored = [line for line in replies.split(b"\r\n") if b"stored" in line]
    assert stored == [b"250 2.0.0 OK: stored %d" % n for n in range(10)]
    assert handler.most > 1  # later messages were being stored while earlier ones were
    assert replies.endswith(b"221 2.0.0 Bye\r\n")


class WriteRecorder(asyncio.Transport):
    """A transport that keeps each `write` call apart (a socket would merge them)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_the_replies_to_a_pipelined_batch_go_out_in_one_write() -> None:
    # One send per reply line cost a syscall each: a new connection's EHLO alone was eight.
    config = ServerConfig(hostname="m", max_message_size=10_000, idle_timeout=5, per_client=5)
    protocol = SmtpProtocol(Recording(), config, Counter())
    transport = WriteRecorder()
    protocol.connection_made(transport)

    async def replies(count: int) -> bool:
        return sum(write.count(b"\r\n") for write in transport.writes) >= count

    await eventually(lambda: replies(1), within=5, what="the greeting")
    protocol.data_received(
        b"EHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nRSET\r\nNOOP\r\n"
    )
    await eventually(lambda: replies(1 + 8 + 4), within=5, what="the batch's replies")
    greeting, batch = transport.writes
    assert greeting == b"220 m ESMTP Warta\r\n"
    assert batch.startswith(b"250-m\r\n") and batch.endswith(b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n")
    protocol.data_received(b"QUIT\r\n")
    await eventually(lambda: replies(1 + 8 + 4 + 1), within=5, what="the goodbye")
    assert transport.writes[-1] == b"221 2.0.0 Bye\r\n" and transport.closed
    protocol.connection_lost(None)
