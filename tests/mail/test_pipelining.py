"""The sender's pipelined transaction (PIPELINING, CHUNKING) against real servers.

Warta's own listener protocol offers both extensions; a scripted asyncio server
(`tests.mail.scripted`) refuses, stalls or hangs up at exact points of a batch; aiosmtpd
offers neither, so it gets the one-command-at-a-time path, as before.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from app.mail.pipelining import canonical_body, stuffed_body
from app.mail.result import Outcome
from app.mail.sender import SmtpSender
from tests.helpers.recorders import FROM, MESSAGE, TO, Recorder, StartServer
from tests.helpers.stores import Store
from tests.helpers.tls import make_pki
from tests.mail.scripted import DROP, SILENT, ScriptedServer, StartScripted, scripted_servers
from workers.mta.smtp_server import ServerConfig, serve

TRICKY_BODIES = [
    b"",
    b".",
    b".\r\n",
    b"\r\n.\r\n",
    b".leading dot\r\nbody\r\n",
    b"a\r\n.\r\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n",
    b"bare LF\n.\nthen a dot line\n",
    b"bare CR\r.\rand a dot after it\r",
    b"mixed\r\n\n\r\r\n.\n..\r.\r\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"no final line break",
    b"ends in a dot line\r\n.",
    b"ends in a bare CR\r",
    b"\r\n\r\n..\r\n...\r\n",
    MESSAGE,
]


def _aiosmtplib_payload(message: bytes) -> bytes:
    """What aiosmtplib 5's `execute_data_command` writes after the 354."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


def _sender(hosts: str, **options: Any) -> SmtpSender:
    options.setdefault("pool_size", 1)
    return SmtpSender(hosts, local_hostname="warta.test.example", **options)


@pytest.fixture
async def scripted() -> AsyncIterator[StartScripted]:
    async with scripted_servers() as start:
        yield start


StartWarta = Callable[..., Awaitable[str]]


@pytest.fixture
async def warta_server() -> AsyncIterator[StartWarta]:
    """Warta's listener protocol (PIPELINING and CHUNKING) with a handler on 127.0.0.1."""
    servers: list[asyncio.Server] = []

    async def start(handler: Store, tls_context: ssl.SSLContext | None = None) -> str:
        config = ServerConfig("mta.test", 1_000_000, 30, 50, tls_context)
        server = await serve(handler, "127.0.0.1:0", config)
        servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


# --- the message bytes ------------------------------------------------------------------


@pytest.mark.parametrize("body", TRICKY_BODIES)
def test_stuffing_is_what_aiosmtplib_writes(body: bytes) -> None:
    assert stuffed_body(body) == _aiosmtplib_payload(body)


def test_stuffing_matches_aiosmtplib_on_every_short_body() -> None:
    for length in range(7):
        for chars in itertools.product([b"a", b".", b"\r", b"\n"], repeat=length):
            body = b"".join(chars)
            assert stuffed_body(body) == _aiosmtplib_payload(body), body


@pytest.mark.parametrize("chunking", [False, True])
async def test_the_wire_carries_what_aiosmtplib_would_have_sent(
    scripted: StartScripted, chunking: bool
) -> None:
    lockstep = ScriptedServer(extensions=[])
    pipelined = ScriptedServer(extensions=["PIPELINING", *(["CHUNKING"] if chunking else [])])
    for server in (lockstep, pipelined):
        async with _sender(await scripted(server)) as sender:
            for body in TRICKY_BODIES:
                assert (await sender.send_one(FROM, TO, body)).delivered
    assert lockstep.payloads == [_aiosmtplib_payload(body) for body in TRICKY_BODIES]
    if chunking:
        # BDAT: no stuffing and no terminator, the same message once unstuffed.
        unstuffed = [p[:-3].replace(b"\r\n..", b"\r\n.") for p in lockstep.payloads]
        unstuffed = [p[1:] if p.startswith(b"..") else p for p in unstuffed]
        assert pipelined.payloads == unstuffed
    else:
        assert pipelined.payloads == lockstep.payloads
        assert pipelined.commands == lockstep.commands


async def test_nothing_in_the_body_ends_it_early(warta_server: StartWarta) -> None:
    store = Store()
    async with _sender(await warta_server(store)) as sender:
        for body in TRICKY_BODIES:
            assert (await sender.send_one(FROM, TO, body)).delivered
    assert [t.content for t in store.transactions] == [canonical_body(b) for b in TRICKY_BODIES]
    assert all(t.rcpt_tos == [TO] for t in store.transactions)


# --- the pipelined batch ------------------------------------------------------------------


@pytest.mark.parametrize("extensions", [["PIPELINING"], ["PIPELINING", "CHUNKING"]])
async def test_the_envelope_goes_in_one_batch(
    scripted: StartScripted, extensions: list[str]
) -> None:
    # The server answers nothing until DATA/BDAT has arrived: waiting for MAIL's reply
    # before sending RCPT would time out.
    server = ScriptedServer(extensions=[*extensions, "8BITMIME"], hold_replies=True)
    async with _sender(await scripted(server), command_timeout=2) as sender:
        results = await sender.send(FROM, ["a@example.com", "b@example.com"], MESSAGE)
    assert all(result.delivered for result in results.values())
    assert results["a@example.com"].text == "2.0.0 queued"
    assert server.sessions == 1
    assert server.commands[:3] == [
        b"MAIL FROM:<%s> BODY=8BITMIME\r\n" % FROM.encode(),
        b"RCPT TO:<a@example.com>\r\n",
        b"RCPT TO:<b@example.com>\r\n",
    ]


async def test_warta_listener_byte_exact_with_chunking(warta_server: StartWarta) -> None:
    store = Store(refuse={"gone@example.com"})
    async with _sender(await warta_server(store), messages_per_connection=3) as sender:
        pair = await sender.send(FROM, ["a@example.com", "gone@example.com"], MESSAGE)
        for n in range(5):
            assert (await sender.send_one(FROM, f"r{n}@example.com", MESSAGE)).delivered
    assert pair["a@example.com"].delivered
    assert pair["a@example.com"].text == "2.0.0 OK: queued as q1"
    assert (pair["gone@example.com"].outcome, pair["gone@example.com"].code) == (
        Outcome.PERMANENT,
        550,
    )
    assert [t.rcpt_tos for t in store.transactions][:2] == [["a@example.com"], ["r0@example.com"]]
    assert all(t.content == MESSAGE for t in store.transactions)
    assert "BODY=8BITMIME" in store.transactions[0].mail_options
    assert store.sessions == 2  # six messages, three per connection


async def test_warta_listener_every_rcpt_refused_with_bdat(warta_server: StartWarta) -> None:
    store = Store(refuse={"gone@example.com", "away@example.com"})
    async with _sender(await warta_server(store)) as sender:
        refused = await sender.send(FROM, ["gone@example.com", "away@example.com"], MESSAGE)
        # The chunk was read past and refused; after RSET the session is clean.
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert {r.describe() for r in refused.values()} == {"550 5.1.1 No such user"}
    assert [t.rcpt_tos for t in store.transactions] == [[TO]]
    assert store.sessions == 1


@pytest.mark.parametrize("extensions", [["PIPELINING"], ["PIPELINING", "CHUNKING"]])
async def test_every_rcpt_refused_sends_no_message(
    scripted: StartScripted, extensions: list[str]
) -> None:
    chunking = "CHUNKING" in extensions
    server = ScriptedServer(
        extensions=extensions,
        script={
            "RCPT": ["550 5.1.1 No such user", "450 4.2.1 Try later"],
            "DATA": ["554 5.5.1 No valid recipients"],
            "BDAT": ["554 5.5.1 No valid recipients"],
        },
    )
    async with _sender(await scripted(server)) as sender:
        results = await sender.send(FROM, ["gone@example.com", "busy@example.com"], MESSAGE)
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert results["gone@example.com"].describe() == "550 5.1.1 No such user"
    assert results["busy@example.com"].outcome is Outcome.TEMPORARY
    assert results["busy@example.com"].code == 450
    verbs = [command[:4] for command in server.commands]
    last = b"BDAT" if chunking else b"DATA"
    assert verbs == [b"MAIL", b"RCPT", b"RCPT", last, b"RSET", b"MAIL", b"RCPT", last, b"QUIT"]
    assert len(server.payloads) == (2 if chunking else 1)
    assert server.sessions == 1


async def test_mail_refused_applies_to_every_recipient_and_the_session_is_reset(
    scripted: StartScripted,
) -> None:
    server = ScriptedServer(
        script={
            "MAIL": ["553 5.7.1 Sender not allowed"],
            "RCPT": ["503 5.5.1 need MAIL", "503 5.5.1 need MAIL"],
            "DATA": ["503 5.5.1 need MAIL"],
        }
    )
    async with _sender(await scripted(server)) as sender:
        results = await sender.send(FROM, ["a@example.com", "b@example.com"], MESSAGE)
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert {r.describe() for r in results.values()} == {"553 5.7.1 Sender not allowed"}
    assert all(r.outcome is Outcome.PERMANENT for r in results.values())
    assert server.commands[4] == b"RSET\r\n"
    assert server.sessions == 1


@pytest.mark.parametrize("extensions", [[], ["PIPELINING"], ["PIPELINING", "CHUNKING"]])
async def test_a_reply_that_is_not_utf8_reads_as_text_that_can_be_stored(
    scripted: StartScripted, extensions: list[str]
) -> None:
    # An old server's Latin-1 "Müller": both SMTP clients kept the byte as a lone surrogate,
    # which no database, JSON writer or mail header can encode. The ledger's outcome batch
    # holding such a reply failed at every flush, and its bounces were never recorded.
    server = ScriptedServer(
        extensions=extensions, script={"RCPT": ["550 5.1.1 M\udcfcller: no such user"]}
    )
    async with _sender(await scripted(server)) as sender:
        result = await sender.send_one(FROM, "mueller@example.com", MESSAGE)
    assert result.describe() == "550 5.1.1 M\ufffdller: no such user"
    assert result.enhanced_status == "5.1.1"
    result.describe().encode("utf-8")  # raised UnicodeEncodeError


@pytest.mark.parametrize(
    ("at", "reply", "outcome"),
    [
        ("DATA", "451 4.3.0 Not now", Outcome.TEMPORARY),
        (".", "554 5.7.1 Rejected as spam", Outcome.PERMANENT),
        (".", "452 4.3.1 Insufficient storage", Outcome.TEMPORARY),
    ],
)
async def test_a_refused_message_gets_the_reply_and_a_reset(
    scripted: StartScripted, at: str, reply: str, outcome: Outcome
) -> None:
    server = ScriptedServer(
        script={"RCPT": ["250 2.1.5 OK", "550 5.1.1 No such user"], at: [reply]}
    )
    async with _sender(await scripted(server)) as sender:
        results = await sender.send(FROM, ["a@example.com", "gone@example.com"], MESSAGE)
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert results["a@example.com"].outcome is outcome
    assert results["a@example.com"].describe() == reply
    assert results["gone@example.com"].code == 550
    assert b"RSET\r\n" in server.commands
    assert len(server.payloads) == (1 if at == "DATA" else 2)
    assert server.sessions == 1


@pytest.mark.parametrize(
    ("script", "refusal_arrived", "delivered_payloads"),
    [
        ({"MAIL": [DROP]}, False, 0),
        ({"RCPT": ["250 2.1.5 OK", DROP]}, False, 0),
        ({"DATA": [DROP]}, True, 0),
        ({".": [DROP]}, True, 1),
        ({"BDAT": [DROP]}, True, 1),
    ],
)
async def test_a_connection_lost_mid_pipeline_is_temporary_and_the_pool_recovers(
    scripted: StartScripted,
    script: dict[str, list[str | None]],
    refusal_arrived: bool,
    delivered_payloads: int,
) -> None:
    chunking = "BDAT" in script
    server = ScriptedServer(
        extensions=["PIPELINING", *(["CHUNKING"] if chunking else [])],
        script={"RCPT": ["250 2.1.5 OK", "550 5.1.1 No such user"], **script},
    )
    address = await scripted(server)
    async with _sender(address) as sender:
        lost = await sender.send(FROM, ["a@example.com", "gone@example.com"], MESSAGE)
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
        assert sender.cooling_off() == []
    assert lost["a@example.com"].outcome is Outcome.TEMPORARY
    assert lost["a@example.com"].code is None
    assert lost["a@example.com"].host == address
    # A refusal that arrived before the loss stands; a recipient without one is temporary.
    assert lost["gone@example.com"].code == (550 if refusal_arrived else None)
    assert len(server.payloads) == delivered_payloads + 1
    assert server.sessions == 2
    assert b"RSET\r\n" not in server.commands


async def test_354_without_an_accepted_recipient_drops_the_session(
    scripted: StartScripted,
) -> None:
    server = ScriptedServer(script={"RCPT": ["550 5.1.1 No such user"], "DATA": ["354 go on"]})
    async with _sender(await scripted(server)) as sender:
        refused = await sender.send_one(FROM, "gone@example.com", MESSAGE)
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert refused.describe() == "550 5.1.1 No such user"
    assert len(server.payloads) == 1, "nothing sent for a transaction without recipients"
    assert server.sessions == 2


async def test_421_closes_the_session_without_rset(scripted: StartScripted) -> None:
    server = ScriptedServer(script={"MAIL": ["421 4.3.2 Shutting down"]})
    async with _sender(await scripted(server)) as sender:
        closing = await sender.send_one(FROM, TO, MESSAGE)
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert (closing.outcome, closing.code) == (Outcome.TEMPORARY, 421)
    assert b"RSET\r\n" not in server.commands
    assert server.sessions == 2


@pytest.mark.parametrize("at", ["DATA", "."])
async def test_a_silent_server_times_out_as_temporary(scripted: StartScripted, at: str) -> None:
    server = ScriptedServer(script={at: [SILENT]})
    async with _sender(await scripted(server), command_timeout=0.3, data_timeout=0.3) as sender:
        slow = await sender.send_one(FROM, TO, MESSAGE)
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert (slow.outcome, slow.code) == (Outcome.TEMPORARY, None)
    assert "timed out" in slow.text
    assert server.sessions == 2


async def test_a_reply_out_of_step_drops_the_session(scripted: StartScripted) -> None:
    # No reply to RCPT, so DATA's 354 comes where RCPT's reply belongs.
    server = ScriptedServer(script={"RCPT": [SILENT]})
    async with _sender(await scripted(server), command_timeout=5) as sender:
        confused = await sender.send_one(FROM, TO, MESSAGE)
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert (confused.outcome, confused.code) == (Outcome.TEMPORARY, None)
    assert "354" in confused.text
    assert len(server.payloads) == 1
    assert server.sessions == 2


async def test_the_final_reply_waits_for_the_data_timeout(scripted: StartScripted) -> None:
    # A final reply slower than the command timeout is still read (DATA's own timeout).
    server = ScriptedServer(script={".": [SILENT]})
    address = await scripted(server)
    async with _sender(address, command_timeout=0.2, data_timeout=30) as sender:
        task = asyncio.create_task(sender.send_one(FROM, TO, MESSAGE))
        done, _ = await asyncio.wait({task}, timeout=0.6)
        assert not done, "gave up on the final reply after the command timeout"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Cancelled mid-transaction: the connection is dropped, a new one carries the next.
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert server.sessions == 2


async def test_smtputf8_addresses_are_pipelined_with_the_option(warta_server: StartWarta) -> None:
    store = Store()
    async with _sender(await warta_server(store)) as sender:
        assert (await sender.send_one(FROM, "jürgen@example.de", b"plain ascii\r\n")).delivered
    [transaction] = store.transactions
    assert transaction.rcpt_tos == ["jürgen@example.de"]
    assert transaction.smtp_utf8
    assert "BODY=8BITMIME" not in transaction.mail_options


async def test_without_pipelining_one_command_at_a_time(smtp_server: StartServer) -> None:
    # aiosmtpd offers no PIPELINING: the aiosmtplib path, as before, still byte exact.
    sink = Recorder()
    async with _sender(smtp_server(sink)) as sender:
        for body in TRICKY_BODIES:
            assert (await sender.send_one(FROM, TO, body)).delivered
    assert [e.content for e in sink.envelopes] == [canonical_body(b) for b in TRICKY_BODIES]


async def test_pipelined_inside_starttls(warta_server: StartWarta, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    store = Store()
    address = await warta_server(store, pki.server_context())
    async with _sender(address, start_tls=True, tls_context=pki.client_context()) as sender:
        for n in range(3):
            assert (await sender.send_one(FROM, f"r{n}@example.com", MESSAGE)).delivered
    assert [t.content for t in store.transactions] == [MESSAGE] * 3
    assert store.sessions == 1
    assert store.tls == [True, True, True]


def test_pipelined_on_uvloop(tmp_path: Path) -> None:
    # `warta mta` runs on uvloop: its transports must take the reply reader in turn too.
    uvloop = pytest.importorskip("uvloop")
    pki = make_pki(tmp_path)

    async def main() -> tuple[Store, Store]:
        plain, secure = Store(refuse={"gone@example.com"}), Store()
        config = ServerConfig("mta.test", 1_000_000, 30, 50)
        tls_config = ServerConfig("mta.test", 1_000_000, 30, 50, pki.server_context())
        servers = [await serve(plain, "127.0.0.1:0", config)]
        servers.append(await serve(secure, "127.0.0.1:0", tls_config))
        hosts = [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
        try:
            async with _sender(hosts[0]) as sender:
                pair = await sender.send(FROM, ["a@example.com", "gone@example.com"], MESSAGE)
                assert pair["a@example.com"].delivered
                assert pair["gone@example.com"].code == 550
                assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
            tls = _sender(hosts[1], start_tls=True, tls_context=pki.client_context())
            async with tls as sender:
                assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
                assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
        finally:
            for server in servers:
                server.close()
                await server.wait_closed()
        return plain, secure

    plain, secure = uvloop.run(main())
    assert [t.rcpt_tos for t in plain.transactions] == [["a@example.com"], [TO]]
    assert plain.sessions == 1
    assert secure.tls == [True, True]
    assert secure.sessions == 1


async def test_a_success_where_datas_reply_was_due_drops_the_session(
    scripted: StartScripted,
) -> None:
    # DATA is answered 354 or refused; a 250 there is some earlier command's reply, and
    # taking it for the message's would report mail delivered that was never sent.
    server = ScriptedServer(script={"DATA": ["250 2.0.0 OK"]})
    async with _sender(await scripted(server), command_timeout=5) as sender:
        confused = await sender.send_one(FROM, TO, MESSAGE)
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert (confused.outcome, confused.code) == (Outcome.TEMPORARY, None)
    assert len(server.payloads) == 1
    assert server.sessions == 2
