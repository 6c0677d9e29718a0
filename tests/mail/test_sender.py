"""The SMTP sender against real aiosmtpd servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from aiosmtplib.email import parse_address

from app.mail.result import Outcome, SendResult, parse_enhanced_status
from app.mail.sender import (
    SenderClosedError,
    SmtpSender,
    SubmissionHost,
    is_bare_address,
    parse_submission_hosts,
)
from tests.helpers.memory_sender import MemorySender
from tests.helpers.recorders import (
    FROM,
    MESSAGE,
    TO,
    DropInData,
    Recorder,
    RejectAtRcpt,
    SlowData,
    StartServer,
)
from tests.helpers.servers import free_port


def _sender(hosts: str, **options: Any) -> SmtpSender:
    options.setdefault("pool_size", 2)
    return SmtpSender(hosts, local_hostname="warta.test.example", **options)


async def test_sink_receives_the_message_byte_exact(smtp_server: StartServer) -> None:
    sink = Recorder()
    async with _sender(smtp_server(sink)) as sender:
        result = await sender.send_one(FROM, TO, MESSAGE)
    assert result.outcome is Outcome.DELIVERED
    assert (result.code, result.enhanced_status, result.text) == (
        250,
        "2.0.0",
        "2.0.0 Queued as 1234",
    )
    [envelope] = sink.envelopes
    assert envelope.mail_from == FROM
    assert envelope.rcpt_tos == [TO]
    assert envelope.content == MESSAGE
    assert "BODY=8BITMIME" in envelope.mail_options


async def test_connections_carry_many_messages(smtp_server: StartServer) -> None:
    sink = Recorder()
    async with _sender(smtp_server(sink), pool_size=3) as sender:
        results = await asyncio.gather(
            *(sender.send_one(FROM, f"r{i}@example.com", MESSAGE) for i in range(60))
        )
    assert all(result.delivered for result in results)
    assert len(sink.envelopes) == 60
    assert sink.sessions == 3


async def test_reconnects_after_messages_per_connection(smtp_server: StartServer) -> None:
    sink = Recorder()
    async with _sender(smtp_server(sink), pool_size=1, messages_per_connection=5) as sender:
        for i in range(12):
            assert (await sender.send_one(FROM, f"r{i}@example.com", MESSAGE)).delivered
    assert sink.sessions == 3


async def test_451_at_rcpt_is_temporary(smtp_server: StartServer) -> None:
    server = RejectAtRcpt(reply="451 4.3.0 Mailbox busy, try again later")
    async with _sender(smtp_server(server)) as sender:
        result = await sender.send_one(FROM, TO, MESSAGE)
    assert result.outcome is Outcome.TEMPORARY
    assert result.code == 451
    assert result.enhanced_status == "4.3.0"
    assert result.text == "4.3.0 Mailbox busy, try again later"
    assert server.envelopes == []


async def test_550_at_rcpt_is_permanent_and_the_session_is_reset(smtp_server: StartServer) -> None:
    server = RejectAtRcpt(rejected={"gone@example.com"})
    async with _sender(smtp_server(server), pool_size=1) as sender:
        result = await sender.send_one(FROM, "gone@example.com", MESSAGE)
        assert result.outcome is Outcome.PERMANENT
        assert (result.code, result.enhanced_status) == (550, "5.1.1")
        assert result.describe() == "550 5.1.1 No such user"
        # Same connection: a clean session accepts the next transaction.
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert server.resets == 1
    assert server.sessions == 1
    assert [envelope.rcpt_tos for envelope in server.envelopes] == [[TO]]


async def test_each_recipient_gets_its_own_result(smtp_server: StartServer) -> None:
    server = RejectAtRcpt(rejected={"gone@example.com"})
    async with _sender(smtp_server(server)) as sender:
        results = await sender.send(
            FROM, ["a@example.com", "gone@example.com", "b@example.com"], MESSAGE
        )
    assert {rcpt: result.outcome for rcpt, result in results.items()} == {
        "a@example.com": Outcome.DELIVERED,
        "gone@example.com": Outcome.PERMANENT,
        "b@example.com": Outcome.DELIVERED,
    }
    assert [envelope.rcpt_tos for envelope in server.envelopes] == [
        ["a@example.com", "b@example.com"]
    ]


async def test_refused_sender_applies_to_every_recipient(smtp_server: StartServer) -> None:
    class RejectMail(Recorder):
        async def handle_MAIL(
            self,
            server: SMTPServer,
            session: Session,
            envelope: Envelope,
            address: str,
            options: list[str],
        ) -> str:
            return "553 5.7.1 Sender not allowed"

    async with _sender(smtp_server(RejectMail()), pool_size=1) as sender:
        results = await sender.send(FROM, ["a@example.com", "b@example.com"], MESSAGE)
    assert {result.enhanced_status for result in results.values()} == {"5.7.1"}
    assert all(result.outcome is Outcome.PERMANENT for result in results.values())


async def test_connection_dropped_in_data_is_temporary_and_the_pool_recovers(
    smtp_server: StartServer,
) -> None:
    server = DropInData()
    address = smtp_server(server)
    async with _sender(address, pool_size=1) as sender:
        dropped = await sender.send_one(FROM, TO, MESSAGE)
        assert dropped.outcome is Outcome.TEMPORARY
        assert dropped.code is None
        assert dropped.host == address
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
        assert sender.cooling_off() == [], "one dropped session does not make a host down"
    assert server.sessions == 2
    assert len(server.envelopes) == 1


async def test_a_slow_reply_times_out_as_temporary(smtp_server: StartServer) -> None:
    server = SlowData(delay=1.0)
    async with _sender(smtp_server(server), pool_size=1, data_timeout=0.2) as sender:
        slow = await sender.send_one(FROM, TO, MESSAGE)
        assert slow.outcome is Outcome.TEMPORARY
        assert slow.code is None
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert server.sessions == 2


async def test_all_mail_goes_to_the_live_host(smtp_server: StartServer) -> None:
    sink = Recorder()
    dead = SubmissionHost("127.0.0.1", free_port())
    live = smtp_server(sink)
    async with _sender(f"{dead},{live}", pool_size=4, host_cooloff=60) as sender:
        assert sender.cooling_off() == [dead]
        results = await asyncio.gather(
            *(sender.send_one(FROM, f"r{i}@example.com", MESSAGE) for i in range(20))
        )
    assert all(result.delivered and result.host == live for result in results)
    assert len(sink.envelopes) == 20
    assert sink.sessions == 4


async def test_load_is_spread_across_live_hosts(smtp_server: StartServer) -> None:
    first, second = Recorder(), Recorder()
    hosts = f"{smtp_server(first)},{smtp_server(second)}"
    async with _sender(hosts, pool_size=4) as sender:
        await asyncio.gather(
            *(sender.send_one(FROM, f"r{i}@example.com", MESSAGE) for i in range(40))
        )
    assert (first.sessions, second.sessions) == (2, 2)
    assert len(first.envelopes) + len(second.envelopes) == 40
    assert first.envelopes and second.envelopes


async def test_no_reachable_host_is_temporary_not_an_exception() -> None:
    hosts = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    async with _sender(hosts, connect_timeout=1) as sender:
        result = await sender.send_one(FROM, TO, MESSAGE)
    assert result.outcome is Outcome.TEMPORARY
    assert result.code is None
    assert "127.0.0.1" in result.text


async def test_a_host_coming_back_is_used_again() -> None:
    sink = Recorder()
    port = free_port()
    sender = _sender(f"127.0.0.1:{port}", pool_size=1, host_cooloff=60)
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    try:
        assert (await sender.send_one(FROM, TO, MESSAGE)).outcome is Outcome.TEMPORARY
        assert sender.cooling_off() == [SubmissionHost("127.0.0.1", port)]
        controller.start()
        # Cooling off is a preference: with no other host, it is tried anyway.
        assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
        assert sender.cooling_off() == []
    finally:
        await sender.aclose()
        controller.stop(no_assert=True)


async def test_utf8_addresses_need_smtputf8(smtp_server: StartServer) -> None:
    with_utf8, without = Recorder(), Recorder()
    async with _sender(smtp_server(with_utf8)) as sender:
        assert (await sender.send_one(FROM, "jürgen@example.de", MESSAGE)).delivered
    assert with_utf8.envelopes[0].rcpt_tos == ["jürgen@example.de"]
    async with _sender(smtp_server(without, enable_SMTPUTF8=False)) as sender:
        refused = await sender.send_one(FROM, "jürgen@example.de", MESSAGE)
    assert refused.outcome is Outcome.PERMANENT
    assert refused.enhanced_status == "5.6.7"
    assert without.envelopes == []


async def test_addresses_that_are_not_bare_mailboxes_are_refused(
    smtp_server: StartServer,
) -> None:
    sink = Recorder()
    smuggled = "evil@example.com>\r\nRCPT TO:<x@example.net"
    async with _sender(smtp_server(sink), pool_size=1) as sender:
        results = await sender.send(FROM, [smuggled, "Reader <reader@example.com>", TO], MESSAGE)
        bad_sender = await sender.send_one("News <news@example.org>", TO, MESSAGE)
    assert [result.enhanced_status for result in results.values()] == ["5.1.3", "5.1.3", "2.0.0"]
    assert results[smuggled].outcome is Outcome.PERMANENT
    assert (bad_sender.outcome, bad_sender.enhanced_status) == (Outcome.PERMANENT, "5.1.7")
    assert [envelope.rcpt_tos for envelope in sink.envelopes] == [[TO]]


async def test_addresses_aiosmtplib_would_rewrite_are_refused(smtp_server: StartServer) -> None:
    # parseaddr reads "a:b@x" as b@x and "a,b@x" as a: sent, they would reach someone else.
    sink = Recorder()
    rewritten = ["list:b@example.com", "a,b@example.com", "a@example.com,b@example.net"]
    async with _sender(smtp_server(sink), pool_size=1) as sender:
        results = await sender.send(FROM, [*rewritten, TO], MESSAGE)
        bad_sender = await sender.send_one("x:news@example.org", TO, MESSAGE)
    assert [results[r].enhanced_status for r in rewritten] == ["5.1.3"] * 3
    assert results[TO].delivered
    assert (bad_sender.outcome, bad_sender.enhanced_status) == (Outcome.PERMANENT, "5.1.7")
    assert [envelope.rcpt_tos for envelope in sink.envelopes] == [[TO]]


def _sent_as_given(address: str) -> bool:
    try:
        return parse_address(address) == address
    except ValueError:
        return False


def test_bare_addresses_are_those_aiosmtplib_sends_as_given() -> None:
    alphabet = ["a", ".", "@", '"', ",", ":", ";", "[", "]", "\\", "+", "ü"]
    for length in range(1, 5):
        for chars in itertools.product(alphabet, repeat=length):
            address = "".join(chars)
            assert is_bare_address(address) == _sent_as_given(address), address
    for address in ['"a.b"@example.com', "x@[127.0.0.1]", "jürgen@example.de", "postmaster"]:
        assert is_bare_address(address)


async def test_a_closed_sender_refuses_to_send(smtp_server: StartServer) -> None:
    sender = _sender(smtp_server(Recorder()))
    await sender.open()
    await sender.aclose()
    with pytest.raises(SenderClosedError):
        await sender.send_one(FROM, TO, MESSAGE)


def test_parse_submission_hosts() -> None:
    assert parse_submission_hosts("127.0.0.1:2587, mta.internal:25,[::1]:2587") == [
        SubmissionHost("127.0.0.1", 2587),
        SubmissionHost("mta.internal", 25),
        SubmissionHost("::1", 2587),
    ]
    assert str(SubmissionHost("::1", 2587)) == "[::1]:2587"
    for bad in ("", "no-port", "host:0", "host:abc", ":25"):
        with pytest.raises(ValueError):
            parse_submission_hosts(bad)


@pytest.mark.parametrize(
    ("code", "text", "outcome", "status"),
    [
        (250, "2.0.0 OK", Outcome.DELIVERED, "2.0.0"),
        (421, "4.7.0 Too many connections", Outcome.TEMPORARY, "4.7.0"),
        (452, "Insufficient storage", Outcome.TEMPORARY, None),
        (550, "5.1.1 <x@example.com>: user unknown", Outcome.PERMANENT, "5.1.1"),
        (554, "5.7.1\nrejected by policy", Outcome.PERMANENT, "5.7.1"),
        (503, "Bad sequence 5.5.1x", Outcome.PERMANENT, None),
    ],
)
def test_results_from_replies(code: int, text: str, outcome: Outcome, status: str | None) -> None:
    result = SendResult.from_reply(code, text)
    assert (result.outcome, result.code, result.enhanced_status) == (outcome, code, status)
    assert parse_enhanced_status(text) == status


async def test_memory_sender_records_and_replies_as_told() -> None:
    bounce = SendResult.from_reply(550, "5.1.1 No such user")
    sender = MemorySender({"gone@example.com": bounce})
    assert (await sender.send_one(FROM, TO, MESSAGE)).delivered
    assert await sender.send_one(FROM, "gone@example.com", MESSAGE) is bounce
    assert [(s.recipient, s.message) for s in sender.submissions] == [(TO, MESSAGE)]


async def test_a_better_preference_takes_all_sessions_while_it_is_live(
    smtp_server: StartServer,
) -> None:
    best, backup = Recorder(), Recorder()
    hosts = parse_submission_hosts(f"{smtp_server(backup)},{smtp_server(best)}")
    async with SmtpSender(hosts, pool_size=4, preferences=[20, 10]) as sender:
        await asyncio.gather(
            *(sender.send_one(FROM, f"r{i}@example.com", MESSAGE) for i in range(20))
        )
    assert (best.sessions, len(best.envelopes)) == (4, 20)
    assert (backup.sessions, backup.envelopes) == (0, [])


async def test_a_dead_preferred_host_falls_back_to_the_next_tier(smtp_server: StartServer) -> None:
    backup = Recorder()
    dead = SubmissionHost("127.0.0.1", free_port())
    hosts = [dead, *parse_submission_hosts(smtp_server(backup))]
    async with SmtpSender(hosts, pool_size=2, preferences=[10, 20], host_cooloff=60) as sender:
        result = await sender.send_one(FROM, TO, MESSAGE)
    assert result.delivered and result.host == str(hosts[1])
    assert len(backup.envelopes) == 1


def test_preferences_must_match_the_hosts() -> None:
    with pytest.raises(ValueError, match="one preference per host"):
        SmtpSender("127.0.0.1:2525,127.0.0.1:2526", preferences=[10])
