"""The spamd and clamd clients against the real daemons, and against daemons that fail."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.settings import Settings
from app.safety.clamd import ClamdClient, ClamdError, ClamdUnavailable, MalwareVerdict
from app.safety.daemon import DaemonAddress
from app.safety.spamd import SpamdClient, SpamdError, SpamdUnavailable, parse_reply
from tests.helpers.daemons import (
    TEST_MALWARE_MARKER,
    TEST_SIGNATURE_NAME,
    ClamdServer,
    SpamdServer,
    free_port,
)

PLAIN = (
    b"From: Town Garden Club <news@garden.example>\r\n"
    b"To: reader@example.com\r\n"
    b"Subject: Our October newsletter\r\n"
    b"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <october-2026.1@garden.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Hello,\r\n\r\nThis month we planted trees in the park and repaired the bridge.\r\n"
    b"See you at the meeting next Tuesday.\r\n"
)
SPAM = (
    b"From: WINNER <winner@prize.example>\r\n"
    b"To: reader@example.com\r\n"
    b"Subject: FREE MONEY!!! CLAIM YOUR PRIZE NOW\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/html\r\n\r\n"
    b"<html><body><p>100% FREE!!! Viagra, cheap meds. You are a WINNER! Claim your "
    b"US$25,000,000 lottery prize, act now, no credit check, risk free, guaranteed!</p>"
    b"</body></html>\r\n"
)


async def test_spamd_scores_plain_mail_low_and_spam_high(spamd_server: SpamdServer) -> None:
    client = SpamdClient(spamd_server.address)
    await client.ping()

    plain = await client.score(PLAIN)
    spam = await client.score(SPAM)

    assert plain.score < 2 and not plain.is_spam
    assert spam.score > 5 and spam.is_spam
    assert spam.threshold == 5.0
    names = {rule.name for rule in spam.rules}
    assert {"SUBJ_ALL_CAPS", "MIME_HTML_ONLY"} <= names
    assert all(rule.description for rule in spam.rules)
    assert sum(rule.score for rule in spam.rules) == pytest.approx(spam.score, abs=0.05)


async def test_spamd_down_is_unavailable() -> None:
    with pytest.raises(SpamdUnavailable, match="cannot connect"):
        await SpamdClient(f"127.0.0.1:{free_port()}").score(PLAIN)


async def test_spamd_that_never_answers_times_out(silent_daemon: str) -> None:
    with pytest.raises(SpamdUnavailable, match=r"no answer within 0\.3 s"):
        await SpamdClient(silent_daemon, timeout=0.3).score(PLAIN)


@pytest.mark.parametrize("over", ["tcp", "unix"])
async def test_clamd_finds_the_test_signature(clamd_server: ClamdServer, over: str) -> None:
    address = clamd_server.address if over == "tcp" else clamd_server.socket_path
    client = ClamdClient(address)
    await client.ping()
    # Larger than one INSTREAM chunk, with the marker straddling a chunk boundary.
    infected = b"x" * (64 * 1024 - 5) + TEST_MALWARE_MARKER + b"y" * 100_000

    assert await client.scan(b"an ordinary invoice\n" * 5000) == MalwareVerdict(infected=False)
    verdict = await client.scan(infected)

    assert verdict.infected
    assert verdict.signature is not None and verdict.signature.startswith(TEST_SIGNATURE_NAME)


async def test_clamd_refusing_an_oversized_stream_is_an_error(clamd_server: ClamdServer) -> None:
    with pytest.raises(ClamdError, match="size limit") as caught:
        await ClamdClient(clamd_server.address).scan(b"\0" * (31 * 1024 * 1024))
    assert not isinstance(caught.value, ClamdUnavailable)


async def test_clamd_down_is_unavailable() -> None:
    with pytest.raises(ClamdUnavailable, match="cannot connect"):
        await ClamdClient(f"127.0.0.1:{free_port()}").scan(b"data")
    with pytest.raises(ClamdUnavailable, match="cannot connect"):
        await ClamdClient("/nonexistent/clamd.sock").scan(b"data")


async def test_clamd_that_never_answers_times_out(silent_daemon: str) -> None:
    with pytest.raises(ClamdUnavailable, match=r"no answer within 0\.3 s"):
        await ClamdClient(silent_daemon, timeout=0.3).scan(b"data")


def test_spamd_error_replies_and_garbage_are_errors_not_verdicts() -> None:
    with pytest.raises(SpamdError, match="error 76: Bad header line"):
        parse_reply(b"SPAMD/1.0 76 Bad header line: (Content-length mismatch)\r\n\r\n")
    with pytest.raises(SpamdError, match="not a SPAMD reply"):
        parse_reply(b"HTTP/1.1 400 Bad Request\r\n\r\n")


@pytest.mark.parametrize(
    "value", ["127.0.0.1:783", "[::1]:3310", "spamd.internal:783", "/run/clamd.ctl"]
)
def test_daemon_addresses_are_host_port_or_a_socket_path(value: str) -> None:
    settings = Settings(spamd=value, clamd=value, _env_file=None)  # type: ignore[call-arg]
    assert str(DaemonAddress.parse(settings.spamd)) == value


@pytest.mark.parametrize("value", ["spamd", "127.0.0.1", "host:port", "relative/clamd.sock"])
def test_other_daemon_addresses_are_refused_at_startup(value: str) -> None:
    with pytest.raises(ValidationError, match="neither host:port nor an absolute socket path"):
        Settings(clamd=value, _env_file=None)  # type: ignore[call-arg]


def test_sending_ips_must_be_addresses() -> None:
    assert Settings(sending_ips="192.0.2.1, 2001:db8::1", _env_file=None).sending_ips  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match=r"'mta\.example' in WARTA_SENDING_IPS"):
        Settings(sending_ips="192.0.2.1,mta.example", _env_file=None)  # type: ignore[call-arg]
