"""Abuse controls of the inbound listener: per-client rates shared by MTA processes through
Redis, DNSBL refusals naming the zone (against a real DNS server on 127.0.0.1), and no
backscatter: mail refused during the SMTP session never produces a bounce message."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from app.core.settings import Settings
from tests.helpers.daemons import ZoneDns
from tests.helpers.servers import free_port
from tests.helpers.sinks import SinkHandler
from workers.mta.abuse import dnsbl_name
from workers.mta_process import start_mta

MESSAGE = b"From: someone@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


def _greeting(address: str) -> tuple[int, str]:
    """Connect, read the greeting, quit; (code, text) of the greeting or the refusal."""
    host, _, port = address.rpartition(":")
    client = smtplib.SMTP(timeout=30)
    code, text = client.connect(host, int(port))
    if code == 220:
        client.quit()
    else:
        client.close()  # a refusal at connection closes the session
    return code, text.decode()


def _mails(address: str, count: int) -> list[int]:
    """MAIL commands on one connection (RSET between); the reply code of each."""
    host, _, port = address.rpartition(":")
    codes = []
    with smtplib.SMTP(host, int(port), timeout=30) as client:
        client.ehlo("client.example")
        for _ in range(count):
            code, _ = client.mail("someone@example.com")
            codes.append(code)
            client.rset()
    return codes


def _limited(settings: Settings, tmp_path: Path, name: str, **limits: object) -> Settings:
    return settings.model_copy(
        update={
            "mta_submission": f"127.0.0.1:{free_port()}",
            "mta_inbound": f"127.0.0.1:{free_port()}",
            "mta_spool_dir": tmp_path / f"spool-{name}",
            **limits,
        }
    )


async def test_the_connection_rate_is_shared_by_two_mta_processes(
    mta_settings: Settings, tmp_path: Path
) -> None:
    limits = {"mta_inbound_connection_rate": 0.01, "mta_inbound_connection_burst": 3}
    first_settings = _limited(mta_settings, tmp_path, "1", **limits)
    second_settings = _limited(mta_settings, tmp_path, "2", **limits)
    first = await start_mta(first_settings)
    try:
        second = await start_mta(second_settings)
        try:
            greetings = [
                await asyncio.to_thread(_greeting, settings.mta_inbound)
                for settings in (first_settings, second_settings, first_settings, second_settings)
            ]
        finally:
            await second.stop(grace=5)
    finally:
        await first.stop(grace=5)
    assert [code for code, _ in greetings] == [220, 220, 220, 421]
    assert "Too many connections from [127.0.0.1]" in greetings[3][1]


async def test_the_message_rate_is_shared_by_two_mta_processes(
    mta_settings: Settings, tmp_path: Path
) -> None:
    limits = {"mta_inbound_message_rate": 0.01, "mta_inbound_message_burst": 2}
    first_settings = _limited(mta_settings, tmp_path, "1", **limits)
    second_settings = _limited(mta_settings, tmp_path, "2", **limits)
    first = await start_mta(first_settings)
    try:
        second = await start_mta(second_settings)
        try:
            on_first = await asyncio.to_thread(_mails, first_settings.mta_inbound, 1)
            on_second = await asyncio.to_thread(_mails, second_settings.mta_inbound, 2)
        finally:
            await second.stop(grace=5)
    finally:
        await first.stop(grace=5)
    assert on_first == [250]
    assert on_second == [250, 450]


@pytest.fixture
def dnsbl_settings(mta_settings: Settings, dns: ZoneDns) -> Settings:
    """Two blocklists on the test's DNS server; only the second lists 127.0.0.1."""
    dns.add("1.0.0.127.listed.bl.example. 60 IN A 127.0.0.2\n")
    return mta_settings.model_copy(update={"mta_dnsbl": "quiet.bl.example,listed.bl.example"})


async def test_a_client_on_a_dnsbl_gets_554_naming_the_zone(
    dnsbl_settings: Settings, dns: ZoneDns
) -> None:
    service = await start_mta(dnsbl_settings)
    try:
        code, text = await asyncio.to_thread(_greeting, dnsbl_settings.mta_inbound)
    finally:
        await service.stop(grace=5)
    assert code == 554
    assert "blocked using listed.bl.example" in text
    assert dns.asked("1.0.0.127.quiet.bl.example") == 1


async def test_a_client_no_list_names_is_greeted(mta_settings: Settings, dns: ZoneDns) -> None:
    settings = mta_settings.model_copy(update={"mta_dnsbl": "quiet.bl.example"})
    service = await start_mta(settings)
    try:
        code, _ = await asyncio.to_thread(_greeting, settings.mta_inbound)
    finally:
        await service.stop(grace=5)
    assert code == 220
    assert dns.asked("1.0.0.127.quiet.bl.example") == 1


def _refused_transactions(address: str) -> list[int]:
    """Mail the inbound listener must refuse in the session, each from a real sender address
    whose domain the MTA can deliver to (so a bounce, if one were made, would arrive)."""
    host, _, port = address.rpartition(":")
    codes = []
    with smtplib.SMTP(host, int(port), timeout=30) as client:
        client.ehlo("client.example")
        client.mail("victim@example.com")
        codes.append(client.rcpt("someone@elsewhere.example.org")[0])  # relaying
        client.rset()
        client.mail("victim@example.com")
        client.rcpt("bounces+c1-abc@bounces.warta.example")
        client.putcmd("data")
        codes.append(client.getreply()[0])
        client.send(b"Subject: bare\nline\r\n.\r\n")  # a bare LF: refused after DATA
        codes.append(client.getreply()[0])
        client.rset()
        codes.append(client.mail("victim@example.com", ["SIZE=999999999"])[0])  # too big
    return codes


async def test_mail_refused_during_the_session_is_never_bounced(
    dnsbl_settings: Settings, mta_settings: Settings, remote: tuple[str, SinkHandler]
) -> None:
    # One listener refuses in the session; another refuses the client at connection.
    listed_settings = dnsbl_settings.model_copy(
        update={
            "mta_submission": f"127.0.0.1:{free_port()}",
            "mta_inbound": f"127.0.0.1:{free_port()}",
            "mta_spool_dir": mta_settings.mta_spool_dir.parent / "spool-listed",
        }
    )
    service = await start_mta(mta_settings)
    try:
        codes = await asyncio.to_thread(_refused_transactions, mta_settings.mta_inbound)
        listed = await start_mta(listed_settings)
        try:
            refused, _ = await asyncio.to_thread(_greeting, listed_settings.mta_inbound)
            assert await listed.spool.queued() == []
        finally:
            await listed.stop(grace=5)
        assert await service.spool.queued() == []
    finally:
        await service.stop(grace=5)
    assert codes == [550, 354, 550, 552]
    assert refused == 554
    # Stopped after draining: nothing was queued, so nothing can reach the sender's MX.
    assert remote[1].received == []
    var = Path(mta_settings.var_dir)
    for maildir in (var / "inbound" / "new", var / "replies" / "new"):
        assert not maildir.exists() or list(maildir.iterdir()) == []


def test_dnsbl_names_reverse_the_address() -> None:
    assert dnsbl_name("192.0.2.1", "bl.example") == "1.2.0.192.bl.example"
    assert dnsbl_name("::ffff:192.0.2.1", "bl.example.") == "1.2.0.192.bl.example"
    nibbles = "1.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2"
    assert dnsbl_name("2001:db8::1", "bl.example") == f"{nibbles}.bl.example"
    assert dnsbl_name("not-an-ip", "bl.example") is None
