"""Transactional messages through a real worker to an SMTP sink: send, retry, never twice."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.ratelimit import RateLimiter
from app.core.settings import Settings
from app.mail import identity
from app.mail.context import EngineContext
from app.mail.identity import Kind
from app.mail.recording import Delivery, Verdict
from app.mail.sender import SmtpSender
from app.messages import repository
from app.messages.sending import send_messages
from app.models import ArchivedMessage, Message, MessageStatus
from tests.helpers.api import eventually, post_json
from tests.helpers.sinks import SinkHandler

MESSAGE = {
    "from": "shop@example.com",
    "to": "alice@example.com",
    "subject": "Receipt",
    "text": "Thanks for order {{ order }}",
    "data": {"order": 1},
}


@pytest.fixture
def engine_settings(settings: Settings, sink: tuple[str, SinkHandler]) -> Settings:
    return settings.model_copy(
        update={"mta_submission": sink[0], "sender_connections": 4, "message_retry_base": 0.2}
    )


async def _status(api: httpx.AsyncClient, message_id: int) -> dict[str, Any]:
    return dict((await api.get(f"/api/v1/messages/{message_id}")).json())


async def test_a_message_reaches_the_mta_with_its_identity(
    api: httpx.AsyncClient,
    worker: None,
    sink: tuple[str, SinkHandler],
    engine_settings: Settings,
) -> None:
    response = await api.post("/api/v1/messages", json=MESSAGE)
    message_id = response.json()["messages"][0]["id"]

    async def sent() -> bool:
        return (await _status(api, message_id))["status"] == "sent"

    await eventually(sent, 20, "message sent")
    (received,) = sink[1].snapshot()
    secret = engine_settings.secret_key
    assert received.mail_from == identity.verp_address(
        secret, message_id, engine_settings.bounce_domain, Kind.MESSAGE
    )
    assert identity.parse_verp(secret, received.mail_from) == (Kind.MESSAGE, message_id)
    assert received.rcpt_tos == ("alice@example.com",)
    assert received.message_id == identity.message_id(
        secret, message_id, engine_settings.mta_hostname, Kind.MESSAGE
    )
    shown = await _status(api, message_id)
    assert [e["kind"] for e in shown["events"]] == ["queued", "sent"]
    assert shown["events"][1]["data"]["reply"].startswith("250")
    assert shown["sent_at"] is not None


async def test_a_deferral_is_retried_with_backoff(
    api: httpx.AsyncClient,
    worker: None,
    sink: tuple[str, SinkHandler],
    engine_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    sink[1].rcpt_replies["alice@example.com"] = ["451 4.3.0 try later", "451 4.3.0 try later"]
    response = await api.post("/api/v1/messages", json=MESSAGE)
    message_id = response.json()["messages"][0]["id"]

    async def sent() -> bool:
        return (await _status(api, message_id))["status"] == "sent"

    await eventually(sent, 30, "message sent after two deferrals")
    shown = await _status(api, message_id)
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds == ["queued", "deferred", "deferred", "sent"]
    assert shown["attempts"] == 3
    assert len(sink[1].snapshot()) == 1
    times = [e["created_at"] for e in shown["events"][1:]]
    assert times == sorted(times)
    # Archived once, at the first attempt: the retries append nothing to the day file.
    async with sessionmaker() as session:
        (index,) = (await session.scalars(sa.select(ArchivedMessage))).all()
    assert index.message_id == message_id and index.frame_offset == 0
    day_file = engine_settings.archive_directory() / index.path
    assert day_file.stat().st_size == index.frame_length


async def test_a_permanent_refusal_fails_the_message(
    api: httpx.AsyncClient, worker: None, sink: tuple[str, SinkHandler]
) -> None:
    sink[1].rcpt_replies["alice@example.com"] = ["550 5.1.1 no such user"]
    response = await api.post("/api/v1/messages", json=MESSAGE)
    message_id = response.json()["messages"][0]["id"]

    async def failed() -> bool:
        return (await _status(api, message_id))["status"] == "failed"

    await eventually(failed, 20, "message failed")
    shown = await _status(api, message_id)
    assert shown["last_reply"].startswith("550")
    assert sink[1].snapshot() == []


async def test_a_message_already_sent_is_not_sent_again(
    engine_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    sink: tuple[str, SinkHandler],
    redis_url: str,
    client: httpx.AsyncClient,
) -> None:
    from redis.asyncio import Redis

    response = await client.post(
        "/api/v1/messages", json={**MESSAGE, "to": ["a@example.com", "b@example.com"]}
    )
    ids = [m["id"] for m in response.json()["messages"]]
    redis = Redis.from_url(redis_url)
    sender = SmtpSender.from_settings(engine_settings, pool_size=2)
    async with sender:
        engine = EngineContext(
            settings=engine_settings,
            sessionmaker=sessionmaker,
            sender=sender,
            limiter=RateLimiter(redis),
        )
        first, second = await asyncio.gather(send_messages(engine, ids), send_messages(engine, ids))
        third = await send_messages(engine, ids)
    await redis.aclose()
    assert first.sent + second.sent == 2
    assert third.sent == 0 and third.skipped == 2
    assert sorted(r.rcpt_tos[0] for r in sink[1].snapshot()) == ["a@example.com", "b@example.com"]


async def test_a_recipient_suppressed_after_acceptance_is_not_sent(
    engine_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    sink: tuple[str, SinkHandler],
    redis_url: str,
    client: httpx.AsyncClient,
) -> None:
    from redis.asyncio import Redis

    response = await client.post(
        "/api/v1/messages", json={**MESSAGE, "to": ["a@example.com", "b@example.com"]}
    )
    ids = [m["id"] for m in response.json()["messages"]]
    await post_json(client, "/api/v1/suppressions", {"address": "b@example.com"})
    redis = Redis.from_url(redis_url)
    async with SmtpSender.from_settings(engine_settings, pool_size=1) as sender:
        engine = EngineContext(engine_settings, sessionmaker, sender, RateLimiter(redis))
        report = await send_messages(engine, ids)
    await redis.aclose()
    assert (report.sent, report.skipped) == (1, 1)
    assert [r.rcpt_tos for r in sink[1].snapshot()] == [("a@example.com",)]
    shown = (await client.get(f"/api/v1/messages/{ids[1]}")).json()
    assert shown["status"] == "suppressed" and shown["attempts"] == 0
    assert [e["kind"] for e in shown["events"]] == ["queued", "suppressed"]


async def test_record_delivery_moves_status_and_writes_the_timeline(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await client.post(
        "/api/v1/messages", json={**MESSAGE, "to": ["a@example.com", "b@example.com"]}
    )
    a, b = (m["id"] for m in response.json()["messages"])
    async with sessionmaker() as session:
        await repository.record_delivery(
            session,
            [
                Delivery(a, Verdict.DEFERRED, "451 4.2.0 mailbox busy"),
                Delivery(a, Verdict.DELIVERED, "250 2.0.0 queued as X"),
                Delivery(b, Verdict.BOUNCED, "550 5.1.1 unknown user"),
                Delivery(b, Verdict.DELIVERED, "250 late success is ignored"),
                Delivery(10**9, Verdict.DELIVERED, "unknown id is ignored"),
            ],
        )
        await session.commit()
        row_a = await session.get(Message, a)
        row_b = await session.get(Message, b)
        assert row_a is not None and row_b is not None
        assert row_a.status == MessageStatus.delivered
        assert row_b.status == MessageStatus.bounced
    shown = (await client.get(f"/api/v1/messages/{a}")).json()
    assert [(e["kind"], e["data"]["reply"][:3]) for e in shown["events"][1:]] == [
        ("deferred", "451"),
        ("delivered", "250"),
    ]
    shown_b = (await client.get(f"/api/v1/messages/{b}")).json()
    assert shown_b["status"] == "bounced"
    assert [e["kind"] for e in shown_b["events"]] == ["queued", "bounced", "delivered"]


@pytest.mark.parametrize("word", [Verdict.DELIVERED, Verdict.BOUNCED, Verdict.COMPLAINED])
async def test_the_mtas_final_word_stands_when_the_workers_record_comes_after_it(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], word: Verdict
) -> None:
    """The MTA can deliver a message and report it before the worker that handed it over
    records its 250 (the outcome writer and the worker write independently): the worker's
    `sent` must not turn a final status back, as the campaign ledger already guarantees."""
    from datetime import timedelta

    from app.mail.recording import Attempt
    from app.models import utcnow

    response = await client.post("/api/v1/messages", json=MESSAGE)
    message_id = response.json()["messages"][0]["id"]
    async with sessionmaker() as session:
        (claimed,) = await repository.claim(
            session, [message_id], "lease-1", utcnow(), timedelta(minutes=5)
        )
        await session.commit()
    final = f"{'250' if word is Verdict.DELIVERED else '550'} the remote server's word"
    async with sessionmaker() as session:
        await repository.record_delivery(session, [Delivery(message_id, word, final)])
        await session.commit()
    async with sessionmaker() as session:
        await repository.record_attempts(
            session, [Attempt(claimed.row, Verdict.SENT, "250 queued")], lease="lease-1"
        )
        await session.commit()
    async with sessionmaker() as session:
        row = await session.get(Message, message_id)
        assert row is not None
        assert row.status == repository.status_of(word)
        assert row.last_reply == final
        assert row.attempts == 1 and row.sent_at is not None  # the hand-over still counts
        assert row.lease_token is None and row.lease_until is None
