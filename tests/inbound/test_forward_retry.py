"""A forward that fails is tried again with a doubling wait, by the reply processor's own
loop, until it goes out or its tries are used up; the reply is stored either way."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from aiosmtpd.controller import Controller
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audience.subscribers import add_confirmed
from app.core.resolver import make_resolver
from app.core.settings import Settings
from app.inbound.authentication import Authenticator
from app.inbound.processor import Forwarding, ReplyProcessor
from app.inbound.scanning import DaemonScanner
from app.inbound.service import Policy
from app.mail.reply_address import ReplyTarget, reply_address
from app.models import Campaign, InboundMessage, MailingList
from tests.helpers.api import eventually
from tests.helpers.daemons import ZoneDns
from tests.helpers.servers import free_port
from tests.helpers.sinks import SinkHandler
from workers.mta.inbound import InboundStore

Sessions = async_sessionmaker[AsyncSession]


async def _reply_to_a_forwarding_campaign(
    settings: Settings, sessions: Sessions, tmp: Path
) -> None:
    async with sessions() as session:
        readers = MailingList(name="readers")
        campaign = Campaign(
            name="news", subject="News", from_email="news@example.com",
            track_replies=True, reply_forward_to="desk@example.com",
        )  # fmt: skip
        session.add_all([readers, campaign])
        await session.flush()
        [reader] = await add_confirmed(session, readers.id, [("r@reader.example", "", {})])
        await session.commit()
    target = ReplyTarget(campaign_id=campaign.id, subscriber_id=reader)
    address = reply_address(settings.effective_secret_key(), "reply.example", target)
    store = InboundStore(tmp / "inbound", replies=tmp / "replies", reply_domain="reply.example")
    data = (
        f"From: Reader <r@reader.example>\r\nTo: {address}\r\nSubject: Re: News\r\n\r\n"
        "Thanks, see you on Tuesday.\r\n"
    ).encode()
    await store.store("r@reader.example", [address], data, client_ip="127.0.0.1")


def _processor(
    settings: Settings, sessions: Sessions, dns: ZoneDns, tmp: Path, forwarding: Forwarding
) -> ReplyProcessor:
    return ReplyProcessor(
        tmp / "replies",
        sessions,
        Policy.from_settings(settings),
        Authenticator(make_resolver([("127.0.0.1", dns.port)], 3.0)),
        DaemonScanner.from_settings(settings),
        reports=tmp / "inbound",
        forwarding=forwarding,
    )


async def _row(sessions: Sessions) -> InboundMessage:
    async with sessions() as session:
        return (await session.scalars(sa.select(InboundMessage))).one()


async def test_a_failed_forward_goes_out_when_the_submission_listener_is_back(
    settings: Settings, sessionmaker: Sessions, dns: ZoneDns, tmp_path: Path
) -> None:
    port = free_port()  # the MTA's submission listener, down for now
    forwarding = Forwarding(f"127.0.0.1:{port}", "reply.example", attempts=4, retry=60.0)
    processor = _processor(settings, sessionmaker, dns, tmp_path, forwarding)
    await _reply_to_a_forwarding_campaign(settings, sessionmaker, tmp_path)

    assert await processor.process_all() == 1
    failed = await _row(sessionmaker)
    assert (failed.forwarded_to, failed.forward_attempts) == ("", 1)
    assert failed.forward_retry_at is not None
    first_retry = failed.forward_retry_at
    assert first_retry - failed.received_at >= timedelta(seconds=59)

    sink = SinkHandler()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        assert await processor.retry_forwards(now=first_retry - timedelta(seconds=1)) == 0
        assert sink.snapshot() == []  # not due yet
        assert await processor.retry_forwards(now=first_retry) == 1
    finally:
        controller.stop()

    [forward] = sink.snapshot()
    assert forward.rcpt_tos == ("desk@example.com",) and forward.mail_from == "<>"
    assert b"see you on Tuesday" in forward.data
    done = await _row(sessionmaker)
    assert (done.forwarded_to, done.forward_retry_at) == ("desk@example.com", None)
    assert await processor.retry_forwards(now=first_retry + timedelta(days=1)) == 0


async def test_a_forward_is_given_up_after_its_tries_with_a_doubling_wait(
    settings: Settings, sessionmaker: Sessions, dns: ZoneDns, tmp_path: Path
) -> None:
    forwarding = Forwarding(f"127.0.0.1:{free_port()}", "reply.example", attempts=3, retry=10.0)
    processor = _processor(settings, sessionmaker, dns, tmp_path, forwarding)
    await _reply_to_a_forwarding_campaign(settings, sessionmaker, tmp_path)
    assert await processor.process_all() == 1

    waits = []
    for _ in range(2):
        row = await _row(sessionmaker)
        assert row.forward_retry_at is not None
        due = row.forward_retry_at
        assert await processor.retry_forwards(now=due) == 0
        after = await _row(sessionmaker)
        if after.forward_retry_at is not None:
            waits.append(after.forward_retry_at - due)

    given_up = await _row(sessionmaker)
    assert (given_up.forward_attempts, given_up.forward_retry_at) == (3, None)
    assert given_up.forwarded_to == ""
    # The first retry came 10 s after the first try, the second 20 s after the first retry.
    assert waits == [timedelta(seconds=20)]
    assert await processor.retry_forwards(now=due + timedelta(days=1)) == 0


async def test_the_running_processor_retries_by_itself(
    settings: Settings, sessionmaker: Sessions, dns: ZoneDns, tmp_path: Path
) -> None:
    port = free_port()
    forwarding = Forwarding(f"127.0.0.1:{port}", "reply.example", attempts=20, retry=0.1)
    processor = _processor(settings, sessionmaker, dns, tmp_path, forwarding)
    processor.poll_interval = 0.05
    await _reply_to_a_forwarding_campaign(settings, sessionmaker, tmp_path)
    processor.start()
    sink = SinkHandler()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    try:

        async def failed_once() -> bool:
            row = await _row(sessionmaker) if await _stored(sessionmaker) else None
            return row is not None and row.forward_attempts >= 1

        await eventually(failed_once, what="the first forward failed")
        controller.start()

        async def forwarded() -> bool:
            return (await _row(sessionmaker)).forwarded_to == "desk@example.com"

        await eventually(forwarded, within=30, what="the forward retried and sent")
    finally:
        await processor.stop()
        controller.stop()
    assert len(sink.snapshot()) == 1


async def _stored(sessions: Sessions) -> int:
    async with sessions() as session:
        return int(await session.scalar(sa.select(sa.func.count(InboundMessage.id))) or 0)
