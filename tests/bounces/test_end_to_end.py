"""Bounces and complaints end to end through the real MTA: rejections at RCPT by a remote MX,
DSNs and ARF reports sent by SMTP to the inbound listener, mailto unsubscribes, forgeries and
oversized reports."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.events import counts_by_kind
from app.core.settings import Settings
from app.mail import identity
from app.mail.identity import Kind
from app.models import (
    Bounce,
    Send,
    SendStatus,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionScope,
)
from tests.helpers.api import create_campaign, eventually, post_json, wait_for_status
from tests.helpers.reports import (
    arf,
    deliver_report,
    dsn,
    inbound_processed,
    smtp_transaction,
)
from tests.helpers.sinks import Received, SinkHandler
from workers.mta.service import MtaService

Sessions = async_sessionmaker[AsyncSession]


async def _send_campaign(api: httpx.AsyncClient, addresses: list[str]) -> int:
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    for address in addresses:
        await post_json(api, "/api/v1/subscribers", {"email": address, "lists": [news]})
    campaign = await create_campaign(api, news, text="Hello")
    await post_json(api, f"/api/v1/campaigns/{campaign}/schedule", {})
    await wait_for_status(api, campaign, "finished")
    return campaign


async def _rows(sessionmaker: Sessions, campaign_id: int) -> dict[str, Send]:
    async with sessionmaker() as session:
        rows = await session.scalars(sa.select(Send).where(Send.campaign_id == campaign_id))
        return {row.email: row for row in rows}


async def _settled(sessionmaker: Sessions, campaign_id: int, count: int) -> dict[str, Send]:
    """The ledger rows once the MTA has reported a final outcome for all of them."""

    async def done() -> bool:
        rows = await _rows(sessionmaker, campaign_id)
        final = (SendStatus.delivered, SendStatus.bounced)
        return len(rows) == count and all(row.status in final for row in rows.values())

    await eventually(done, what="final outcomes in the ledger")
    return await _rows(sessionmaker, campaign_id)


async def _suppressions(sessionmaker: Sessions) -> dict[str, Suppression]:
    async with sessionmaker() as session:
        return {s.address: s for s in await session.scalars(sa.select(Suppression))}


async def _stats(api: httpx.AsyncClient, campaign_id: int) -> dict[str, Any]:
    response = await api.get(f"/api/v1/campaigns/{campaign_id}/stats")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _deliver_report(settings: Settings, recipient: str, data: bytes) -> tuple[int, str]:
    return await deliver_report(settings, recipient, data)


def _received(remote: SinkHandler) -> dict[str, Received]:
    return {item.rcpt_tos[0]: item for item in remote.snapshot()}


async def test_rcpt_rejections_are_classified_suppressed_and_counted(
    mta: MtaService,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
    sessionmaker: Sessions,
) -> None:
    handler = remote[1]
    handler.rcpt_replies["gone@example.com"] = ["550 5.1.1 <gone@example.com>: User unknown"]
    handler.rcpt_replies["listed@example.com"] = [
        "550 5.7.1 Service unavailable; client host [127.0.0.1] blocked using zen.spamhaus.org"
    ]
    handler.rcpt_replies["full@example.com"] = ["552 5.2.2 Mailbox full"]
    addresses = ["ok@example.com", "gone@example.com", "listed@example.com", "full@example.com"]
    campaign = await _send_campaign(api, addresses)
    rows = await _settled(sessionmaker, campaign, 4)
    assert rows["ok@example.com"].status is SendStatus.delivered
    assert {rows[a].status for a in addresses[1:]} == {SendStatus.bounced}

    async def counted() -> bool:
        stats = await _stats(api, campaign)
        return bool(stats["bounced_hard"] + stats["bounced_soft"] + stats["bounced_informational"])

    await eventually(counted, what="bounce records")
    stats = await _stats(api, campaign)
    assert stats["bounced"] == 3 and stats["delivered"] == 1
    assert (stats["bounced_hard"], stats["bounced_soft"], stats["bounced_informational"]) == (
        1,
        1,
        1,
    )
    assert stats["bounces_by_class"] == {
        "invalid_recipient": 1,
        "reputation_block": 1,
        "mailbox_full": 1,
    }
    async with sessionmaker() as session:
        events = await counts_by_kind(session, campaign)
    assert (events["delivered"], events["bounced"]) == (1, 3)
    # Only the unknown user is suppressed; the blocklisted sender IP is not the address's fault.
    suppressed = await _suppressions(sessionmaker)
    assert set(suppressed) == {"gone@example.com"}
    assert (suppressed["gone@example.com"].scope, suppressed["gone@example.com"].source) == (
        SuppressionScope.all,
        "bounce",
    )
    async with sessionmaker() as session:
        status = dict((await session.execute(sa.select(Subscriber.email, Subscriber.status))).all())
    assert status["gone@example.com"] is SubscriberStatus.blocklisted
    assert status["listed@example.com"] is SubscriberStatus.enabled
    assert status["full@example.com"] is SubscriberStatus.enabled

    # The evidence: listed per campaign, each with the reply it came from.
    page = (await api.get("/api/v1/bounces", params={"campaign_id": campaign})).json()
    by_email = {item["email"]: item for item in page["items"]}
    assert set(by_email) == set(addresses[1:])
    gone = by_email["gone@example.com"]
    assert (gone["source"], gone["severity"], gone["action"]) == ("smtp", "hard", "suppressed")
    assert by_email["full@example.com"]["action"] == "scored 1"
    detail = (await api.get(f"/api/v1/bounces/{gone['id']}")).json()
    assert detail["raw"] == "550 5.1.1 <gone@example.com>: User unknown"
    one = (await api.get("/api/v1/bounces", params={"email": "GONE@example.com"})).json()
    assert [item["id"] for item in one["items"]] == [gone["id"]]

    # Reversible: lifting the suppression re-enables the subscriber.
    assert (await api.delete("/api/v1/suppressions/gone@example.com")).status_code == 204
    async with sessionmaker() as session:
        subscriber = await session.scalar(
            sa.select(Subscriber).where(Subscriber.email == "gone@example.com")
        )
    assert subscriber is not None and subscriber.status is SubscriberStatus.enabled


async def test_dsn_and_complaint_by_smtp_act_on_the_subscriber_and_the_stats(
    mta: MtaService,
    mta_settings: Settings,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
    sessionmaker: Sessions,
) -> None:
    campaign = await _send_campaign(api, ["later@example.com", "annoyed@example.com"])
    await _settled(sessionmaker, campaign, 2)
    received = _received(remote[1])
    later = received["later@example.com"]
    # The remote MX accepted, then found the mailbox gone: a DSN to the VERP return path.
    code, _ = await _deliver_report(
        mta_settings,
        later.mail_from,
        dsn(later.mail_from, "later@example.com", "550 5.1.1 user unknown", "<x@y>"),
    )
    assert code == 250
    # The other recipient pressed "report spam": an ARF report to the complaints address.
    code, _ = await _deliver_report(
        mta_settings,
        "complaints@bounces.warta.example",
        arf("annoyed@example.com", received["annoyed@example.com"].data),
    )
    assert code == 250

    async def both() -> bool:
        stats = await _stats(api, campaign)
        return bool(stats["bounced_hard"] == 1 and stats["complained"] == 1)

    await eventually(both, what="the DSN and the complaint acted on")
    rows = await _rows(sessionmaker, campaign)
    assert rows["later@example.com"].status is SendStatus.bounced
    assert rows["annoyed@example.com"].status is SendStatus.complained
    suppressed = await _suppressions(sessionmaker)
    assert suppressed["later@example.com"].scope is SuppressionScope.all
    assert suppressed["annoyed@example.com"].scope is SuppressionScope.broadcast
    assert suppressed["annoyed@example.com"].source == "complaint"
    async with sessionmaker() as session:
        memberships = (
            await session.execute(
                sa.select(Subscriber.email, Subscription.status).join(
                    Subscription, Subscription.subscriber_id == Subscriber.id
                )
            )
        ).all()
        bounce = await session.scalar(sa.select(Bounce).where(Bounce.kind == "bounce"))
    assert dict(memberships)["annoyed@example.com"] is SubscriptionStatus.unsubscribed
    assert dict(memberships)["later@example.com"] is SubscriptionStatus.confirmed
    assert bounce is not None and bounce.source == "dsn"
    assert "Final-Recipient: rfc822; later@example.com" in bounce.raw
    await inbound_processed(mta_settings)


async def test_mailto_unsubscribe_from_list_unsubscribe_header(
    mta: MtaService,
    mta_settings: Settings,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
    sessionmaker: Sessions,
) -> None:
    campaign = await _send_campaign(api, ["leaving@example.com"])
    await _settled(sessionmaker, campaign, 1)
    message = _received(remote[1])["leaving@example.com"].message
    uris = [part.strip().strip("<>") for part in str(message["List-Unsubscribe"]).split(",")]
    # RFC 8058: the HTTPS URL first, with the one-click POST header; the mailto after it.
    assert uris[0].startswith("http") and uris[1].startswith("mailto:unsubscribe+")
    assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    address = uris[1].removeprefix("mailto:")
    assert address.endswith("@bounces.warta.example")
    code, _ = await asyncio.to_thread(
        smtp_transaction,
        mta_settings.mta_inbound,
        "leaving@example.com",
        [address],
        b"From: leaving@example.com\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n",
    )
    assert code == 250

    async def unsubscribed() -> bool:
        return bool((await _stats(api, campaign))["unsubscribed"] == 1)

    await eventually(unsubscribed, what="the mailto unsubscribe")
    async with sessionmaker() as session:
        assert await session.scalar(sa.select(Subscription.status)) is (
            SubscriptionStatus.unsubscribed
        )


async def test_forged_unknown_foreign_and_oversized_reports_change_nothing(
    mta: MtaService,
    mta_settings: Settings,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
    sessionmaker: Sessions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    campaign = await _send_campaign(api, ["target@example.com"])
    rows = await _settled(sessionmaker, campaign, 1)
    row = rows["target@example.com"]
    genuine = _received(remote[1])["target@example.com"].mail_from
    message_id = identity.message_id(
        mta_settings.effective_secret_key(), row.id, mta_settings.mta_hostname, Kind.CAMPAIGN
    )

    # A report for another domain is refused at RCPT.
    code, reply = await _deliver_report(mta_settings, "postmaster@example.org", b"x\r\n")
    assert code == 550 and "bounces.warta.example" in reply

    # A token with a bad signature: forged, whatever the report says.
    forged = genuine.rsplit("-", 1)[0] + "-aaaaaaaaaa@bounces.warta.example"
    report = dsn(forged, "target@example.com", "550 5.1.1 user unknown", message_id)
    assert (await _deliver_report(mta_settings, forged, report))[0] == 250
    # A well-signed token for a row that does not exist.
    unknown = identity.verp_address(
        mta_settings.effective_secret_key(), 999_999, "bounces.warta.example", Kind.CAMPAIGN
    )
    report = dsn(unknown, "target@example.com", "550 5.1.1 user unknown", "<a@b>")
    assert (await _deliver_report(mta_settings, unknown, report))[0] == 250
    await inbound_processed(mta_settings)
    assert "forged report ignored" in caplog.text
    assert "row 999999, which does not exist" in caplog.text
    assert await _suppressions(sessionmaker) == {}
    assert (await _rows(sessionmaker, campaign))["target@example.com"].status is (
        SendStatus.delivered
    )

    # Over the size limit: refused before anything is stored.
    limit = mta_settings.mta_max_message_size
    huge = dsn(genuine, "target@example.com", "550 5.1.1 user unknown", "<a@b>", limit + 10_000)
    code, reply = await _deliver_report(mta_settings, genuine, huge)
    assert code == 552, reply
    # Just under it (about 25 MB): accepted, and only its head is read.
    big = dsn(genuine, "target@example.com", "552 5.2.2 mailbox full", "<a@b>", limit - 200_000)
    assert len(big) > 24 * 1024 * 1024
    assert (await _deliver_report(mta_settings, genuine, big))[0] == 250

    async def recorded() -> bool:
        return bool((await _stats(api, campaign))["bounced_soft"] == 1)

    await eventually(recorded, what="the large report acted on")
    async with sessionmaker() as session:
        kept = (await session.scalars(sa.select(Bounce).order_by(Bounce.id))).all()
    # The forged and the unknown-row reports are kept for an operator, acting on nothing.
    assert [(b.action, b.campaign_id, b.send_id) for b in kept[:2]] == [
        ("unattributed: forged token", None, None),
        ("unattributed: unknown row", None, None),
    ]
    [bounce] = kept[2:]
    assert bounce.bounce_class == "mailbox_full"  # the refused 5.1.1 report left no trace
    assert len(bounce.raw.encode()) <= mta_settings.bounce_raw_max_bytes


async def test_a_transactional_message_refused_by_the_remote_is_bounced_once(
    mta: MtaService,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
    sessionmaker: Sessions,
) -> None:
    remote[1].rcpt_replies["gone@example.com"] = ["550 5.1.1 <gone@example.com>: User unknown"]
    response = await api.post(
        "/api/v1/messages",
        json={
            "from": "shop@example.com",
            "to": "gone@example.com",
            "subject": "Your receipt",
            "text": "Thank you.",
        },
    )
    assert response.status_code == 202, response.text
    message_id = response.json()["messages"][0]["id"]

    async def bounced() -> bool:
        shown = (await api.get(f"/api/v1/messages/{message_id}")).json()
        return bool(shown["status"] == "bounced")

    await eventually(bounced, what="the transactional bounce")
    shown = (await api.get(f"/api/v1/messages/{message_id}")).json()
    assert [event["kind"] for event in shown["events"]].count("bounced") == 1
    assert "5.1.1" in shown["last_reply"]
    suppression = (await _suppressions(sessionmaker))["gone@example.com"]
    assert suppression.source == "bounce"
    async with sessionmaker() as session:
        kept = await session.scalar(sa.select(Bounce).where(Bounce.email == "gone@example.com"))
    assert kept is not None and kept.message_id == message_id


async def test_a_later_dsn_for_a_transactional_message_bounces_it(
    mta: MtaService,
    mta_settings: Settings,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
) -> None:
    response = await api.post(
        "/api/v1/messages",
        json={"from": "shop@example.com", "to": "moved@example.com", "subject": "Hi", "text": "x"},
    )
    assert response.status_code == 202, response.text
    message_id = response.json()["messages"][0]["id"]

    async def status_is(wanted: str) -> bool:
        shown = (await api.get(f"/api/v1/messages/{message_id}")).json()
        return bool(shown["status"] == wanted)

    await eventually(lambda: status_is("delivered"), what="delivery")
    original = _received(remote[1])["moved@example.com"]
    code, _ = await _deliver_report(
        mta_settings,
        original.mail_from,
        dsn(original.mail_from, "moved@example.com", "550 5.1.1 user unknown", "<x@y>"),
    )
    assert code == 250
    await eventually(lambda: status_is("bounced"), what="the DSN's bounce")
    shown = (await api.get(f"/api/v1/messages/{message_id}")).json()
    bounced = [event for event in shown["events"] if event["kind"] == "bounced"]
    assert len(bounced) == 1
