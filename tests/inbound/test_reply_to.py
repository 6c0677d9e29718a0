"""Signed reply addresses: what they name, what forging them gets, and that transactional
streams listed in WARTA_INBOUND_REPLY_STREAMS carry one as Reply-To."""

from __future__ import annotations

import httpx
import pytest

from app.core.settings import Settings
from app.inbound.processor import is_automatic
from app.inbound.service import attribute
from app.mail.reply_address import (
    ReplyTarget,
    is_reply_address,
    parse_reply_address,
    reply_address,
)
from tests.helpers.api import eventually
from tests.helpers.sinks import SinkHandler

SECRET = "s" * 40


def test_a_reply_address_names_its_campaign_and_subscriber_and_survives_case_folding() -> None:
    target = ReplyTarget(campaign_id=12, subscriber_id=345)
    address = reply_address(SECRET, "reply.example", target)
    assert address.startswith("reply+c12s345-") and address.endswith("@reply.example")
    assert parse_reply_address(SECRET, address) == target
    assert parse_reply_address(SECRET, address.upper()) == target
    message = ReplyTarget(message_id=77)
    assert parse_reply_address(SECRET, reply_address(SECRET, "r.example", message)) == message


@pytest.mark.parametrize(
    "forge",
    [
        lambda a: a.replace("c12", "c13"),  # another campaign
        lambda a: a.replace("s345", "s346"),  # another subscriber
        lambda a: a[:-20] + ("a" if a[-20] != "a" else "b") + a[-19:],  # a changed MAC
        lambda a: a.replace("reply+", "reply+x"),
    ],
)
def test_a_tampered_reply_address_names_nothing(forge: object) -> None:
    address = reply_address(SECRET, "reply.example", ReplyTarget(12, 345))
    forged = forge(address)  # type: ignore[operator]
    assert is_reply_address(forged)
    assert parse_reply_address(SECRET, forged) is None
    assert parse_reply_address("another-secret-" * 3, address) is None


def test_attribution_tells_forged_from_absent() -> None:
    genuine = reply_address(SECRET, "r.example", ReplyTarget(1, 2))
    assert attribute(SECRET, ("x@r.example", genuine)).kind == "token"
    assert attribute(SECRET, ("reply+c1s2-aaaaaaaaaaaaa@r.example",)).kind == "forged"
    assert attribute(SECRET, ("support@r.example",)).kind == "none"


def test_automatic_mail_is_recognised() -> None:
    person = b"From: a@b.example\r\nSubject: Re: hi\r\n\r\nthanks\r\n"
    assert not is_automatic(person, "a@b.example")
    assert not is_automatic(b"Auto-Submitted: no\r\n" + person, "a@b.example")
    assert is_automatic(person, "")  # the null sender: a DSN
    for header in (
        b"Auto-Submitted: auto-replied",
        b"X-Autoreply: yes",
        b"Precedence: bulk",
        b"Content-Type: multipart/report; report-type=delivery-status",
    ):
        assert is_automatic(header + b"\r\n" + person, "a@b.example"), header


@pytest.fixture
def engine_settings(settings: Settings, sink: tuple[str, SinkHandler]) -> Settings:
    """The sender submits to the test's sink; transactional mail carries a reply address."""
    return settings.model_copy(
        update={
            "mta_submission": sink[0],
            "inbound_reply_streams": "transactional",
            "inbound_domain": "reply.warta.example",
        }
    )


async def test_a_transactional_stream_listed_gets_a_signed_reply_to(
    api: httpx.AsyncClient,
    worker: None,
    sink: tuple[str, SinkHandler],
    engine_settings: Settings,
) -> None:
    body = {
        "from": "Shop <shop@example.com>",
        "to": "alice@example.com",
        "subject": "Receipt",
        "text": "Thanks",
    }
    transactional = (await api.post("/api/v1/messages", json=body)).json()["messages"][0]["id"]
    broadcast = (await api.post("/api/v1/messages", json={**body, "stream": "broadcast"})).json()[
        "messages"
    ][0]["id"]

    async def both_sent() -> bool:
        return len(sink[1].snapshot()) == 2

    await eventually(both_sent, 20, "both messages sent")
    secret = engine_settings.effective_secret_key()
    replies = [
        received.message["Reply-To"]
        for received in sink[1].snapshot()
        if received.message["Reply-To"] is not None
    ]
    assert len(replies) == 1  # the broadcast stream is not listed
    name, _, address = str(replies[0]).partition("<")
    assert name.strip() == "Shop"
    assert parse_reply_address(secret, address.rstrip(">")) == ReplyTarget(message_id=transactional)
    assert broadcast != transactional
