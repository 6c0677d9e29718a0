"""The MTA's DKIM step: mail a Warta worker signed with the MTA's own keys goes out as it
was signed, at every attempt; everything else is signed by the MTA, as before."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import httpx
import pytest

from app.core.settings import Settings
from app.mail.dkim import generate_key, leading_signers, sign_outgoing
from tests.helpers.api import create_campaign, eventually, post_json, wait_for_status
from tests.helpers.dkim import both_fail, both_pass
from tests.helpers.sinks import Received, SinkHandler
from workers.mta.service import MtaService

MESSAGE = (
    b"From: Warta News <news@example.com>\r\n"
    b"To: {rcpt}\r\n"
    b"Subject: November issue\r\n"
    b"Date: Thu, 26 Nov 2026 19:00:00 +0000\r\n"
    b"Message-ID: <{rcpt}.n1@warta.example>\r\n"
    b"List-Unsubscribe: <https://news.example/u/abc>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello reader.\r\n"
)
# A signature field with our d= and s= at the top, which no key of ours made.
FORGED = (
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=sel1;\r\n"
    b"\tt=1795000000; h=from:to:subject; bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=;\r\n"
    b"\tb=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n"
)


@pytest.fixture(params=["on", "off"])
def mta_settings(mta_settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Each test with the signatures made in the helper process, and in the event loop."""
    return mta_settings.model_copy(update={"mta_signing_helper": request.param})


@pytest.fixture
def record(mta_settings: Settings) -> str:
    """The MTA's key for example.com; its TXT record."""
    return generate_key(mta_settings.dkim_dir, "example.com", "sel1")


def message(rcpt: str) -> bytes:
    return MESSAGE.replace(b"{rcpt}", rcpt.encode())


async def submit(settings: Settings, rcpt: str, data: bytes) -> None:
    """Submit through the MTA's submission listener (127.0.0.1 is a trusted network)."""
    host, _, port = settings.mta_submission.rpartition(":")

    def send() -> None:
        with smtplib.SMTP(host, int(port), timeout=10) as client:
            client.sendmail("bounce@bounces.warta.example", [rcpt], data)

    await asyncio.to_thread(send)


async def arrived(remote: SinkHandler, rcpt: str) -> Received:
    async def there() -> bool:
        return any(rcpt in item.rcpt_tos for item in remote.snapshot())

    await eventually(there, 30, f"message to {rcpt} at the sink")
    (item,) = [item for item in remote.snapshot() if rcpt in item.rcpt_tos]
    return item


async def test_a_message_signed_with_the_mtas_keys_goes_out_as_it_was_signed(
    mta: MtaService, mta_settings: Settings, remote: tuple[str, SinkHandler], record: str
) -> None:
    signed = sign_outgoing(mta_settings.dkim_dir, message("ok@example.com"))
    await submit(mta_settings, "ok@example.com", signed)
    received = await arrived(remote[1], "ok@example.com")
    assert received.data == signed
    both_pass(received.data, (record,))


async def test_a_retried_presigned_message_is_not_signed_again(
    mta: MtaService, mta_settings: Settings, remote: tuple[str, SinkHandler], record: str
) -> None:
    remote[1].rcpt_replies["slow@example.com"] = ["451 4.3.0 try again", "451 4.3.0 again"]
    signed = sign_outgoing(mta_settings.dkim_dir, message("slow@example.com"))
    await submit(mta_settings, "slow@example.com", signed)
    received = await arrived(remote[1], "slow@example.com")
    assert received.data == signed  # the third attempt's bytes: still the one signature
    both_pass(received.data, (record,))


async def test_a_forged_signature_with_our_tags_is_passed_on_and_fails(
    mta: MtaService, mta_settings: Settings, remote: tuple[str, SinkHandler], record: str
) -> None:
    """What a submitter gains by forging: its own mail fails DKIM instead of passing."""
    forged = FORGED + message("forged@example.com")
    await submit(mta_settings, "forged@example.com", forged)
    received = await arrived(remote[1], "forged@example.com")
    assert received.data == forged
    both_fail(received.data, (record,))


async def test_unsigned_mail_and_mail_signed_with_other_keys_are_signed_by_the_mta(
    mta: MtaService,
    mta_settings: Settings,
    remote: tuple[str, SinkHandler],
    record: str,
    tmp_path: Path,
) -> None:
    await submit(mta_settings, "plain@example.com", message("plain@example.com"))
    plain = await arrived(remote[1], "plain@example.com")
    assert leading_signers(plain.data, 3) == [("example.com", "sel1")]
    both_pass(plain.data, (record,))
    helper = mta.agent.signing
    if mta_settings.mta_signing_helper == "on":  # signed by the helper, not in the loop
        assert helper is not None and helper.pid is not None and helper.signed_here == 0
    else:
        assert helper is None
    old_record = generate_key(tmp_path / "old", "example.com", "old")
    elsewhere = sign_outgoing(tmp_path / "old", message("other@example.com"))
    await submit(mta_settings, "other@example.com", elsewhere)
    other = await arrived(remote[1], "other@example.com")
    assert other.data.endswith(elsewhere)
    assert leading_signers(other.data, 3) == [("example.com", "sel1"), ("example.com", "old")]
    both_pass(other.data, (record, old_record), signatures=2)


async def test_a_campaign_arrives_signed_once_and_the_signature_verifies(
    mta: MtaService,
    mta_settings: Settings,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
    record: str,
) -> None:
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    readers = {f"reader{n}@example.com" for n in range(3)}
    for address in readers:
        await post_json(api, "/api/v1/subscribers", {"email": address, "lists": [news]})
    campaign = await create_campaign(api, news)
    await post_json(api, f"/api/v1/campaigns/{campaign}/schedule", {})
    await wait_for_status(api, campaign, "finished")
    for address in readers:
        received = await arrived(remote[1], address)
        assert leading_signers(received.data, 3) == [("example.com", "sel1")]
        assert received.data.count(b"DKIM-Signature:") == 1
        both_pass(received.data, (record,))
        assert b"list-unsubscribe-post" in received.data.split(b"bh=")[0]
