"""Replies end to end: a campaign sent through the MTA carries a signed Reply-To; a person's
reply delivered over SMTP to the inbound listener is stored with its SPF/DKIM/DMARC
verdicts, listed by the API and posted to a webhook receiver. Forged tokens are kept
unattributed; auto-replies stay with the bounce processor."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import dkim
import httpx

from app.core.settings import Settings
from app.mail.reply_address import parse_reply_address
from tests.helpers.api import create_campaign, eventually, post_json, wait_for_status
from tests.helpers.receivers import receiver
from tests.helpers.sinks import SinkHandler
from tests.inbound.conftest import DkimKey
from workers.mta.service import MtaService


def _reply(
    to: str, sender: str, *, attachment: bytes = b"", headers: dict[str, str] | None = None
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Reader <{sender}>"
    message["To"] = to
    message["Subject"] = "Re: Hello"
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content("Thanks, I loved it.\n")
    message.add_alternative("<p>Thanks, I <b>loved</b> it.</p>", subtype="html")
    if attachment:
        message.add_attachment(
            attachment, maintype="application", subtype="pdf", filename="notes.pdf"
        )
    return message


def _signed(message: EmailMessage, key: DkimKey, domain: str) -> bytes:
    data = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    signature = dkim.sign(
        data,
        b"sel",
        domain.encode(),
        key.private_pem,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return signature + data


def _send(settings: Settings, mail_from: str, recipient: str, data: bytes) -> tuple[int, bytes]:
    host, _, port = settings.mta_inbound.rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=30) as client:
        client.ehlo("mx.reader.example")
        client.mail(mail_from)
        client.rcpt(recipient)
        return client.data(data)


async def _send_campaign(api: httpx.AsyncClient, remote: SinkHandler) -> tuple[int, int, str]:
    """A campaign with tracked replies to one subscriber; (campaign, subscriber, Reply-To)."""
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    subscriber = await post_json(
        api, "/api/v1/subscribers", {"email": "reader@example.com", "lists": [news]}
    )
    campaign = await create_campaign(
        api, news, track_replies=True, reply_to="Newsroom <desk@example.com>"
    )
    await post_json(api, f"/api/v1/campaigns/{campaign}/schedule", {})
    await wait_for_status(api, campaign, "finished")

    async def delivered() -> bool:
        return bool(remote.received)

    await eventually(delivered, what="delivery to the remote MX")
    reply_to = str(remote.received[0].message["Reply-To"])
    return campaign, int(subscriber["id"]), reply_to


async def _inbound(api: httpx.AsyncClient, **filters: Any) -> list[dict[str, Any]]:
    response = await api.get("/api/v1/inbound", params=filters)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_reply_is_stored_listed_and_posted_with_its_verdicts(
    api: httpx.AsyncClient,
    worker: None,
    mta: MtaService,
    mta_settings: Settings,
    remote: tuple[str, SinkHandler],
    dkim_key: DkimKey,
) -> None:
    async with receiver() as hook:
        await post_json(
            api, "/api/v1/webhooks", {"url": hook.url, "event_types": ["inbound.received"]}
        )
        campaign, subscriber, reply_to = await _send_campaign(api, remote[1])
        assert reply_to.startswith("Newsroom <reply+")
        address = reply_to.partition("<")[2].rstrip(">")
        assert address.endswith("@reply.warta.example")
        target = parse_reply_address(mta_settings.effective_secret_key(), address)
        assert target is not None and (target.campaign_id, target.subscriber_id) == (
            campaign,
            subscriber,
        )

        reply = _reply(address, "reader@reader.example", attachment=b"%PDF-1.4 notes")
        data = _signed(reply, dkim_key, "reader.example")
        code, _ = await asyncio.to_thread(
            _send, mta_settings, "reader@reader.example", address, data
        )
        assert code == 250

        async def listed() -> bool:
            return bool(await _inbound(api, campaign_id=campaign))

        await eventually(listed, what="the reply in GET /inbound")
        [item] = await _inbound(api, campaign_id=campaign, attributed=True, verdict="clean")
        assert item["subscriber_id"] == subscriber
        assert item["attribution"] == "token"
        assert (item["spf"], item["dkim"], item["dmarc"]) == ("pass", "pass", "pass")
        results = item["authentication_results"]
        assert results.startswith("warta.test.example; spf=pass smtp.mailfrom=reader.example")
        assert "dkim=pass header.d=reader.example" in results
        assert "dmarc=pass (p=reject) header.from=reader.example" in results
        assert item["client_ip"] == "127.0.0.1"
        assert item["spam_score"] is None and item["malware"] is None  # no scanners configured

        detail = (await api.get(f"/api/v1/inbound/{item['id']}")).json()
        assert detail["text"] == "Thanks, I loved it.\n"
        assert "<b>loved</b>" in detail["html"]
        [attached] = detail["attachments"]
        assert (attached["filename"], attached["content_type"], attached["size"]) == (
            "notes.pdf",
            "application/pdf",
            len(b"%PDF-1.4 notes"),
        )
        assert ["Subject", "Re: Hello"] in detail["headers"]
        file = await api.get(f"/api/v1/inbound/{item['id']}/attachments/{attached['id']}")
        assert file.content == b"%PDF-1.4 notes"
        raw = await api.get(f"/api/v1/inbound/{item['id']}/raw")
        assert raw.headers["content-type"] == "message/rfc822"
        assert raw.content.endswith(data)

        async def posted() -> bool:
            return bool(hook.requests)

        await eventually(posted, what="the inbound.received webhook")
        event = hook.requests[0].json()
        assert event["type"] == "inbound.received"
        assert (event["campaign_id"], event["subscriber_id"]) == (campaign, subscriber)
        assert event["email"] == "reader@reader.example"
        assert event["data"]["inbound_id"] == item["id"]
        assert event["data"]["text"] == "Thanks, I loved it.\n"
        assert event["data"]["verdicts"]["dkim"] == "pass"
        assert event["data"]["verdicts"]["authentication_results"] == results


async def test_a_forged_token_is_kept_unattributed_with_failing_verdicts(
    api: httpx.AsyncClient, mta: MtaService, mta_settings: Settings
) -> None:
    forged = "reply+c1s1-aaaaaaaaaaaaa@reply.warta.example"
    data = _reply(forged, "ceo@spoofed.example").as_bytes(
        policy=EmailMessage().policy.clone(linesep="\r\n")
    )
    code, _ = await asyncio.to_thread(_send, mta_settings, "ceo@spoofed.example", forged, data)
    assert code == 250

    async def listed() -> bool:
        return bool(await _inbound(api))

    await eventually(listed, what="the forged reply stored")
    [item] = await _inbound(api, attributed=False)
    assert item["attribution"] == "forged"
    assert item["campaign_id"] is None and item["subscriber_id"] is None
    assert (item["spf"], item["dkim"], item["dmarc"]) == ("fail", "none", "fail")
    assert await _inbound(api, attributed=True) == []


async def test_auto_replies_stay_with_the_bounce_processor(
    api: httpx.AsyncClient, mta: MtaService, mta_settings: Settings
) -> None:
    address = "reply+c1s1-aaaaaaaaaaaaa@reply.warta.example"
    data = _reply(
        address, "reader@reader.example", headers={"Auto-Submitted": "auto-replied"}
    ).as_bytes(policy=EmailMessage().policy.clone(linesep="\r\n"))
    code, _ = await asyncio.to_thread(_send, mta_settings, "reader@reader.example", address, data)
    assert code == 250
    other = Path(mta_settings.var_dir) / "inbound" / "other"

    async def handed_over() -> bool:
        return other.is_dir() and any(other.iterdir())

    await eventually(handed_over, what="the auto-reply in the bounce processor's other/")
    assert await _inbound(api) == []
