"""Quarantine with a real spamd and a real clamd: spam over the threshold and infected
replies are stored and flagged, but neither announced to webhooks nor forwarded; a clean
reply is scored, announced and forwarded to the campaign's address."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.settings import Settings
from app.mail.reply_address import ReplyTarget, reply_address
from app.models import Event, EventKind
from tests.helpers.api import create_campaign, eventually, post_json
from tests.helpers.daemons import (
    TEST_MALWARE_MARKER,
    TEST_SIGNATURE_NAME,
    ClamdServer,
    SpamdServer,
)
from tests.helpers.sinks import SinkHandler
from workers.mta.service import MtaService
from workers.mta_process import start_mta

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture
def scanned_settings(
    mta_settings: Settings, spamd_server: SpamdServer, clamd_server: ClamdServer
) -> Settings:
    return mta_settings.model_copy(
        update={"spamd": spamd_server.address, "clamd": clamd_server.address}
    )


@pytest.fixture
async def scanned_mta(scanned_settings: Settings) -> Any:
    service: MtaService = await start_mta(scanned_settings)
    yield service
    await service.stop(grace=5)


def _reply(to: str, body: str, attachment: bytes = b"") -> bytes:
    message = EmailMessage()
    message["From"] = "Reader <reader@reader.example>"
    message["To"] = to
    message["Subject"] = "Re: Hello"
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain="reader.example")
    message.set_content(body)
    if attachment:
        message.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename="tool.bin"
        )
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def _send(settings: Settings, recipient: str, data: bytes) -> int:
    host, _, port = settings.mta_inbound.rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=30) as client:
        client.ehlo("mx.reader.example")
        client.mail("reader@reader.example")
        client.rcpt(recipient)
        return client.data(data)[0]


async def test_spam_and_infected_replies_are_quarantined_clean_ones_delivered(
    api: httpx.AsyncClient,
    scanned_mta: MtaService,
    scanned_settings: Settings,
    remote: tuple[str, SinkHandler],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    subscriber = await post_json(
        api, "/api/v1/subscribers", {"email": "reader@example.com", "lists": [news]}
    )
    campaign = await create_campaign(
        api, news, track_replies=True, reply_forward_to="desk@example.com"
    )
    address = reply_address(
        scanned_settings.effective_secret_key(),
        scanned_settings.reply_domain(),
        ReplyTarget(campaign_id=campaign, subscriber_id=subscriber["id"]),
    )
    spam = _reply(address, f"Buy now!\n{GTUBE}\n")
    infected = _reply(address, "Have a look at this tool.\n", b"MZ" + TEST_MALWARE_MARKER)
    clean = _reply(address, "Thank you for the newsletter, I enjoyed the article.\n")
    for data in (spam, infected, clean):
        assert await asyncio.to_thread(_send, scanned_settings, address, data) == 250

    async def stored() -> bool:
        response = await api.get("/api/v1/inbound", params={"campaign_id": campaign})
        return len(response.json()["items"]) == 3

    await eventually(stored, within=60, what="three replies stored")
    items = (await api.get("/api/v1/inbound", params={"campaign_id": campaign})).json()["items"]
    by_verdict = {item["verdict"]: item for item in items}
    assert set(by_verdict) == {"spam", "infected", "clean"}
    assert by_verdict["spam"]["spam_score"] >= 5.0
    assert by_verdict["infected"]["malware"].startswith(TEST_SIGNATURE_NAME)
    assert by_verdict["clean"]["spam_score"] < 5.0
    assert by_verdict["clean"]["malware"] == ""
    quarantined = (await api.get("/api/v1/inbound", params={"verdict": "spam"})).json()["items"]
    assert [item["id"] for item in quarantined] == [by_verdict["spam"]["id"]]

    async def forwarded() -> bool:
        return bool(remote[1].received)

    await eventually(forwarded, within=30, what="the clean reply forwarded")
    [forward] = remote[1].received
    assert forward.rcpt_tos == ("desk@example.com",)
    assert forward.mail_from == "<>"  # the null sender: a forward never bounces back
    assert str(forward.message["Reply-To"]) == "Reader <reader@reader.example>"
    assert b"Thank you for the newsletter" in forward.data

    async with sessionmaker() as session:
        events = (
            await session.scalars(sa.select(Event).where(Event.kind == EventKind.inbound_received))
        ).all()
    assert [event.data["inbound_id"] for event in events] == [by_verdict["clean"]["id"]]

    async def marked() -> bool:
        detail = (await api.get(f"/api/v1/inbound/{by_verdict['clean']['id']}")).json()
        return bool(detail["forwarded_to"] == "desk@example.com")

    await eventually(marked, what="the clean reply marked as forwarded")
