"""What the archive holds is what the recipient's server got, minus its DKIM-Signature.

A real worker submits to a real in-process MTA and on to a sink; the worker signs with DKIM.
The archive stores the message as Warta built it, before signing (docs/archive.md): the
test removes the DKIM-Signature field(s) prepended by the signer and compares byte for byte.
"""

from __future__ import annotations

import re

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.settings import Settings
from app.mail.dkim import generate_key
from app.models import ArchivedMessage, Send
from tests.helpers.api import eventually, wait_for_status
from tests.helpers.seeding import seed_campaign
from tests.helpers.sinks import SinkHandler
from workers.mta.service import MtaService

# A DKIM-Signature field: its first line and every folded continuation line.
DKIM_FIELD = re.compile(rb"\ADKIM-Signature:[^\r]*\r\n(?:[ \t][^\r]*\r\n)*", re.IGNORECASE)


def without_dkim(data: bytes) -> bytes:
    """The message minus the DKIM-Signature fields put in front of it by the signer."""
    count = 0
    while (match := DKIM_FIELD.match(data)) is not None:
        data = data[match.end() :]
        count += 1
    assert count >= 1, "the MTA should have signed the message"
    return data


async def send_to_the_end(
    api: httpx.AsyncClient, campaign_id: int, remote: SinkHandler, count: int
) -> None:
    """Schedule the campaign; back once it is finished and `count` messages are at the MX."""
    await api.post(f"/api/v1/campaigns/{campaign_id}/schedule")
    await wait_for_status(api, campaign_id, "finished")

    async def delivered() -> bool:
        return len(remote.snapshot()) == count

    await eventually(delivered, 30, f"{count} messages at the remote MX")


async def break_the_archive_index(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Make every archive index write fail from now on (its table is gone)."""
    async with sessionmaker() as session:
        await session.execute(sa.text("DROP TABLE archived_messages"))
        await session.commit()


async def test_a_transactional_message_in_the_archive_is_what_the_sink_received(
    mta_settings: Settings,
    mta: MtaService,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
) -> None:
    generate_key(mta_settings.dkim_dir, "example.com", "sel1")
    response = await api.post(
        "/api/v1/messages",
        json={
            "from": "shop@example.com",
            "to": "alice@example.com",
            "subject": "Receipt for order {{ order }}",
            "html": "<p>Thanks, order <b>{{ order }}</b> ✓</p>",
            "text": "Thanks, order {{ order }} ✓",
            "data": {"order": 42},
        },
    )
    assert response.status_code == 202, response.text
    message_id = response.json()["messages"][0]["id"]

    async def delivered() -> bool:
        return len(remote[1].snapshot()) == 1

    await eventually(delivered, 30, "message at the remote MX")
    (received,) = remote[1].snapshot()
    raw = await api.get(f"/api/v1/messages/{message_id}/raw")
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "message/rfc822"
    assert raw.content == without_dkim(received.data)


async def test_a_campaign_message_in_the_archive_is_what_the_sink_received(
    mta_settings: Settings,
    mta: MtaService,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    generate_key(mta_settings.dkim_dir, "example.com", "sel1")
    campaign_id, emails = await seed_campaign(sessionmaker, 3)
    await send_to_the_end(api, campaign_id, remote[1], 3)
    by_recipient = {item.rcpt_tos[0]: item.data for item in remote[1].snapshot()}
    async with sessionmaker() as session:
        rows = await session.execute(sa.select(Send.email, Send.subscriber_id))
        subscribers = {email: subscriber_id for email, subscriber_id in rows}
        assert await session.scalar(sa.select(sa.func.count()).select_from(ArchivedMessage)) == 3
    for email in emails:
        raw = await api.get(f"/api/v1/campaigns/{campaign_id}/sends/{subscribers[email]}/raw")
        assert raw.status_code == 200, raw.text
        assert raw.content == without_dkim(by_recipient[email])


async def test_a_campaign_goes_out_when_the_archive_index_cannot_be_written(
    mta_settings: Settings,
    mta: MtaService,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # The index rows go into the transaction that claims the ledger rows: their failure
    # must not take the claim (and the sending) with it.
    generate_key(mta_settings.dkim_dir, "example.com", "sel1")
    campaign_id, emails = await seed_campaign(sessionmaker, 3)
    await break_the_archive_index(sessionmaker)
    await send_to_the_end(api, campaign_id, remote[1], 3)
    assert {item.rcpt_tos[0] for item in remote[1].snapshot()} == set(emails)
    async with sessionmaker() as session:
        statuses = (await session.scalars(sa.select(Send.status))).all()
    assert len(statuses) == 3 and set(statuses) <= {"sent", "delivered"}


async def test_a_transactional_message_goes_out_when_the_archive_index_cannot_be_written(
    mta_settings: Settings,
    mta: MtaService,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # The index rows go into the transaction that leases the message: their failure must
    # not take the lease (and the sending) with it.
    generate_key(mta_settings.dkim_dir, "example.com", "sel1")
    await break_the_archive_index(sessionmaker)
    response = await api.post(
        "/api/v1/messages",
        json={"from": "shop@example.com", "to": "bob@example.com", "subject": "Hi", "text": "."},
    )
    message_id = response.json()["messages"][0]["id"]

    async def recorded() -> bool:
        shown = (await api.get(f"/api/v1/messages/{message_id}")).json()
        return shown["status"] in ("sent", "delivered") and shown["attempts"] == 1

    await eventually(recorded, 30, "the hand-over recorded")
    assert [item.rcpt_tos for item in remote[1].snapshot()] == [("bob@example.com",)]
